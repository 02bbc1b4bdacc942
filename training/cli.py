"""The ``headct`` command line: the serving commands from ``service.cli`` plus the offline ones.

Training commands import their heavy dependencies when they run, so ``headct inspect`` and
``headct serve`` stay fast and work on a gateway install without torch.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from service.cli import app

__all__ = ["app"]


class SliceOrder(StrEnum):
    ASCENDING = "ascending"
    DESCENDING = "descending"
    SHUFFLED = "shuffled"


class Compression(StrEnum):
    NONE = "none"
    RLE = "rle"
    JPEG2000 = "jpeg2000"


class ThresholdPolicy(StrEnum):
    PRIORITY = "priority"
    PER_FINDING = "per-finding"


class PixelRepresentation(StrEnum):
    UNSIGNED = "unsigned"
    SIGNED = "signed"


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder to write the studies and labels.csv into.")],
    studies: Annotated[int, typer.Option(min=1, help="Number of studies.")] = 10,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same data.")] = 0,
    slices: Annotated[int, typer.Option(min=4, help="Slices of the main axial series.")] = 32,
    matrix: Annotated[int, typer.Option(min=64, help="Rows and columns per slice.")] = 256,
    slice_thickness_mm: Annotated[float, typer.Option(min=0.5, help="Slice thickness.")] = 5.0,
    slice_order: Annotated[
        SliceOrder, typer.Option(help="Order the files are written in.")
    ] = SliceOrder.ASCENDING,
    compression: Annotated[
        Compression, typer.Option(help="Lossless compression of the pixel data.")
    ] = Compression.NONE,
    pixel_representation: Annotated[
        PixelRepresentation,
        typer.Option(help="unsigned: stored HU+1024 with intercept -1024; signed: stored HU."),
    ] = PixelRepresentation.UNSIGNED,
    extra_series: Annotated[
        bool, typer.Option(help="Also write a localizer, a thin and a bone-kernel series.")
    ] = False,
    prevalence_scale: Annotated[
        float, typer.Option(min=0.0, help="Multiplies every finding's prevalence.")
    ] = 1.0,
) -> None:
    """Write SYNTHETIC head CT studies (DICOM phantoms, no patients) with labels and annotations."""
    from synth import SynthOptions, synthesize

    options = SynthOptions(
        slices=slices,
        matrix=matrix,
        slice_thickness_mm=slice_thickness_mm,
        slice_order=slice_order.value,
        compression=compression.value,
        pixel_representation=pixel_representation.value,
        extra_series=extra_series,
        prevalence_scale=prevalence_scale,
    )
    labels = synthesize(out, studies=studies, seed=seed, options=options)
    typer.echo(f"wrote {studies} synthetic studies; labels in {labels}")


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Folder of studies with labels.csv.")],
    out: Annotated[Path, typer.Option(help="Run folder (config, checkpoints, metrics log).")],
    backbone: Annotated[str, typer.Option(help="Registered backbone name.")] = "tiny_dinov2",
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Backbone checkpoint: a local save_pretrained folder, or a hub model id "
            "(owner/name) fetched into or read from the Hugging Face cache."
        ),
    ] = None,
    adapter: Annotated[str, typer.Option(help="probe, lora, molre or full.")] = "molre",
    experts: Annotated[int | None, typer.Option(help="MoLRE experts K (default 4).")] = None,
    rank: Annotated[int | None, typer.Option(help="LoRA rank r per expert (default 2).")] = None,
    alpha: Annotated[float | None, typer.Option(help="LoRA alpha; scale alpha/r.")] = None,
    load_balancing: Annotated[float, typer.Option(help="Router load-balancing weight.")] = 0.0,
    router_lr_scale: Annotated[
        float, typer.Option(min=0.0, help="Routers learn at lr times this.")
    ] = 1.0,
    depth: Annotated[int, typer.Option(help="Grid slices.")] = 32,
    size: Annotated[int, typer.Option(help="Grid rows = columns.")] = 256,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 2,
    grad_accumulation: Annotated[int, typer.Option(min=1)] = 1,
    lr: Annotated[float, typer.Option(help="Peak learning rate (warm-up, then cosine).")] = 1e-3,
    loss: Annotated[str, typer.Option(help="focal or bce.")] = "focal",
    validation_fraction: Annotated[float, typer.Option()] = 0.2,
    patience: Annotated[int, typer.Option(help="Epochs without improvement before stopping.")] = 5,
    seed: Annotated[int, typer.Option()] = 0,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    augment: Annotated[bool, typer.Option(help="Flips, rotations, jitter, slice dropout.")] = True,
    workers: Annotated[int, typer.Option(help="Data loader worker processes.")] = 0,
) -> None:
    """Train MoLRE (or a baseline) on DICOM studies; resumes if OUT holds a last.pt.

    Multi-GPU: torchrun --standalone --nproc_per_node N -m training.cli train ...
    """
    import logging

    from training.train import TrainConfig
    from training.train import train as run_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    given = {
        "experts": experts,
        "rank": rank,
        "alpha": alpha,
        "load_balancing_weight": load_balancing,
    }
    molre = {k: v for k, v in given.items() if v}
    try:
        config = TrainConfig(
            data=str(data),
            out=str(out),
            backbone=backbone,
            weights=str(weights) if weights else None,
            adapter=adapter,
            molre=molre,
            grid=(depth, size, size),
            epochs=epochs,
            batch_size=batch_size,
            grad_accumulation=grad_accumulation,
            lr=lr,
            router_lr_scale=router_lr_scale,
            loss=loss,
            validation_fraction=validation_fraction,
            patience=patience,
            seed=seed,
            max_steps=max_steps,
            augment=augment,
            workers=workers,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    summary = run_training(config)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary
        typer.echo(json.dumps(summary, indent=2))


@app.command()
def evaluate(
    runs: Annotated[
        list[Path], typer.Argument(help="Run folders to evaluate (first two are compared).")
    ],
    data: Annotated[Path, typer.Option(help="Evaluation studies with labels.csv.")],
    out: Annotated[Path, typer.Option(help="Folder for metrics.json, report.md and figures.")],
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples for the 95% interval.")
    ] = 1000,
    notes: Annotated[str, typer.Option(help="Text at the top of report.md.")] = "",
) -> None:
    """Per-finding AUC, macro AUC with a bootstrap 95% interval, stratified counts, radar, ROC and
    router plots for one or more trained runs on the same studies."""
    from training.evaluation_run import evaluate_runs

    metrics = evaluate_runs(runs, data, out, bootstrap=bootstrap, notes=notes)
    summary = {name: m.get("macro_auc") for name, m in metrics.get("runs", metrics).items()}
    typer.echo(json.dumps(summary, indent=2))


@app.command()
def export(
    run: Annotated[Path, typer.Option(help="Run folder (config.json, best.pt) from headct train.")],
    repository: Annotated[
        Path, typer.Option(help="Triton model repository to add the new version to.")
    ] = Path("model_repository"),
    name: Annotated[str, typer.Option(help="Model folder and Triton name.")] = "headct_molre",
    version: Annotated[
        int | None, typer.Option(min=1, help="Version folder; default: the next free number.")
    ] = None,
    validation_data: Annotated[
        Path | None,
        typer.Option(
            help="Studies with labels.csv for the parity check, thresholds, router reference and "
            "the variants' AUC change (the run's own validation split if it is the run's training "
            "folder). Default: synthetic volumes and the run's validation_predictions.npz."
        ),
    ] = None,
    fp16: Annotated[bool, typer.Option(help="Also write model.fp16.onnx (for GPUs).")] = False,
    int8: Annotated[bool, typer.Option(help="Also write model.int8.onnx (for CPUs).")] = False,
    training_data: Annotated[
        str | None, typer.Option(help="What the model was trained on, for the model card.")
    ] = None,
    synthetic: Annotated[
        bool,
        typer.Option(help="Trained on synthetic phantoms: the card says not for clinical use."),
    ] = True,
    triton_env: Annotated[
        str,
        typer.Option(help="EXECUTION_ENV_PATH of the python-backend model (the Triton venv)."),
    ] = "$$TRITON_MODEL_DIRECTORY/../../.venv-triton",
    thresholds: Annotated[
        ThresholdPolicy,
        typer.Option(
            help="priority: thresholds chosen for the study-level priority (critical >= 0.95 "
            "sensitivity, urgent >= 0.90) on the validation data, which should be drawn at "
            "clinical prevalence; per-finding: each critical finding at 0.95 sensitivity."
        ),
    ] = ThresholdPolicy.PRIORITY,
) -> None:
    """Export a trained run to ONNX, check it against PyTorch, and publish it as a new version in
    a Triton model repository, with its model card and both config.pbtxt files."""
    import logging

    from training.export import ExportError, export_run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for chatty in ("onnxscript", "onnx_ir"):  # one line per folded constant at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    try:
        result = export_run(
            run,
            repository,
            name=name,
            version=version,
            validation_data=validation_data,
            fp16=fp16,
            int8=int8,
            training_data=training_data,
            synthetic=synthetic,
            execution_env=triton_env,
            threshold_policy=thresholds.value,
        )
    except ExportError as exc:
        typer.echo(f"export failed: {exc}", err=True)
        raise typer.Exit(1) from None
    summary = {
        "model": str(result.version.model),
        "version": result.card.version,
        "metrics": result.card.provenance.metrics,
    }
    typer.echo(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app()


@app.command()
def pretrain(
    out: Annotated[Path, typer.Option(help="Run folder; run again to resume from last.pt.")],
    backbone: Annotated[str, typer.Option(help="Registered backbone name.")] = "demo_vit",
    steps: Annotated[int, typer.Option(min=1, help="Steps the schedule spans.")] = 20000,
    max_minutes: Annotated[
        float | None, typer.Option(help="Stop (with a checkpoint) after this long.")
    ] = None,
    workers: Annotated[int, typer.Option(min=0, help="Phantom generator processes.")] = 1,
    threads: Annotated[int, typer.Option(min=0, help="Torch threads (0: default).")] = 0,
    studies_per_step: Annotated[float, typer.Option(help="Fresh studies per step.")] = 2.0,
    seed: Annotated[int, typer.Option(help="Seed of the study streams and the model.")] = 0,
    export: Annotated[
        Path | None,
        typer.Option(help="After training, write the backbone (fp16 save_pretrained) here."),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="A folder --export wrote (e.g. training/weights/demo_vit): continue that "
            "backbone where OUT has no checkpoint yet (another machine, a later session)."
        ),
    ] = None,
) -> None:
    """Pretrain a stand-in foundation backbone on phantoms streamed from the generator, with
    slice-level targets on half of the findings (SYNTHETIC data; resumable)."""
    import logging

    from training.pretrain import PretrainConfig, export_weights
    from training.pretrain import pretrain as run_pretrain

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = PretrainConfig(
        out=str(out),
        backbone=backbone,
        steps=steps,
        workers=workers,
        threads=threads,
        studies_per_step=studies_per_step,
        seed=seed,
    )
    result = run_pretrain(
        config,
        max_seconds=None if max_minutes is None else 60 * max_minutes,
        init_from=init_from,
    )
    typer.echo(json.dumps(result))
    if export is not None:
        card = export_weights(out, export)
        typer.echo(f"wrote {export} (step {card['steps']})")


@app.command()
def ceiling(
    out: Annotated[Path, typer.Option(help="Run folder; ceiling.json and ceiling.md go here.")],
    steps: Annotated[int, typer.Option(min=1, help="The fixed training budget in steps.")] = 1500,
    workers: Annotated[int, typer.Option(min=0, help="Phantom generator processes.")] = 1,
    threads: Annotated[int, typer.Option(min=0, help="Torch threads (0: default).")] = 0,
) -> None:
    """Measure what the phantoms allow: a reference CNN (not the product) trained with
    slice-level targets on all 75 findings at the model grid, per-finding study AUC (SYNTHETIC)."""
    import logging

    from training.ceiling import ceiling_config, run_ceiling

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    summary = run_ceiling(ceiling_config(out, steps=steps, workers=workers, threads=threads))
    typer.echo((out / "ceiling.md").read_text())
    typer.echo(f"weak findings: {summary['weak_findings']}")
