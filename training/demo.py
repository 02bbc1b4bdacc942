"""The demo model, rebuilt by one command: ``python -m training.demo``.

1. Synthesise three sets of phantom studies: the task set (findings 4x their clinical prevalence,
   so each has positives to learn from), a calibration set and a held-out test set, both at
   clinical prevalence (what a user sees, and where study-level operating points are chosen).
2. Start from the stand-in foundation backbone ``demo_vit`` committed in
   ``training/weights/demo_vit`` (made by ``headct pretrain``: slice-level targets on half of the
   findings, fresh phantoms streamed from the generator; see its ``PRETRAINING.md``). It is frozen.
3. Train the arms on all 75 findings with study labels only, each with the same data, epochs and
   seeds: a linear probe, LoRA (r=2), LoRA with about as many added parameters as MoLRE (r=10), and
   MoLRE (K=4, r=2).
4. Evaluate every run on the test set: per-finding AUC (report.md, radar, ROC, router), macro AUC
   with bootstrap intervals and the paired bootstrap interval of MoLRE minus each baseline, the
   triage priority at the operating points chosen on the calibration set (critical-study
   sensitivity and specificity with 95% intervals), whether the highest-attention slice lies in
   an annotated lesion, and how much the router's weights depend on the input.
5. Export MoLRE (the first seed) into the model repository as the next version of
   ``headct_molre``, with its operating points from the calibration set, and remove the versions
   before it.

Everything is SYNTHETIC: the model is a demonstration, not for clinical use.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.findings import FINDING_CODES, FINDINGS, Category
from synth import SynthOptions, synthesize
from training.config import PretrainConfig, TrainConfig
from training.evaluate import Predictions, category_positive, macro_auc, resampled_auc
from training.model import ModelOutput
from training.molre import MoLREConfig
from training.molre.config import ROUTERS
from training.operating_points import (
    level_points,
    priority_operating_points,
    study_levels,
    true_levels,
)
from training.report import write_report
from training.runs import load_run, predict_run
from training.train import train

log = logging.getLogger(__name__)

SYNTHETIC_NOTE = (
    "Synthetic phantoms made by `headct synth`: not patient data. The demo model is a "
    "demonstration, not for clinical use."
)
BACKBONE = "demo_vit"
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "demo_vit"
MIN_POSITIVES = 5  # a finding enters the headline macro AUC with at least this many positives
BATCH = 4  # studies per forward when the runs predict the test and calibration sets

# Every arm trains the same way (data, epochs, learning rate, seeds); alpha = 2r throughout.
ARMS: dict[str, dict[str, Any]] = {
    "probe": {"adapter": "probe"},
    "lora": {"adapter": "lora", "molre": {"rank": 2, "alpha": 4.0}},
    "lora_matched": {"adapter": "lora", "molre": {"rank": 10, "alpha": 20.0}},
    "molre": {
        "adapter": "molre",
        "molre": {"experts": 4, "rank": 2, "alpha": 4.0, "load_balancing_weight": 0.01},
        "router_lr_scale": 5.0,
    },
}


@dataclass(frozen=True)
class DemoSizes:
    task_studies: int = 400
    calibration_studies: int = 400
    test_studies: int = 500
    slices: int = 32
    matrix: int = 256
    grid: tuple[int, int, int] = (32, 128, 128)
    # Findings are made this many times more common in the task set, so that each has enough
    # positives in a few hundred studies to learn from; calibration and test are at 1x.
    task_prevalence_scale: float = 4.0
    adapter_epochs: int = 4
    batch_size: int = 4
    bootstrap: int = 1000
    seeds: tuple[int, ...] = (0,)
    arms: tuple[str, ...] = ("probe", "lora", "lora_matched", "molre")
    # Steps of a backbone pretrained here by ``headct pretrain`` (QUICK); 0 uses ``weights``.
    pretrain_steps: int = 0
    pretrain_backbone: str = BACKBONE
    # The registered backbone the committed ``weights`` belong to (when pretrain_steps is 0).
    backbone: str = BACKBONE
    lr: float = 2e-3
    # MoLRE's router (training.molre.config): per_layer, or shared (one per model).
    router: str = "per_layer"
    extra: dict[str, Any] = field(default_factory=dict)


QUICK = DemoSizes(
    task_studies=16,
    calibration_studies=10,
    test_studies=10,
    slices=16,
    matrix=64,
    grid=(16, 32, 32),
    adapter_epochs=1,
    bootstrap=20,
    seeds=(0, 1),
    pretrain_steps=4,
    pretrain_backbone="tiny_dinov2",
)


def _already_synthesized(folder: Path, count: int, options: SynthOptions) -> bool:
    """A set from an earlier run is reused only if it has the same size and options."""
    try:
        annotations = json.loads((folder / "annotations.json").read_text())
        rows = (folder / "labels.csv").read_text().splitlines()
    except (OSError, ValueError):
        return False
    return len(rows) - 1 == count and annotations.get("options") == asdict(options)


def _synthesize(out: Path, sizes: DemoSizes) -> dict[str, Path]:
    sets = {
        "task": (sizes.task_studies, 22, sizes.task_prevalence_scale),
        "calibration": (sizes.calibration_studies, 44, 1.0),
        "test": (sizes.test_studies, 55, 1.0),
    }
    folders = {}
    for name, (count, seed, prevalence) in sets.items():
        options = SynthOptions(
            slices=sizes.slices, matrix=sizes.matrix, prevalence_scale=prevalence
        )
        folder = out / "data" / name
        if not _already_synthesized(folder, count, options):
            if folder.exists():
                shutil.rmtree(folder)
            synthesize(folder, studies=count, seed=seed, options=options)
        folders[name] = folder
    return folders


def _quick_backbone(out: Path, sizes: DemoSizes) -> Path:
    """A backbone pretrained here for a few steps (QUICK: exercises ``headct pretrain``)."""
    from training.pretrain import export_weights, pretrain

    run = out / "runs" / "pretrain"
    config = PretrainConfig(
        out=str(run),
        backbone=sizes.pretrain_backbone,
        grid=sizes.grid,
        source_matrix=sizes.matrix,
        steps=sizes.pretrain_steps,
        slices_per_step=8,
        buffer_studies=2,
        validation_studies=4,
        validate_every=sizes.pretrain_steps,
        warmup_steps=1,
        workers=0,
    )
    pretrain(config)
    folder = out / "backbone"
    export_weights(run, folder)
    return folder


def _train_arm(
    arm: str, seed: int, data: Path, out: Path, weights: Path, sizes: DemoSizes
) -> dict[str, Any]:
    return train(arm_config(arm, seed, data, out, weights, sizes))


def arm_config(
    arm: str, seed: int, data: Path, out: Path, weights: Path, sizes: DemoSizes
) -> TrainConfig:
    """How the demo trains one arm with one seed."""
    settings = dict(ARMS[arm])
    molre = dict(settings.pop("molre", {}))
    if settings["adapter"] == "molre":
        molre["router"] = sizes.router
    return TrainConfig(
        data=str(data),
        out=str(out),
        backbone=sizes.pretrain_backbone if sizes.pretrain_steps else sizes.backbone,
        weights=str(weights),
        adapter=settings.pop("adapter"),
        molre=MoLREConfig(**molre),
        grid=sizes.grid,
        epochs=sizes.adapter_epochs,
        batch_size=sizes.batch_size,
        lr=sizes.lr,
        validation_fraction=0.2,
        patience=3,
        seed=seed,
        **settings,
        **sizes.extra,
    )


@dataclass
class Detailed:
    """One run on one set: predictions plus what the report reads per slice."""

    predictions: Predictions
    attention: np.ndarray  # [N, D]
    slice_router: np.ndarray  # [N, D, K]


def predict_detailed(run: Path, data: Path, name: str) -> Detailed:
    attention, slices = [], []

    def keep(output: ModelOutput) -> None:
        attention.append(output.slice_attention.numpy())
        slices.append(output.slice_router_weights.numpy())

    predictions = predict_run(run, data, name=name, batch_size=BATCH, each_output=keep)
    return Detailed(predictions, np.concatenate(attention), np.concatenate(slices))


def key_slice_check(detailed: Detailed, test: Path, depth: int) -> dict[str, float]:
    """For positive test studies: how often the highest-attention slice lies inside an annotated
    lesion of one of the study's focal findings (those covering under half of the slices), against
    the chance rate of a random slice."""
    annotations = json.loads((test / "annotations.json").read_text())
    source_slices = int(annotations["options"]["slices"])
    hits, chance, counted = 0, 0.0, 0
    for uid, row in zip(detailed.predictions.study_uids, detailed.attention, strict=True):
        focal = [s for s in annotations.get(uid, {}).values() if len(s) < source_slices / 2]
        if not focal:
            continue
        inside = {int(x) for s in focal for x in s}
        # Grid slices span the series' first to last slice: map the key slice back.
        key = round(int(np.argmax(row)) * (source_slices - 1) / max(depth - 1, 1))
        hits += key in inside
        chance += len(inside) / source_slices
        counted += 1
    return {
        "studies": counted,
        "key_slice_in_lesion": hits / counted if counted else float("nan"),
        "chance": chance / counted if counted else float("nan"),
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


def triage_at_operating_points(calibration: Predictions, test: Predictions) -> dict[str, Any]:
    """Thresholds chosen for the priority on the calibration set, measured on the test set."""
    choices, chosen = priority_operating_points(calibration.labels, calibration.probabilities)
    thresholds = np.array([c.threshold for c in choices])
    truth, called = true_levels(test.labels), study_levels(test.probabilities, thresholds)
    points = level_points(truth, called, {p.level: p.false_positive_rate for p in chosen})
    normal = ~(test.labels == 1).any(axis=1)
    return {
        "calibration": [p.to_dict() for p in chosen],
        "test": [p.to_dict() for p in points],
        "normal_studies": int(normal.sum()),
        "normal_called_critical": float((called[normal] == 2).mean()) if normal.any() else None,
        "critical_studies": int((truth == 2).sum()),
        "critical_called_critical": float((called[truth == 2] == 2).mean())
        if (truth == 2).any()
        else None,
        "positives_per_study": float((test.probabilities >= thresholds).sum(1).mean()),
        "true_positives_per_study": float((test.labels == 1).sum(1).mean()),
        "priority_counts": {
            name: int((called == level).sum())
            for level, name in ((2, "critical"), (1, "urgent"), (0, "routine"))
        },
    }


def run_demo(
    out: Path,
    repository: Path | None,
    sizes: DemoSizes = DemoSizes(),
    report: Path | None = None,
    weights: Path = DEFAULT_WEIGHTS,
    ceiling: Path | None = None,
) -> dict[str, Any]:
    started = time.perf_counter()
    model = _model_name(repository)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    folders = _synthesize(out, sizes)
    stages: dict[str, float] = {"synthesize_s": time.perf_counter() - started}
    if sizes.pretrain_steps:
        tick = time.perf_counter()
        weights = _quick_backbone(out, sizes)
        stages["pretrain_s"] = time.perf_counter() - tick

    runs: dict[str, dict[int, Path]] = {arm: {} for arm in sizes.arms}
    summaries: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in sizes.arms}
    for seed in sizes.seeds:
        for arm in sizes.arms:
            tick = time.perf_counter()
            run = out / "runs" / f"{arm}_s{seed}"
            summaries[arm][seed] = _train_arm(arm, seed, folders["task"], run, weights, sizes)
            runs[arm][seed] = run
            stages[f"{arm}_s{seed}_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    report = report or out / "report"
    test: dict[str, list[Detailed]] = {arm: [] for arm in sizes.arms}
    calibration: dict[str, list[Predictions]] = {arm: [] for arm in sizes.arms}
    for arm in sizes.arms:
        for seed in sizes.seeds:
            test[arm].append(predict_detailed(runs[arm][seed], folders["test"], arm))
            calibration[arm].append(
                predict_run(runs[arm][seed], folders["calibration"], name=arm, batch_size=BATCH)
            )
    order = [a for a in ("molre", "lora", "lora_matched", "probe") if a in sizes.arms]
    metrics = write_report(
        [test[a][0].predictions for a in order],
        report,
        bootstrap=sizes.bootstrap,
        title=f"{model} on synthetic head CT phantoms: MoLRE vs LoRA vs linear probe",
        notes=SYNTHETIC_NOTE,
    )
    comparison = fair_comparison(
        {a: [d.predictions for d in test[a]] for a in order}, sizes.bootstrap
    )
    triage = {
        a: triage_at_operating_points(calibration[a][0], test[a][0].predictions) for a in order
    }
    key_slice = {a: key_slice_check(test[a][0], folders["test"], sizes.grid[0]) for a in order}
    router = router_dependence(test["molre"][0]) if "molre" in test else {}
    stages["evaluate_s"] = time.perf_counter() - tick

    export = None
    if repository is not None and "molre" in runs:
        export = _export(runs["molre"][sizes.seeds[0]], repository, folders, sizes, weights)
        stages["export_s"] = time.perf_counter() - tick - stages["evaluate_s"]
    stages["total_s"] = time.perf_counter() - started

    summary = {
        "model": model,
        "three_way": _arm_table(metrics, summaries, runs, sizes.seeds[0]),
        "fair_comparison": comparison,
        "triage": triage,
        "key_slice": key_slice,
        "router": router,
        "ceiling": _read_ceiling(ceiling),
        "per_category_macro_auc": {a: metrics["runs"][a]["per_category_macro_auc"] for a in order},
        "stages": stages,
        "export": export,
        "sizes": asdict(sizes),
        "backbone_weights": str(weights),
    }
    report.mkdir(parents=True, exist_ok=True)
    (report / "demo_summary.json").write_text(
        json.dumps(summary, indent=2, default=str, allow_nan=True) + "\n"
    )
    (report / "three_way.md").write_text(demo_markdown(summary, metrics))
    return summary


def _shown(path: Path) -> str:
    """A path as the card shows it: relative to the working folder when it lies under it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _model_name(repository: Path | None) -> str:
    """ "Demo model vN", N the version the export will write (one above the newest there)."""
    if repository is None:
        return "Demo model (not exported)"
    from training.repository import next_version

    return f"Demo model v{next_version(repository / 'headct_molre')}"


