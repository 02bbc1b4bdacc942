"""What the demo measures on each run beyond per-finding AUC: the fair comparison of the arms
(macro AUC with bootstrap intervals and paired differences), the triage at study-level operating
points, whether the key slice lies in a lesion, and how much the router depends on the input."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.findings import FINDING_CODES, FINDINGS, Category, TriageClass
from service.postprocess import key_finding
from service.priority import decide, score_values
from service.priority import study_levels as rule_levels
from training.evaluate import Predictions, category_positive, macro_auc, resampled_auc
from training.model import ModelOutput
from training.operating_points import (
    PriorityPoint,
    PriorityScore,
    level_points,
    placed_point,
    priority_operating_points,
    priority_scores,
    study_levels,
    true_levels,
)
from training.runs import predict_run

MIN_POSITIVES = 5  # a finding enters the headline macro AUC with at least this many positives
BATCH = 4  # studies per forward when the runs predict the test and calibration sets


@dataclass
class Detailed:
    """One run on one set: predictions plus what the report reads per slice."""

    predictions: Predictions
    attention: np.ndarray  # [N, D]
    slice_router: np.ndarray  # [N, D, K]
    evidence: np.ndarray  # [N, D, 75]
    scores: np.ndarray | None = None  # [N, D, 75]: the slice head's (SLICE_SCORES), if any


def predict_detailed(run: Path, data: Path, name: str) -> Detailed:
    attention, slices, evidence, scores = [], [], [], []

    def keep(output: ModelOutput) -> None:
        attention.append(output.slice_attention.numpy())
        slices.append(output.slice_router_weights.numpy())
        evidence.append(output.slice_evidence.numpy())
        if output.slice_scores is not None:
            scores.append(output.slice_scores.numpy())

    predictions = predict_run(run, data, name=name, batch_size=BATCH, each_output=keep)
    return Detailed(
        predictions,
        np.concatenate(attention),
        np.concatenate(slices),
        np.concatenate(evidence),
        np.concatenate(scores) if scores else None,
    )


def key_slice_check(
    detailed: Detailed,
    test: Path,
    depth: int,
    thresholds: np.ndarray,
    scores_rule: list[PriorityScore] | None = None,
) -> dict[str, Any]:
    """For positive test studies: how often the key slice lies inside an annotated lesion of one
    of the study's focal findings (those covering under half of the slices), against the chance
    rate of a random slice. The key slice as the gateway picks it (for the key finding at
    ``thresholds`` and the priority scores ``scores_rule``: the slice head's highest-scoring
    slice in a model with one, else the slice with the most evidence), and beside it the slice
    with the most evidence, the highest-attention slice, and the key slice of the study's focal
    finding that the model scores highest (``true_finding_slice_in_lesion``)."""
    annotations = json.loads((test / "annotations.json").read_text())
    source_slices = int(annotations["options"]["slices"])

    def in_lesion(grid_slice: int, inside: set[int]) -> bool:
        # Grid slices span the series' first to last slice: map the key slice back.
        return round(grid_slice * (source_slices - 1) / max(depth - 1, 1)) in inside

    hits, attention_hits, evidence_hits, true_hits, chance, counted = 0, 0, 0, 0, 0.0, 0
    scores = detailed.scores if detailed.scores is not None else [None] * len(detailed.evidence)
    rows = zip(
        detailed.predictions.study_uids,
        detailed.predictions.probabilities,
        detailed.attention,
        detailed.evidence,
        scores,
        strict=True,
    )
    for uid, probabilities, attention, evidence, score in rows:
        focal = {c: s for c, s in annotations.get(uid, {}).items() if len(s) < source_slices / 2}
        if not focal:
            continue
        inside = {int(x) for s in focal.values() for x in s}
        # Beside the key slice: the best slice of the study's focal finding the model scores
        # highest, the key slice had the key finding been a true one. The gap between the two
        # is what the choice of finding costs; the rest is where the slice scores point.
        told = max((FINDING_CODES.index(c) for c in focal), key=lambda j: probabilities[j])
        true_hits += in_lesion(
            int(np.argmax((evidence if score is None else score)[:, told])), inside
        )
        shown = key_finding(
            probabilities, thresholds, decide(probabilities, thresholds, scores_rule).drivers
        )
        by_evidence = int(np.argmax(evidence[:, shown]))
        key = by_evidence if score is None else int(np.argmax(score[:, shown]))
        hits += in_lesion(key, inside)
        evidence_hits += in_lesion(by_evidence, inside)
        attention_hits += in_lesion(int(np.argmax(attention)), inside)
        chance += len(inside) / source_slices
        counted += 1
    nan = float("nan")
    return {
        "studies": counted,
        "key_slice_in_lesion": hits / counted if counted else nan,
        "attention_slice_in_lesion": attention_hits / counted if counted else nan,
        "evidence_slice_in_lesion": evidence_hits / counted if counted else nan,
        "true_finding_slice_in_lesion": true_hits / counted if counted else nan,
        "key_slice_from": "slice scores" if detailed.scores is not None else "evidence",
        "chance": chance / counted if counted else nan,
    }


def _categories(labels: np.ndarray) -> np.ndarray:
    """Per study: the index of its one positive category, len(Category) for no finding, -1 for
    studies with findings in several categories (left out of the dependence measures)."""
    by_category = category_positive(labels)
    count = by_category.sum(axis=1)
    return np.where(count == 0, len(Category), np.where(count == 1, by_category.argmax(1), -1))


def router_dependence(detailed: Detailed) -> dict[str, Any]:
    """How much the router's weights depend on the study: the standard deviation of each
    expert's study weight across studies; the mutual information (bits) between the top expert
    and the finding category (studies with one category or none), against its mean under
    shuffled categories; cross-validated accuracy of predicting the category from the study
    weights, against always guessing the commonest; and the mean weights per slice position."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    weights = detailed.predictions.router_weights
    if weights is None:
        return {}
    category = _categories(detailed.predictions.labels)
    keep = category >= 0
    top, classes = weights[keep].argmax(1), category[keep]

    def mutual_information(a: np.ndarray, b: np.ndarray) -> float:
        joint = np.zeros((a.max() + 1, b.max() + 1))
        np.add.at(joint, (a, b), 1)
        joint /= joint.sum()
        outer = joint.sum(1, keepdims=True) @ joint.sum(0, keepdims=True)
        nonzero = joint > 0
        return float((joint[nonzero] * np.log2(joint[nonzero] / outer[nonzero])).sum())

    rng = np.random.default_rng(0)
    shuffled = [mutual_information(top, rng.permutation(classes)) for _ in range(200)]
    counts = np.bincount(classes)
    folds = int(min(5, counts[counts > 0].min())) if len(counts) else 0
    accuracy = None
    if folds >= 2 and (counts > 0).sum() >= 2:
        present = counts >= folds
        mask = present[classes]
        features = np.log(weights[keep][mask] + 1e-6)
        accuracy = float(
            cross_val_score(
                LogisticRegression(max_iter=2000), features, classes[mask], cv=folds
            ).mean()
        )
    names = [c.value for c in Category] + ["no_finding"]
    return {
        "study_weight_std": weights.std(axis=0).tolist(),
        "min_expert_std": float(weights.std(axis=0).min()),
        "top_expert_category_mi_bits": mutual_information(top, classes),
        "top_expert_category_mi_bits_shuffled": float(np.mean(shuffled)),
        "category_from_weights_accuracy": accuracy,
        "category_majority_rate": float(counts.max() / counts.sum()) if len(counts) else None,
        "studies_with_one_category": int(keep.sum()),
        "by_category": {
            names[c]: weights[category == c].mean(0).tolist()
            for c in range(len(names))
            if (category == c).any()
        },
        "by_slice_position": detailed.slice_router.mean(axis=0).tolist(),
        "within_study_slice_std": float(detailed.slice_router.std(axis=1).mean()),
    }


