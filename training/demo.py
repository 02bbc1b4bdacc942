"""The demo model, rebuilt from nothing by one command: ``python -m training.demo``.

1. Synthesise three sets of phantom studies (pretraining, task, held-out test).
2. Pretrain the small ``demo_dinov2`` backbone from scratch (adapter ``full``) on the pretraining
   set with only part of the findings labelled: it stands in for a foundation model, which cannot
   be downloaded here, and the findings it never saw are what adaptation must add.
3. Freeze it, and train a linear probe, LoRA and MoLRE on all 75 findings of the task set.
4. Evaluate the three on the held-out test set (metrics.json, report.md, radar, ROC, router),
   plus the three-way table (macro AUC with 95% interval, added parameters, step time) and the
   key-slice check: for positive studies, how often the slice with the highest attention lies in
   an annotated lesion.
5. Export MoLRE into the model repository (a new version of ``headct_molre``).

Everything is SYNTHETIC: the model is a demonstration, not for clinical use.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.findings import FINDING_CODES
from training.evaluation_run import predict_run
from training.report import write_report
from training.synth import SynthOptions, synthesize
from training.train import TrainConfig, load_run, train

log = logging.getLogger(__name__)

SYNTHETIC_NOTE = (
    "Synthetic phantoms made by `headct synth`: not patient data. The demo model is a "
    "demonstration, not for clinical use."
)
BACKBONE = "demo_dinov2"
# The backbone is pretrained on every other finding; the rest are new to it.
PRETRAINING_FINDINGS = frozenset(FINDING_CODES[::2])


@dataclass(frozen=True)
class DemoSizes:
    pretrain_studies: int = 600
    task_studies: int = 500
    test_studies: int = 200
    slices: int = 32
    matrix: int = 256
    grid: tuple[int, int, int] = (32, 128, 128)
    # Findings are made this many times more common than their clinical prevalence, so that each
    # has enough positives in a few hundred studies to learn and to measure an AUC on.
    prevalence_scale: float = 4.0
    pretrain_epochs: int = 10
    adapter_epochs: int = 8
    batch_size: int = 4
    bootstrap: int = 1000


QUICK = DemoSizes(
    pretrain_studies=12,
    task_studies=16,
    test_studies=8,
    slices=16,
    matrix=64,
    grid=(16, 32, 32),
    pretrain_epochs=1,
    adapter_epochs=1,
    batch_size=4,
    prevalence_scale=4.0,
    bootstrap=20,
)


def _mask_unseen_findings(labels_csv: Path) -> None:
    """Blank (unknown) every finding outside PRETRAINING_FINDINGS in a labels.csv."""
    with labels_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
        columns = list(rows[0])
    for row in rows:
        for code in FINDING_CODES:
            if code not in PRETRAINING_FINDINGS:
                row[code] = ""
    with labels_csv.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _already_synthesized(folder: Path, count: int, options: SynthOptions) -> bool:
    """A set from an earlier run is reused only if it has the same size and options."""
    try:
        annotations = json.loads((folder / "annotations.json").read_text())
        rows = (folder / "labels.csv").read_text().splitlines()
    except (OSError, ValueError):
        return False
    return len(rows) - 1 == count and annotations.get("options") == asdict(options)


def _synthesize(out: Path, sizes: DemoSizes) -> dict[str, Path]:
    options = SynthOptions(
        slices=sizes.slices, matrix=sizes.matrix, prevalence_scale=sizes.prevalence_scale
    )
    sets = {
        "pretrain": (sizes.pretrain_studies, 11),
        "task": (sizes.task_studies, 22),
        "test": (sizes.test_studies, 33),
    }
    folders = {}
    for name, (count, seed) in sets.items():
        folder = out / "data" / name
        if not _already_synthesized(folder, count, options):
            if folder.exists():
                shutil.rmtree(folder)
            synthesize(folder, studies=count, seed=seed, options=options)
        folders[name] = folder
    _mask_unseen_findings(folders["pretrain"] / "labels.csv")
    return folders


def _train(data: Path, out: Path, sizes: DemoSizes, **overrides: Any) -> dict[str, Any]:
    config = TrainConfig(
        data=str(data),
        out=str(out),
        backbone=BACKBONE,
        grid=sizes.grid,
        batch_size=sizes.batch_size,
        validation_fraction=0.2,
        patience=3,
        seed=0,
        **overrides,
    )
    summary = train(config)
    return summary


def key_slice_check(run: Path, test: Path) -> dict[str, float]:
    """For positive test studies: how often the highest-attention slice lies inside an annotated
    lesion of one of the study's focal findings (those covering under half of the slices), against
    the chance rate of a random slice."""
    from torch.utils.data import DataLoader

    from service.preprocess import ModelGrid
    from training.data import build_cache, read_labels
    from training.dataset import CachedStudyDataset

    model, config = load_run(run)
    grid = ModelGrid(*config["grid"])
    annotations = json.loads((test / "annotations.json").read_text())
    source_slices = int(annotations["options"]["slices"])
    studies, _ = build_cache(read_labels(test), test / ".cache", grid)
    hits, chance, counted = 0, 0.0, 0
    loader = DataLoader(CachedStudyDataset(studies), batch_size=4)
    with torch.no_grad():
        for volume, _, index in loader:
            attention = model(volume).slice_attention.numpy()
            for row, i in zip(attention, index.tolist(), strict=True):
                lesions = annotations.get(studies[i].record.study_uid, {})
                focal = [s for s in lesions.values() if len(s) < source_slices / 2]
                if not focal:
                    continue
                inside = {int(x) for s in focal for x in s}
                # Grid slices span the series' first to last slice: map the key slice back.
                key = round(int(np.argmax(row)) * (source_slices - 1) / max(grid.depth - 1, 1))
                hits += key in inside
                chance += len(inside) / source_slices
                counted += 1
    return {
        "studies": counted,
        "key_slice_in_lesion": hits / counted if counted else float("nan"),
        "chance": chance / counted if counted else float("nan"),
    }


def run_demo(
    out: Path, repository: Path | None, sizes: DemoSizes = DemoSizes(), report: Path | None = None
) -> dict[str, Any]:
    started = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    folders = _synthesize(out, sizes)
    stages: dict[str, float] = {"synthesize_s": time.perf_counter() - started}

    tick = time.perf_counter()
    pretrain_run = out / "runs" / "pretrain"
    _train(
        folders["pretrain"],
        pretrain_run,
        sizes,
        adapter="full",
        epochs=sizes.pretrain_epochs,
        lr=1e-3,
        backbone_lr=1e-3,  # from scratch: the backbone learns at the head's rate
    )
    backbone_dir = out / "backbone"
    pretrained, _ = load_run(pretrain_run)
    if backbone_dir.exists():
        shutil.rmtree(backbone_dir)
    pretrained.backbone.save_pretrained(backbone_dir)
    stages["pretrain_s"] = time.perf_counter() - tick

    summaries: dict[str, dict[str, Any]] = {}
    runs: dict[str, Path] = {}
    for adapter in ("probe", "lora", "molre"):
        tick = time.perf_counter()
        runs[adapter] = out / "runs" / adapter
        summaries[adapter] = _train(
            folders["task"],
            runs[adapter],
            sizes,
            adapter=adapter,
            weights=str(backbone_dir),
            epochs=sizes.adapter_epochs,
            lr=2e-3,
        )
        stages[f"{adapter}_s"] = time.perf_counter() - tick

    tick = time.perf_counter()
    report = report or out / "report"
    predictions = [predict_run(runs[a], folders["test"]) for a in ("molre", "lora", "probe")]
    metrics = write_report(
        predictions,
        report,
        bootstrap=sizes.bootstrap,
        title="Demo model on synthetic head CT phantoms: MoLRE vs LoRA vs linear probe",
        notes=SYNTHETIC_NOTE,
    )
    key_slice = key_slice_check(runs["molre"], folders["test"])
    stages["evaluate_s"] = time.perf_counter() - tick

    export = None
    if repository is not None:
        from training.export import export_run

        tick = time.perf_counter()
        result = export_run(
            runs["molre"],
            repository,
            validation_data=folders["task"],
            int8=True,
            training_data=(
                f"{sizes.task_studies} synthetic phantom studies from `headct synth` (seed 22), "
                f"backbone pretrained from scratch on {sizes.pretrain_studies} more (seed 11); "
                "not patient data"
            ),
            synthetic=True,
        )
        export = {"version": result.card.version, "path": str(result.version.folder)}
        stages["export_s"] = time.perf_counter() - tick
    stages["total_s"] = time.perf_counter() - started

    summary = _three_way(metrics, summaries, runs)
    summary |= {"key_slice": key_slice, "stages": stages, "export": export, "sizes": sizes.__dict__}
    (report / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    (report / "three_way.md").write_text(_three_way_markdown(summary))
    return summary


def _three_way(
    metrics: dict[str, Any], summaries: dict[str, dict[str, Any]], runs: dict[str, Path]
) -> dict[str, Any]:
    from training.params import count_parameters

    table = {}
    for adapter, run in runs.items():
        model, _ = load_run(run)
        counts = count_parameters(model)
        m = metrics["runs"][adapter]
        table[adapter] = {
            "macro_auc": m["macro_auc"],
            "macro_auc_ci95": m.get("macro_auc_ci95"),
            "strata": m["strata"],
            "added_parameters": counts.added,
            "added_fraction": counts.added_fraction,
            "trainable_parameters": counts.trainable,
            "seconds_per_step": summaries[adapter].get("seconds_per_step"),
            "best_validation_macro_auc": summaries[adapter].get("best_validation_macro_auc"),
        }
    return {"three_way": table}


def _three_way_markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# Demo model: three-way comparison on the held-out synthetic test set",
        "",
        f"> **{SYNTHETIC_NOTE}**",
        "",
        "| adapter | macro AUC [95% CI] | AUC >= 0.90 | 0.80-0.90 | < 0.80 | added params | "
        "added % of backbone | s/step (train) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for adapter, row in summary["three_way"].items():
        ci = row["macro_auc_ci95"] or [float("nan"), float("nan")]
        strata = row["strata"]
        lines.append(
            f"| {adapter} | {row['macro_auc']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] | "
            f"{strata['auc_ge_0.90']} | {strata['auc_0.80_to_0.90']} | {strata['auc_lt_0.80']} | "
            f"{row['added_parameters']:,} | {100 * row['added_fraction']:.2f}% | "
            f"{(row['seconds_per_step'] or float('nan')):.3f} |"
        )
    key = summary["key_slice"]
    lines += [
        "",
        f"Key-slice check (MoLRE): in {key['studies']} test studies with a focal finding, the "
        f"highest-attention slice lay inside an annotated lesion in "
        f"{100 * key['key_slice_in_lesion']:.0f}% of them (a random slice: "
        f"{100 * key['chance']:.0f}%).",
        "",
        "Stage times (s): "
        + ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in summary["stages"].items()),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Rebuild the demo model from nothing.")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--repository", type=Path, default=Path("model_repository"))
    parser.add_argument("--report", type=Path, default=Path("bench/results/demo_model"))
    parser.add_argument("--quick", action="store_true", help="Tiny sizes: a smoke run.")
    parser.add_argument("--no-export", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    summary = run_demo(
        args.out,
        None if args.no_export else args.repository,
        QUICK if args.quick else DemoSizes(),
        report=args.report,
    )
    print(_three_way_markdown(summary))


if __name__ == "__main__":
    main()
