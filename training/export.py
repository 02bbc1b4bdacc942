"""``headct export``: a trained run becomes a checked ONNX model and a new model-repository version.

    run folder ─► HeadCTModel ─► model.onnx (CT_VOLUME INT16 HU [B, D, H, W] in; PROBABILITIES,
    ROUTER_WEIGHTS, SLICE_ROUTER_WEIGHTS, SLICE_ATTENTION out; windowing inside the graph)
    ─► onnxruntime against PyTorch on real inputs (fails past 1e-4, nothing written)
    ─► optional model.fp16.onnx (GPUs) and model.int8.onnx (CPUs), each with its change in macro AUC
    ─► operating thresholds and the router reference from the validation predictions
    ─► model card ─► ``training.repository.publish`` (new version folder, both config.pbtxt files)

Real inputs are the validation studies from the ingest cache when ``validation_data`` is given
(the run's own validation split when it is the run's training folder, every study otherwise), else
a few synthetic head-shaped HU volumes; then the thresholds and the router reference come from the
run's ``validation_predictions.npz`` (PyTorch on the same split at the best checkpoint), and the
variants' change in AUC cannot be measured (recorded as null).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from service.contract import INPUT_NAME, check_graph, output_names
from service.errors import ModelContractError
from service.findings import FINDINGS
from service.model_card import (
    NOT_FOR_CLINICAL_USE,
    CardAdapter,
    CardBackbone,
    CardFinding,
    CardGrid,
    CardOperatingPoint,
    CardPriorityScore,
    CardProvenance,
    ModelCard,
)
from service.preprocess import AIR_HU, ModelGrid
from training.data import build_cache, read_labels, split_by_patient
from training.evaluate import Predictions, macro_auc
from training.model import HeadCTModel
from training.operating_points import (
    MIN_SCORE_STUDIES,
    PriorityPoint,
    priority_operating_points,
    priority_scores,
)
from training.params import count_parameters
from training.repository import (
    DEFAULT_EXECUTION_ENV,
    MODEL_FILENAME,
    ModelVersion,
    next_version,
    publish,
)
from training.runs import RunConfig, load_run
from training.thresholds import ThresholdChoice, choose_thresholds, router_reference

log = logging.getLogger(__name__)

MODEL_NAME = "headct_molre"
TOLERANCE = 1e-4
OPSET = 20
MAX_EXPORT_BATCH = 64  # the graph's batch bound; Triton's max_batch_size is smaller
SYNTHETIC_STUDIES = 4
RESEARCH_USE = (
    "Research use only: triage support that a radiologist reviews. Not a medical device; not "
    "validated for clinical use."
)

Outputs = tuple[np.ndarray, ...]  # the contract's outputs, in output_names order


class ExportError(RuntimeError):
    """The export failed a check; nothing was written to the repository."""


class ServingGraph(nn.Module):
    """The model as served: HU in, the contract's outputs in the contract's order."""

    def __init__(self, model: HeadCTModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, volume: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(volume)
        outputs = (
            out.probabilities,
            out.router_weights,
            out.slice_router_weights,
            out.slice_attention,
            out.slice_evidence,
        )
        # A model with a slice head also outputs its per-slice scores (SLICE_SCORES).
        return outputs if out.slice_scores is None else (*outputs, out.slice_scores)


def synthetic_volumes(grid: ModelGrid, count: int, seed: int = 0) -> np.ndarray:
    """Head-shaped INT16 HU volumes [count, D, H, W]: air, a skull ring, noisy brain with a few
    dense and dark blobs, so every window and every slice sees plausible values."""
    rng = np.random.default_rng(seed)
    d, h, w = grid.depth, grid.height, grid.width
    y, x = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    volumes = np.full((count, d, h, w), AIR_HU, dtype=np.float32)
    for i in range(count):
        for z in range(d):
            scale = 0.55 + 0.35 * np.sin(np.pi * (z + 0.5) / d) * rng.uniform(0.9, 1.0)
            r = np.hypot(x / (scale * 0.85), y / scale)
            volume = volumes[i, z]
            volume[r < 1.0] = rng.uniform(900, 1500)  # skull
            brain = r < 0.9
            volume[brain] = 30 + rng.normal(0, 6, brain.sum())
            for _ in range(rng.integers(0, 3)):
                cy, cx = rng.uniform(-0.5, 0.5, 2)
                blob = brain & (np.hypot(x - cx, y - cy) < rng.uniform(0.05, 0.2))
                volume[blob] = rng.choice([65.0, 10.0, -5.0])  # blood, infarct, CSF
    return np.rint(volumes).astype(np.int16)


@dataclass
class ValidationSet:
    """Validation studies on the model grid (read from the ingest cache batch by batch)."""

    study_uids: list[str]
    volume_paths: list[Path]
    labels: np.ndarray  # [N, 75]: 1, 0 or NaN

    def batches(self, size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.volume_paths), size):
            paths = self.volume_paths[start : start + size]
            yield np.stack([np.load(path) for path in paths]).astype(np.int16)


def load_validation_set(data: Path, config: RunConfig) -> ValidationSet:
    """The studies of ``data`` on the run's grid; only the run's validation split when ``data`` is
    the folder the run was trained on (its training studies would flatter every number)."""
    train = config.train
    same = Path(train.data).resolve() == data.resolve()
    cache = Path(train.cache) if same and train.cache else data / ".cache"
    studies, failures = build_cache(read_labels(data), cache, ModelGrid(*config.grid))
    if failures:
        log.warning("%d validation studies could not be ingested: %s", len(failures), failures)
    if same:
        _, studies = split_by_patient(studies, train.validation_fraction, train.seed)
    if not studies:
        raise ExportError(f"no usable validation studies in {data}")
    return ValidationSet(
        [s.record.study_uid for s in studies],
        [s.volume_path for s in studies],
        np.stack([s.record.labels for s in studies]),
    )


def export_onnx(model: HeadCTModel, grid: ModelGrid, path: Path) -> None:
    """One self-contained ONNX file, dynamic batch, the grid's D x H x W fixed."""
    example = torch.from_numpy(synthetic_volumes(grid, 2, seed=1))
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    with torch.no_grad():
        torch.onnx.export(
            ServingGraph(model).eval(),
            (example,),
            str(path),
            dynamo=True,
            external_data=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=list(output_names(model.slice_head is not None)),
            dynamic_shapes={"volume": {0: batch}},
            verbose=False,
        )
    onnx.checker.check_model(str(path))