def _export(
    run: Path, repository: Path, folders: dict[str, Path], sizes: DemoSizes, weights: Path
) -> dict[str, Any]:
    from training.export import export_run

    before = sorted(
        p for p in (repository / "headct_molre").glob("*") if p.is_dir() and p.name.isdigit()
    )
    result = export_run(
        run,
        repository,
        validation_data=folders["calibration"],
        int8=True,
        training_data=(
            f"{sizes.task_studies} synthetic phantom studies from `headct synth` (seed 22, "
            f"findings {sizes.task_prevalence_scale:g}x clinical prevalence); operating points "
            f"on {sizes.calibration_studies} more at clinical prevalence (seed 44); backbone "
            f"{sizes.backbone} pretrained on streamed phantoms ({_shown(weights)}); "
            "not patient data"
        ),
    )
    # The repository keeps the new version only: older demo versions leave with it. (The CPU
    # model's one version, headct_molre_cpu/1, already points at the new model.onnx.)
    for old in before:
        if old.name != str(result.card.version):
            shutil.rmtree(old)
    return {"version": result.card.version, "path": str(result.version.folder)}


def _read_ceiling(path: Path | None) -> dict[str, Any] | None:
    if path is None or not Path(path).is_file():
        return None
    data = json.loads(Path(path).read_text())
    return {
        "study_macro_auc": data["study_macro_auc"],
        "weak_findings": data["weak_findings"],
        "per_finding": {c: r["study_auc"] for c, r in data["per_finding"].items()},
    }