def _scorable(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """The findings with at least MIN_POSITIVES positives (and a negative); on a set too small
    for any (a smoke run), every finding with both classes, and the minimum that was used."""
    positives, negatives = (labels == 1).sum(axis=0), (labels == 0).sum(axis=0)
    columns = (positives >= MIN_POSITIVES) & (negatives > 0)
    if columns.any():
        return columns, MIN_POSITIVES
    return (positives > 0) & (negatives > 0), 1


def fair_comparison(
    test: dict[str, list[Predictions]], bootstrap: int, reference: str = "molre"
) -> dict[str, Any]:
    """Macro AUC over the findings with >= MIN_POSITIVES positives on the test set, per arm
    (mean over seeds, and each seed) with a bootstrap 95% interval, and the paired bootstrap
    interval of ``reference`` minus every other arm (the same resampled studies for both)."""
    first = next(iter(test.values()))[0]
    labels = first.labels
    columns, min_positives = _scorable(labels)
    scored = [FINDING_CODES[j] for j in np.flatnonzero(columns)]
    rng = np.random.default_rng(0)
    counts = rng.multinomial(len(labels), np.full(len(labels), 1 / len(labels)), size=bootstrap)
    resampled: dict[str, np.ndarray] = {}
    arms: dict[str, Any] = {}
    for arm, runs in test.items():
        per_seed = [macro_auc(p, scored) for p in runs]
        draws = np.zeros(bootstrap)
        for p in runs:
            aucs = np.stack(
                [
                    resampled_auc(p.probabilities[:, j], labels[:, j], counts)
                    for j in np.flatnonzero(columns)
                ],
                axis=1,
            )
            draws += np.nanmean(aucs, axis=1) / len(runs)
        resampled[arm] = draws
        arms[arm] = {
            "macro_auc": float(np.mean(per_seed)),
            "macro_auc_ci95": np.percentile(draws, [2.5, 97.5]).tolist(),
            "per_seed": per_seed,
        }
    differences = {}
    if reference in resampled:
        for arm in resampled:
            if arm == reference:
                continue
            delta = resampled[reference] - resampled[arm]
            point = arms[reference]["macro_auc"] - arms[arm]["macro_auc"]
            low, high = np.percentile(delta, [2.5, 97.5]).tolist()
            differences[arm] = {
                "difference": point,
                "ci95": [low, high],
                "reading": (
                    f"{reference} better"
                    if low > 0
                    else f"{reference} worse"
                    if high < 0
                    else "no difference shown"
                ),
            }
    return {
        "findings_scored": int(columns.sum()),
        "min_positives": min_positives,
        "studies": len(labels),
        "arms": arms,
        "differences_vs": differences,
        "reference": reference,
    }


@dataclass(frozen=True)
class TriageRule:
    """The priority rule chosen on the calibration set: per-finding thresholds, study-level
    scores, and the operating points measured there."""

    thresholds: np.ndarray
    scores: list[PriorityScore]
    points: list[PriorityPoint]


def fit_triage(calibration: Predictions, critical: float | None = None) -> TriageRule:
    """The rule the demo's export chooses (``training.operating_points.priority_scores``), with
    the critical sensitivity target ``critical`` where given."""
    choices, scores, points = priority_scores(
        calibration.labels,
        calibration.probabilities,
        sensitivity=None if critical is None else {"critical": critical},
    )
    return TriageRule(np.array([c.threshold for c in choices]), scores, points)


# Calibration targets for critical-study sensitivity whose test cost the report shows: a target
# met on a few hundred calibration studies is met on new studies only about half the time.
CRITICAL_TARGETS = (0.95, 0.97, 0.99)


def critical_margins(
    calibration: Predictions, test: Predictions, targets: tuple[float, ...] = CRITICAL_TARGETS
) -> list[dict[str, Any]]:
    """For each critical sensitivity target set on the calibration set, the critical operating
    point on calibration (out of fold) and on the test set, and the share of normal test
    studies called critical: what a margin above 0.95 costs in specificity."""
    truth = true_levels(test.labels)
    normal = ~(test.labels == 1).any(axis=1)
    rows = []
    for target in targets:
        rule = fit_triage(calibration, target)
        called, _ = rule_levels(test.probabilities, rule.thresholds, rule.scores)
        points = level_points(truth, called, {p.level: p.false_positive_rate for p in rule.points})
        at = {
            name: next(p for p in chosen if p.level == "critical").to_dict()
            for name, chosen in (("calibration", rule.points), ("test", points))
        }
        rows.append(
            {
                "target": target,
                **at,
                "normal_called_critical": float((called[normal] == 2).mean())
                if normal.any()
                else None,
            }
        )
    return rows


def critical_separation(
    test: Predictions, rule: TriageRule, sensitivity: float = 0.95
) -> dict[str, Any] | None:
    """How well the rule's critical decision separates the test studies, apart from where its
    threshold was put: the AUC of the critical score (a study with a positive critical finding
    counts as above every score, as the rule calls it critical anyway), and the specificity and
    share of normal studies called critical had the threshold been placed on the test set itself
    at ``sensitivity``. None without a critical score or without both kinds of study."""
    from sklearn.metrics import roc_auc_score

    score = next((s for s in rule.scores if s.level == "critical"), None)
    truth = true_levels(test.labels) == 2
    if score is None or truth.all() or not truth.any():
        return None
    critical = np.array([f.triage is TriageClass.CRITICAL for f in FINDINGS])
    found = (test.probabilities >= rule.thresholds[None, :])[:, critical].any(axis=1)
    alone = score_values(score, test.probabilities)
    values = np.where(found, np.inf, alone)
    normal = ~(test.labels == 1).any(axis=1)
    finite = np.nan_to_num(values, posinf=float(values[np.isfinite(values)].max(initial=0)) + 1)
    return {
        "auc": float(roc_auc_score(truth, finite)),
        "score_auc": float(roc_auc_score(truth, alone)),
        **placed_point(values, truth, normal, sensitivity),
    }


def triage_at_operating_points(
    calibration: Predictions, test: Predictions, rule: TriageRule | None = None
) -> dict[str, Any]:
    """The priority rule chosen on the calibration set (``rule``, else ``fit_triage``), measured
    on the test set; beside it, the findings rule alone (per-finding thresholds chosen for the
    priority, ``priority_operating_points``) on the same studies."""
    rule = rule or fit_triage(calibration)
    thresholds, scores, chosen = rule.thresholds, rule.scores, rule.points
    truth = true_levels(test.labels)
    called, from_score = rule_levels(test.probabilities, thresholds, scores)
    points = level_points(truth, called, {p.level: p.false_positive_rate for p in chosen})
    normal = ~(test.labels == 1).any(axis=1)
    findings_choices, _ = priority_operating_points(calibration.labels, calibration.probabilities)
    findings_called = study_levels(
        test.probabilities, np.array([c.threshold for c in findings_choices])
    )
    findings_points = level_points(truth, findings_called)
    return {
        "rule": "study scores" if scores else "findings",
        "calibration": [p.to_dict() for p in chosen],
        "test": [p.to_dict() for p in points],
        "score_thresholds": {s.level: s.threshold for s in scores},
        "critical_set_by_score": float(from_score[called == 2].mean())
        if (called == 2).any()
        else None,
        "normal_studies": int(normal.sum()),
        "normal_called_critical": float((called[normal] == 2).mean()) if normal.any() else None,
        "critical_studies": int((truth == 2).sum()),
        "critical_called_critical": float((called[truth == 2] == 2).mean())
        if (truth == 2).any()
        else None,
        "thresholds": thresholds.tolist(),
        "positives_per_study": float((test.probabilities >= thresholds).sum(1).mean()),
        "true_positives_per_study": float((test.labels == 1).sum(1).mean()),
        "priority_counts": {
            name: int((called == level).sum())
            for level, name in ((2, "critical"), (1, "urgent"), (0, "routine"))
        },
        "critical_margins": critical_margins(calibration, test),
        "critical_separation": critical_separation(test, rule),
        "findings_rule": {
            "test": [p.to_dict() for p in findings_points],
            "normal_called_critical": float((findings_called[normal] == 2).mean())
            if normal.any()
            else None,
        },
    }


CEILING_ARM = "ceiling_cnn"


def ceiling_predictions(run: Path, data: Path) -> Predictions:
    """The reference CNN of a ``headct ceiling`` run (``training.ceiling``) on the studies of a
    demo set, read from the same cache at the same grid as the arms: each finding's study score is
    the highest of its slice probabilities. The run must have slice targets for all 75 findings
    (a ceiling run, not a backbone pretraining run)."""
    from service.preprocess import ModelGrid
    from training.data import build_cache, read_labels
    from training.pretrain import load_pretrainer

    model, config = load_pretrainer(run)
    if set(config.findings) != set(FINDING_CODES):
        raise ValueError(
            f"{run} has slice targets for {len(config.findings)} findings, not all "
            f"{len(FINDING_CODES)}: a ceiling run (headct ceiling) is needed"
        )
    order = [config.findings.index(code) for code in FINDING_CODES]
    studies, _ = build_cache(read_labels(data), data / ".cache", ModelGrid(*config.grid))
    probabilities = []
    with torch.no_grad():
        for study in studies:
            hu = torch.from_numpy(np.load(study.volume_path).astype(np.float32))
            logits, _ = model(hu)  # the study's slices as a batch: [D, findings]
            probabilities.append(logits.sigmoid().amax(dim=0).numpy()[order])
    return Predictions(
        CEILING_ARM,
        [s.record.study_uid for s in studies],
        np.stack([s.record.labels for s in studies]),
        np.stack(probabilities),
    )


def ceiling_reference(
    run: Path,
    calibration: Path,
    test: Path,
    molre_test: list[Predictions],
    bootstrap: int,
) -> dict[str, Any]:
    """The reference CNN on the demo's own calibration and test studies, read like an arm: its
    macro AUC with the paired difference of MoLRE (its seeds) minus it, its per-category macro
    AUC, and the triage of the export's rule fitted on its calibration predictions."""
    from training.evaluate import evaluate

    on_calibration = ceiling_predictions(run, calibration)
    on_test = ceiling_predictions(run, test)
    if on_test.study_uids != molre_test[0].study_uids:
        raise ValueError(f"{run}: the test studies differ from the arms'")
    comparison = fair_comparison({"molre": molre_test, CEILING_ARM: [on_test]}, bootstrap)
    triage = triage_at_operating_points(on_calibration, on_test)
    return {
        "run": str(run),
        "macro_auc": comparison["arms"][CEILING_ARM]["macro_auc"],
        "macro_auc_ci95": comparison["arms"][CEILING_ARM]["macro_auc_ci95"],
        "molre_minus_ceiling": comparison["differences_vs"][CEILING_ARM],
        "per_category_macro_auc": evaluate(on_test)["per_category_macro_auc"],
        "triage": {
            key: triage[key]
            for key in (
                "test",
                "normal_called_critical",
                "normal_studies",
                "critical_separation",
            )
        },
    }