def quantize_int8(source: Path, target: Path) -> None:
    """Dynamic int8 quantisation of the weights (activations quantised at run time): for CPUs."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # It logs advice through the root logger ("consider pre-processing"); keep that quiet.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def convert_fp16(source: Path, target: Path) -> None:
    """Half-precision weights and arithmetic, INT16 input and FP32 outputs kept: for GPUs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _runners(
    model: HeadCTModel, sessions: dict[str, ort.InferenceSession]
) -> dict[str, Callable[[np.ndarray], Outputs]]:
    def eager(batch: np.ndarray) -> Outputs:
        with torch.no_grad():
            return tuple(t.numpy() for t in ServingGraph(model)(torch.from_numpy(batch)))

    def onnx_runner(session: ort.InferenceSession) -> Callable[[np.ndarray], Outputs]:
        names = list(output_names(model.slice_head is not None))
        return lambda batch: tuple(session.run(names, {INPUT_NAME: batch}))

    return {"torch": eager} | {name: onnx_runner(s) for name, s in sessions.items()}


def _predict(
    runners: dict[str, Callable[[np.ndarray], Outputs]],
    batches: Iterator[np.ndarray],
    limits: dict[str, int],
) -> dict[str, Outputs]:
    """Every runner on every batch, except that a runner in ``limits`` stops once it has seen
    that many studies (PyTorch eager is only the reference for the parity check)."""
    parts: dict[str, list[Outputs]] = {name: [] for name in runners}
    seen = 0
    for batch in batches:
        for name, run in runners.items():
            limit = limits.get(name)
            if limit is None or seen < limit:
                parts[name].append(run(batch))
        seen += len(batch)
    return {
        name: tuple(np.concatenate([p[i] for p in chunks]) for i in range(len(chunks[0])))
        for name, chunks in parts.items()
    }


