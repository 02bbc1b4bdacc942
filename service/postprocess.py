"""From the model's output tensors to the result a radiologist's worklist reads: findings against
the card's operating thresholds, the triage priority, the router weights and the key slice."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from service.contract import ModelOutputs
from service.findings import FINDING_CODES, triage_drivers
from service.ingest import IngestResult
from service.model_card import ModelCard
from service.priority import decide
from service.schemas import (
    FindingResult,
    ModelRef,
    Router,
    Slices,
    Timing,
    Triage,
    TriageResult,
)


def score_findings(card: ModelCard, probabilities: np.ndarray) -> list[FindingResult]:
    """One entry per card finding, in card order; positive at or above its threshold."""
    return [
        FindingResult(
            code=f.code,
            name=f.name,
            category=f.category,
            probability=float(p),
            threshold=f.threshold,
            positive=bool(p >= f.threshold),
            critical=f.critical,
        )
        for f, p in zip(card.findings, probabilities.tolist(), strict=True)
    ]


def key_finding(
    probabilities: np.ndarray, thresholds: np.ndarray, drivers: Iterable[str] | None = None
) -> int:
    """The finding the key slice shows, as an index in ``service.findings`` order: of the
    findings behind the triage (``drivers``; by default the positive findings that set the
    priority), else the positive ones, else all, the one furthest above its threshold in logits,
    which compares findings whose thresholds differ."""
    positive = probabilities >= thresholds
    if drivers is None:
        drivers = triage_drivers(c for c, p in zip(FINDING_CODES, positive, strict=True) if p)
    drivers = set(drivers)
    mask = np.array([c in drivers for c in FINDING_CODES])
    if not mask.any():
        mask = positive if positive.any() else np.ones_like(positive)
    margin = _logit(probabilities) - _logit(thresholds)
    return int(np.flatnonzero(mask)[np.argmax(margin[mask])])


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    logits: np.ndarray = np.log(p / (1 - p))
    return logits


def key_slices(
    ingest: IngestResult,
    attention: np.ndarray,
    shares: np.ndarray,
    code: str,
    scores: np.ndarray | None = None,
) -> Slices:
    """The key slice for finding ``code``, and the series slice nearest to it: the slice the
    slice head scores highest (``scores`` [D], SLICE_SCORES) in a model that has one, else the
    slice with the most evidence ``shares`` [D] (a slice's attention times the head's score of its
    features: its share of the finding's logit)."""
    key = int(np.argmax(scores if scores is not None else shares))
    volume = ingest.volume
    source = np.asarray(volume.source_positions_mm, dtype=np.float64)
    nearest = int(np.argmin(np.abs(source - float(volume.positions_mm[key])))) if source.size else 0
    uid = ingest.stack.slices[nearest].dataset.get("SOPInstanceUID") if source.size else None
    return Slices(
        count=int(attention.shape[0]),
        attention=attention.tolist(),
        key_slice=key,
        key_finding=code,
        evidence=shares.tolist(),
        scores=None if scores is None else scores.tolist(),
        source_count=len(ingest.stack.slices),
        key_source_index=nearest,
        key_sop_instance_uid=str(uid) if uid else None,
    )


def build_result(
    card: ModelCard,
    ingest: IngestResult,
    outputs: ModelOutputs,
    timing_ms: dict[str, float],
    index: int = 0,
) -> TriageResult:
    """The result for study ``index`` of the batch. ``timing_ms`` must hold every stage."""
    probabilities = outputs.probabilities[index]
    findings = score_findings(card, probabilities)
    thresholds = np.array([f.threshold for f in card.findings])
    decision = decide(probabilities, thresholds, card.priority_scores)
    shown = key_finding(probabilities, thresholds, decision.drivers)
    return TriageResult(
        study_uid=ingest.study_uid,
        series_uid=ingest.series_uid,
        model=ModelRef(name=card.name, version=card.version),
        findings=findings,
        triage=Triage(priority=decision.priority, findings=decision.drivers, basis=decision.basis),
        router=Router(
            experts=card.adapter.experts,
            study_weights=outputs.router_weights[index].tolist(),
            slice_weights=outputs.slice_router_weights[index].tolist(),
        ),
        slices=key_slices(
            ingest,
            outputs.slice_attention[index],
            outputs.slice_evidence[index][:, shown],
            findings[shown].code,
            None if outputs.slice_scores is None else outputs.slice_scores[index][:, shown],
        ),
        timing_ms=Timing(**{k: round(v, 3) for k, v in timing_ms.items()}),
        warnings=list(ingest.warnings),
        disclaimer=card.intended_use,
    )