def _arm_table(
    metrics: dict[str, Any],
    summaries: dict[str, dict[int, dict[str, Any]]],
    runs: dict[str, dict[int, Path]],
    seed: int,
) -> dict[str, Any]:
    from training.params import count_parameters

    table = {}
    for arm in runs:
        model, _ = load_run(runs[arm][seed])
        counts = count_parameters(model)
        m = metrics["runs"][arm]
        table[arm] = {
            "macro_auc": m["macro_auc"],
            "macro_auc_ci95": m.get("macro_auc_ci95"),
            "strata": m["strata"],
            "added_parameters": counts.added,
            "added_fraction": counts.added_fraction,
            "trainable_parameters": counts.trainable,
            "seconds_per_step": summaries[arm][seed].get("seconds_per_step"),
            "best_validation_macro_auc": summaries[arm][seed].get("best_validation_macro_auc"),
        }
    return table


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _ci(values: Any) -> str:
    return "" if not values else f" [{_f(values[0])}, {_f(values[1])}]"


def demo_markdown(summary: dict[str, Any], metrics: dict[str, Any] | None = None) -> str:
    comparison = summary["fair_comparison"]
    lines = [
        f"# {summary['model']}: MoLRE, LoRA and a linear probe on a pretrained stand-in backbone",
        "",
        f"> **{SYNTHETIC_NOTE}**",
        "",
        f"Test set: {comparison['studies']} held-out phantoms at clinical prevalence. Macro AUC "
        f"over the {comparison['findings_scored']} findings with at least "
        f"{comparison['min_positives']} positives; 95% intervals by bootstrap over studies "
        f"(mean over {len(summary['sizes']['seeds'])} seed(s)).",
        "",
        "| arm | macro AUC [95% CI] | per seed | AUC >= 0.90 | 0.80-0.90 | < 0.80 | added params | "
        "added % | s/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, row in summary["three_way"].items():
        fair = comparison["arms"][arm]
        strata = row["strata"]
        lines.append(
            f"| {arm} | {_f(fair['macro_auc'])}{_ci(fair['macro_auc_ci95'])} | "
            f"{', '.join(_f(x) for x in fair['per_seed'])} | {strata['auc_ge_0.90']} | "
            f"{strata['auc_0.80_to_0.90']} | {strata['auc_lt_0.80']} | "
            f"{row['added_parameters']:,} | {100 * row['added_fraction']:.2f}% | "
            f"{_f(row['seconds_per_step'])} |"
        )
    lines += ["", f"Paired bootstrap, {comparison['reference']} minus each arm:", ""]
    for arm, d in comparison["differences_vs"].items():
        lines.append(
            f"- vs {arm}: {d['difference']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] "
            f"({d['reading']})"
        )
    lines += [
        "",
        "## Triage at the study-level operating points",
        "",
        "Thresholds chosen on the calibration set (clinical prevalence) for critical-study "
        "sensitivity >= 0.95 and urgent-or-critical >= 0.90, then measured on the test set.",
        "",
        "| arm | critical sens. [95% CI] | critical spec. [95% CI] | normals called critical | "
        "positives per study (true) | critical / urgent / routine |",
        "|---|---|---|---|---|---|",
    ]
    for arm, t in summary["triage"].items():
        critical = next(p for p in t["test"] if p["level"] == "critical")
        counts = t["priority_counts"]
        lines.append(
            f"| {arm} | {_f(critical['sensitivity'])}{_ci(critical['sensitivity_ci95'])} | "
            f"{_f(critical['specificity'])}{_ci(critical['specificity_ci95'])} | "
            f"{_f(t['normal_called_critical'])} of {t['normal_studies']} | "
            f"{_f(t['positives_per_study'], 1)} ({_f(t['true_positives_per_study'], 1)}) | "
            f"{counts['critical']} / {counts['urgent']} / {counts['routine']} |"
        )
    lines += ["", "## Key slice", ""]
    for arm, key in summary["key_slice"].items():
        lines.append(
            f"- {arm}: the highest-attention slice lies in an annotated focal lesion in "
            f"{100 * key['key_slice_in_lesion']:.0f}% of {key['studies']} positive test studies "
            f"(a random slice: {100 * key['chance']:.0f}%)."
        )
    router = summary["router"]
    if router:
        lines += [
            "",
            "## Router (MoLRE)",
            "",
            "- Standard deviation of each expert's study weight across test studies: "
            + ", ".join(_f(x) for x in router["study_weight_std"])
            + f" (within a study, across slices: {_f(router['within_study_slice_std'])}).",
            f"- Mutual information between the top expert and the finding category: "
            f"{_f(router['top_expert_category_mi_bits'])} bits (shuffled categories: "
            f"{_f(router['top_expert_category_mi_bits_shuffled'])}), over "
            f"{router['studies_with_one_category']} studies with one category or none.",
            f"- Category predicted from the study weights (cross-validated logistic regression): "
            f"{_f(router['category_from_weights_accuracy'])} accuracy, against "
            f"{_f(router['category_majority_rate'])} for the commonest category.",
            "",
            "| category | "
            + " | ".join(f"E{k}" for k in range(len(router["study_weight_std"])))
            + " |",
            "|---|" + "---|" * len(router["study_weight_std"]),
        ]
        for name, weights in router["by_category"].items():
            lines.append(f"| {name} | " + " | ".join(_f(w) for w in weights) + " |")
        positions = router["by_slice_position"]
        lines += [
            "",
            "Mean expert weights by slice position (inferior to superior, every 4th slice):",
            "",
            "| slice | " + " | ".join(f"E{k}" for k in range(len(positions[0]))) + " |",
            "|---|" + "---|" * len(positions[0]),
        ]
        for index in range(0, len(positions), 4):
            lines.append(f"| {index} | " + " | ".join(_f(w) for w in positions[index]) + " |")
    per_category = summary["per_category_macro_auc"]
    lines += ["", "## Per-category macro AUC (all findings with an AUC)", ""]
    arms = list(per_category)
    lines += ["| category | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for category in Category:
        lines.append(
            f"| {category.value} | "
            + " | ".join(_f(per_category[a][category.value]) for a in arms)
            + " |"
        )
    ceiling = summary.get("ceiling")
    if ceiling and metrics is not None:
        molre = metrics["runs"].get("molre", {}).get("per_finding_auc", {})
        lines += [
            "",
            "## Against the ceiling (what the phantoms allow, `ceiling.md`)",
            "",
            "Reference CNN with slice-level targets, study macro AUC "
            f"{_f(ceiling['study_macro_auc'])}. Weak at the grid: "
            + (", ".join(f"`{c}`" for c in ceiling["weak_findings"]) or "none")
            + ".",
            "",
            "| finding | ceiling AUC | MoLRE AUC |",
            "|---|---|---|",
        ]
        for finding in FINDINGS:
            lines.append(
                f"| `{finding.code}` | {_f(ceiling['per_finding'].get(finding.code))} | "
                f"{_f(molre.get(finding.code))} |"
            )
    lines += [
        "",
        "Stage times (s): "
        + ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in summary["stages"].items()),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild the demo model (synthetic data).")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--report", type=Path, default=Path("bench/results/demo_model"))
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument(
        "--backbone", default=BACKBONE, help="The registered backbone --weights belong to."
    )
    parser.add_argument(
        "--ceiling", type=Path, default=Path("bench/results/demo_model/ceiling.json")
    )
    parser.add_argument(
        "--seeds", type=int, default=1, help="Seeds per arm (3 for the comparison)."
    )
    parser.add_argument("--arms", default="probe,lora,lora_matched,molre")
    parser.add_argument("--router", default="per_layer", choices=ROUTERS, help="MoLRE's router.")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: a smoke run.")
    parser.add_argument("--no-export", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    sizes = QUICK if args.quick else DemoSizes()
    sizes = replace(
        sizes,
        seeds=tuple(range(args.seeds)),
        arms=tuple(args.arms.split(",")),
        backbone=args.backbone,
        router=args.router,
    )
    if args.epochs:
        sizes = replace(sizes, adapter_epochs=args.epochs)
    summary = run_demo(
        args.out,
        None if args.no_export else args.repository,
        sizes,
        report=args.report,
        weights=args.weights,
        ceiling=args.ceiling,
    )
    print((args.report / "three_way.md").read_text())
    del summary


if __name__ == "__main__":
    main()
