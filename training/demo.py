"""The demo model, rebuilt by one command: ``python -m training.demo``.

1. Synthesise three sets of phantom studies: the task set (findings 4x their clinical prevalence,
   so each has positives to learn from), a calibration set and a held-out test set, both at
   clinical prevalence (what a user sees, and where study-level operating points are chosen).
2. Start from the stand-in foundation backbone ``demo_vit_conv`` committed in
   ``training/weights/demo_vit_conv`` (a small ViT with a convolutional stem, made by ``headct
   pretrain``: slice-level targets on half of the findings, fresh phantoms streamed from the
   generator; see its ``PRETRAINING.md``). It is frozen.
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

import torch

from synth import SynthOptions, synthesize
from training.config import PretrainConfig, TrainConfig
from training.demo_eval import (
    BATCH,
    Detailed,
    ceiling_reference,
    fair_comparison,
    fit_triage,
    key_slice_check,
    predict_detailed,
    router_dependence,
    triage_at_operating_points,
)
from training.demo_report import SYNTHETIC_NOTE, demo_markdown
from training.evaluate import Predictions
from training.molre import MoLREConfig
from training.molre.config import ROUTERS
from training.report import write_report
from training.runs import load_run, predict_run
from training.train import train

log = logging.getLogger(__name__)

# Demo model v8's backbone (v3 to v7 used demo_vit, whose weights stay in training/weights).
BACKBONE = "demo_vit_conv"
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "demo_vit_conv"

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
    # 1,600 task studies seen once each: the same 320 steps as four epochs over 400, and better on
    # every arm (demo v7 against v6, three seeds: macro AUC +0.002 to +0.014; MoLRE +0.010).
    task_studies: int = 1600
    calibration_studies: int = 400
    test_studies: int = 500
    slices: int = 32
    matrix: int = 256
    grid: tuple[int, int, int] = (32, 128, 128)
    # Findings are made this many times more common in the task set, so that each has enough
    # positives in a few hundred studies to learn from; calibration and test are at 1x.
    task_prevalence_scale: float = 4.0
    adapter_epochs: int = 1
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
    # Every arm's head: attention pooling, plus the slice-level head started from the backbone's
    # pretraining head (training.model).
    slice_head: bool = True
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
        slice_head=sizes.slice_head,
        epochs=sizes.adapter_epochs,
        batch_size=sizes.batch_size,
        lr=sizes.lr,
        validation_fraction=0.2,
        patience=3,
        seed=seed,
        **settings,
        **sizes.extra,
    )


def run_demo(
    out: Path,
    repository: Path | None,
    sizes: DemoSizes = DemoSizes(),
    report: Path | None = None,
    weights: Path = DEFAULT_WEIGHTS,
    ceiling: Path | None = None,
    ceiling_run: Path | None = None,
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
    # Every seed is scored on the test set (the fair comparison); the operating points, key
    # slice and router measures read the first seed only, so only it is run on calibration.
    calibration: dict[str, Predictions] = {}
    for arm in sizes.arms:
        for seed in sizes.seeds:
            test[arm].append(predict_detailed(runs[arm][seed], folders["test"], arm))
        calibration[arm] = predict_run(
            runs[arm][sizes.seeds[0]], folders["calibration"], name=arm, batch_size=BATCH
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
    fitted = {a: fit_triage(calibration[a]) for a in order}
    triage = {
        a: triage_at_operating_points(calibration[a], test[a][0].predictions, fitted[a])
        for a in order
    }
    key_slice = {
        a: key_slice_check(
            test[a][0], folders["test"], sizes.grid[0], fitted[a].thresholds, fitted[a].scores
        )
        for a in order
    }
    router = router_dependence(test["molre"][0]) if "molre" in test else {}
    # The reference CNN of a ceiling run on these same studies: what the phantoms allow, read
    # with the same macro AUC and triage rule as the arms.
    reference = (
        ceiling_reference(
            ceiling_run,
            folders["calibration"],
            folders["test"],
            [d.predictions for d in test["molre"]],
            sizes.bootstrap,
        )
        if ceiling_run is not None and "molre" in test
        else None
    )
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
        "ceiling_same_studies": reference,
        "per_category_macro_auc": {a: metrics["runs"][a]["per_category_macro_auc"] for a in order},
        "stages": stages,
        # Each run's own training time (its steps x its measured seconds per step): the stage
        # times above are this invocation's, a few seconds where a run was already complete.
        "training_s": {
            f"{arm}_s{seed}": round(summary["steps"] * summary["seconds_per_step"], 1)
            for arm, by_seed in summaries.items()
            for seed, summary in by_seed.items()
            if summary.get("steps") and summary.get("seconds_per_step")
        },
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
        "critical_triage": data.get("critical_triage"),
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
        "--ceiling-run",
        type=Path,
        default=None,
        help="A headct ceiling run folder: its reference CNN is read on the same test studies.",
    )
    parser.add_argument(
        "--seeds", type=int, default=1, help="Seeds per arm (3 for the comparison)."
    )
    parser.add_argument("--arms", default="probe,lora,lora_matched,molre")
    parser.add_argument("--router", default="per_layer", choices=ROUTERS, help="MoLRE's router.")
    parser.add_argument(
        "--task-studies",
        type=int,
        default=None,
        help=f"Task (training) studies to synthesise (default {DemoSizes().task_studies}).",
    )
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument(
        "--slice-head",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Every arm adds the slice-level head (--no-slice-head: attention pooling only).",
    )
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
        slice_head=args.slice_head,
    )
    if args.epochs:
        sizes = replace(sizes, adapter_epochs=args.epochs)
    if args.task_studies:
        sizes = replace(sizes, task_studies=args.task_studies)
    summary = run_demo(
        args.out,
        None if args.no_export else args.repository,
        sizes,
        report=args.report,
        weights=args.weights,
        ceiling=args.ceiling,
        ceiling_run=args.ceiling_run,
    )
    print((args.report / "three_way.md").read_text())
    del summary


if __name__ == "__main__":
    main()