def max_abs_difference(a: Outputs, b: Outputs) -> float:
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b, strict=True))


def max_scaled_difference(a: Outputs, b: Outputs) -> float:
    """The parity measure: per output, the largest absolute difference divided by the output's
    scale (its largest magnitude in ``b``, at least 1), the largest over the outputs. Outputs in
    [0, 1] are compared absolutely; logits (SLICE_SCORES reach tens) relatively, where float32
    rounding grows with the value."""
    return max(
        float(np.max(np.abs(x.astype(np.float64) - y)) / max(1.0, float(np.max(np.abs(y)))))
        for x, y in zip(a, b, strict=True)
    )


def build_card(
    model: HeadCTModel,
    config: RunConfig,
    *,
    name: str,
    version: int,
    thresholds: list[ThresholdChoice],
    router: list[float],
    metrics: dict[str, float | None],
    synthetic: bool,
    training_data: str | None = None,
    operating_points: list[CardOperatingPoint] | None = None,
    scores: list[CardPriorityScore] | None = None,
) -> ModelCard:
    """The model card of a trained run (see docs/ARCHITECTURE.md, "Contracts")."""
    d, h, w = config.grid
    counts = count_parameters(model)
    summary = model.adapter_summary()
    if training_data is None:
        studies = (
            f"{config.train_studies or '?'} training and "
            f"{config.validation_studies or '?'} validation studies"
        )
        training_data = (
            f"Synthetic head CT phantoms written by `headct synth` ({studies}); no patient data."
            if synthetic
            else f"{config.train.data} ({studies})."
        )
    heads = ", and a slice head beside the attention pooling" if summary["slice_head"] else ""
    description = (
        f"{summary['kind']} adapter ({summary['experts']} experts) on a {config.backbone} "
        f"backbone{heads}: probabilities of 75 head CT findings, the router's expert weights, "
        "per-slice attention and each slice's evidence for each finding, from a non-contrast "
        f"head CT resampled to {d}x{h}x{w}."
    )
    if synthetic:
        description += " Trained on synthetic phantoms: not for clinical use."
    trained = str(config.created or datetime.now(UTC).isoformat())[:10]
    return ModelCard(
        name=name,
        version=version,
        description=description,
        intended_use=NOT_FOR_CLINICAL_USE if synthetic else RESEARCH_USE,
        backbone=CardBackbone(
            name=config.backbone,
            weights_sha256=config.weights_sha256,
            parameters=counts.backbone,
        ),
        adapter=CardAdapter(
            **summary, added_parameters=counts.added, added_fraction=counts.added_fraction
        ),
        grid=CardGrid(depth=d, height=h, width=w),
        windows=list(model.windows),
        findings=[
            CardFinding.of(f, choice.threshold)
            for f, choice in zip(FINDINGS, thresholds, strict=True)
        ],
        router_reference=router,
        provenance=CardProvenance(
            training_data=training_data,
            synthetic=synthetic,
            trained=trained,
            exported=datetime.now(UTC).date().isoformat(),
            metrics=metrics,
        ),
        operating_points=operating_points,
        priority_scores=scores or None,
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _card_point(point: PriorityPoint, validation: str) -> CardOperatingPoint:
    def interval(ci: tuple[float, float]) -> tuple[float, float] | None:
        return ci if all(math.isfinite(x) for x in ci) else None

    return CardOperatingPoint(
        level=point.level,  # type: ignore[arg-type]
        target_sensitivity=point.target_sensitivity,
        false_positive_rate=point.false_positive_rate,
        sensitivity=_finite(point.sensitivity),
        sensitivity_ci95=interval(point.sensitivity_ci95),
        specificity=_finite(point.specificity),
        specificity_ci95=interval(point.specificity_ci95),
        positives=point.positives,
        negatives=point.negatives,
        validation=validation,
    )


def card_thresholds(
    labels: np.ndarray, probabilities: np.ndarray, policy: str, where: str
) -> tuple[list[ThresholdChoice], list[CardOperatingPoint] | None, list[CardPriorityScore] | None]:
    """The card's per-finding thresholds, priority operating points and study-level scores under
    ``policy`` (``--thresholds``), chosen on validation ``labels`` and ``probabilities`` (the
    studies ``where`` names). ``study-score`` falls back to the findings rule, with a warning,
    when a priority level has too few validation studies on a side to fit a score."""
    if policy == "study-score" and len(labels):
        thresholds, fitted, points = priority_scores(labels, probabilities)
        if not fitted:
            log.warning(
                "--thresholds study-score: %s have fewer than %d studies on a side of a priority "
                "level, so no study-level score was fitted; the card uses the findings rule "
                "(as --thresholds priority)",
                where,
                MIN_SCORE_STUDIES,
            )
        scores = [
            CardPriorityScore(
                level=s.level,  # type: ignore[arg-type]
                weights=s.weights,
                center=s.center,
                bias=s.bias,
                threshold=s.threshold,
                fitted_on=where,
            )
            for s in fitted
        ]
        measured = f"{where}, out of fold" if fitted else where
        return thresholds, [_card_point(point, measured) for point in points], scores
    if policy == "priority" and len(labels):
        thresholds, points = priority_operating_points(labels, probabilities)
        return thresholds, [_card_point(point, where) for point in points], None
    return choose_thresholds(labels, probabilities), None, None


@dataclass(frozen=True)
class ExportResult:
    version: ModelVersion
    card: ModelCard
    thresholds: list[ThresholdChoice]


def _auc(labels: np.ndarray, probabilities: np.ndarray, uids: list[str]) -> float | None:
    auc = macro_auc(Predictions("export", uids, labels, probabilities))
    return None if np.isnan(auc) else auc


def export_run(
    run: Path,
    repository: Path,
    *,
    name: str = MODEL_NAME,
    version: int | None = None,
    validation_data: Path | None = None,
    fp16: bool = False,
    int8: bool = False,
    training_data: str | None = None,
    synthetic: bool | None = None,
    threshold_policy: str = "study-score",
    execution_env: str = DEFAULT_EXECUTION_ENV,
    tolerance: float = TOLERANCE,
    batch_size: int = 4,
    parity_studies: int = 8,
) -> ExportResult:
    """Export ``run`` into ``repository`` as version ``version`` (default: the next) of ``name``.

    PyTorch runs on the first ``parity_studies`` studies (the parity check); onnxruntime and the
    variants on all of them (thresholds, router reference, AUC). The card says whether the model
    was trained on synthetic phantoms as the run recorded it (``card_synthetic``)."""
    version = version or next_version(repository / name)
    if (repository / name / str(version)).exists():
        raise ExportError(f"{repository / name / str(version)} exists; choose another --version")
    model, config = load_run(run)
    synthetic = card_synthetic(run, config, synthetic)
    grid = ModelGrid(*config.grid)
    validation = load_validation_set(validation_data, config) if validation_data else None

    with tempfile.TemporaryDirectory(prefix="headct-export-") as tmp:
        staged = Path(tmp)
        path = staged / MODEL_FILENAME
        export_onnx(model, grid, path)
        variants: dict[str, Path] = {}
        if fp16:
            variants["fp16"] = staged / "model.fp16.onnx"
            convert_fp16(path, variants["fp16"])
        if int8:
            variants["int8"] = staged / "model.int8.onnx"
            quantize_int8(path, variants["int8"])
        sessions = {"onnx": _session(path)} | {k: _session(p) for k, p in variants.items()}
        for kind, session in sessions.items():
            try:
                check_graph(session, grid, model.experts, model.slice_head is not None)
            except ModelContractError as exc:
                raise ExportError(f"the {kind} graph breaks the serving contract: {exc}") from None

        batches = (
            validation.batches(batch_size)
            if validation
            else iter([synthetic_volumes(grid, 1, seed=2), synthetic_volumes(grid, 3, seed=3)])
        )
        outputs = _predict(_runners(model, sessions), batches, {"torch": parity_studies})
        checked = len(outputs["torch"][0])
        onnx_outputs = tuple(o[:checked] for o in outputs["onnx"])
        difference = max_scaled_difference(onnx_outputs, outputs["torch"])
        if not difference <= tolerance:
            raise ExportError(
                f"onnxruntime differs from PyTorch by {difference:.3g} (the largest difference "
                "over the outputs, relative to an output's scale where it exceeds 1), past the "
                f"tolerance {tolerance:g}; nothing was written to {repository}"
            )
        log.info("onnxruntime matches PyTorch within %.3g on %d studies", difference, checked)
        metrics: dict[str, float | None] = {
            "onnx_max_abs_difference": max_abs_difference(onnx_outputs, outputs["torch"]),
            "onnx_max_scaled_difference": difference,
            "onnx_parity_studies": float(checked),
        }
        for kind in variants:
            metrics[f"{kind}_probability_max_abs_difference"] = max_abs_difference(
                outputs[kind][:1], outputs["onnx"][:1]
            )

        if validation is not None:
            labels, uids = validation.labels, validation.study_uids
            probabilities, router_weights = outputs["onnx"][0], outputs["onnx"][1]
            auc = _auc(labels, probabilities, uids)
            metrics |= {"validation_studies": float(len(uids)), "validation_macro_auc": auc}
            for kind in variants:
                variant_auc = _auc(labels, outputs[kind][0], uids)
                delta = None if auc is None or variant_auc is None else variant_auc - auc
                metrics[f"{kind}_macro_auc_delta"] = delta
        else:
            labels, probabilities, router_weights = _run_predictions(run)
            metrics |= {f"{kind}_macro_auc_delta": None for kind in variants}
        summary = run / "summary.json"
        if summary.is_file():
            best = json.loads(summary.read_text()).get("best_validation_macro_auc")
            metrics["training_best_validation_macro_auc"] = best
        where = (
            f"{len(labels)} studies of {validation_data}"
            if validation is not None
            else f"the run's validation split ({len(labels)} studies)"
        )
        thresholds, operating_points, scores = card_thresholds(
            labels, probabilities, threshold_policy, where
        )
        metrics["threshold_fallbacks"] = float(sum(c.method == "fallback" for c in thresholds))
        card = build_card(
            model,
            config,
            name=name,
            version=version,
            thresholds=thresholds,
            router=router_reference(router_weights, model.experts),
            metrics=metrics,
            training_data=training_data,
            synthetic=synthetic,
            operating_points=operating_points,
            scores=scores,
        )
        published = publish(repository, card, staged, execution_env=execution_env)
    return ExportResult(published, card, thresholds)


def card_synthetic(run: Path, config: RunConfig, synthetic: bool | None) -> bool:
    """Whether the card says the model was trained on synthetic phantoms (not for clinical use):
    what the run recorded about its training data, ``synthetic`` only where it recorded nothing
    (runs trained before it was recorded). Never guessed, and never real for phantoms."""
    if config.synthetic is None:
        if synthetic is None:
            raise ExportError(
                f"{run} does not record whether its training data were synthetic (it was trained "
                "before runs recorded it): pass --synthetic if it was trained on phantoms (the "
                "card then says not for clinical use), --no-synthetic if on real studies"
            )
        return synthetic
    if config.synthetic and synthetic is False:
        raise ExportError(
            f"{run} was trained on synthetic phantoms ({config.train.data}): its card cannot "
            "say otherwise; leave out --no-synthetic"
        )
    return config.synthetic or bool(synthetic)


def _run_predictions(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Labels, probabilities and router weights the run saved for its validation split; without
    them every threshold falls back to 0.5 and the router reference is uniform."""
    path = run / "validation_predictions.npz"
    if not path.is_file():
        log.warning("%s missing: thresholds fall back to 0.5; pass --validation-data", path)
        empty = np.full((0, len(FINDINGS)), np.nan)
        return empty, empty, None
    predictions = Predictions.load(path)
    return predictions.labels, predictions.probabilities, predictions.router_weights
