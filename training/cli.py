"""The training commands of ``headct``, registered on ``service.cli``'s app when this module is
imported (``service.cli.main``, the console script, does so when the training package is installed).

Training commands import their heavy dependencies when they run, so ``headct inspect`` and
``headct serve`` stay fast and work on a gateway install without torch; there the training
commands say to install the train extra. Options that are settings of a config dataclass
(``SynthOptions``, ``TrainConfig``, ``MoLREConfig``, ``PretrainConfig``) take their name, type,
default and help from its fields (``training.config_fields``); only the others are declared here.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli import app
from synth import SynthOptions
from training import require_train_extra
from training.ceiling import CEILING_SETTINGS
from training.config import TRAIN_GRID, PretrainConfig, TrainConfig
from training.config_fields import cli_options, config_options
from training.molre import MoLREConfig

__all__ = ["app"]

# The MoLRE fields ``headct train`` exposes, and the option names they go by.
MOLRE_OPTIONS = ("experts", "rank", "alpha", "router", "load_balancing_weight")
MOLRE_RENAMES = {"load_balancing_weight": "load_balancing"}


class ThresholdPolicy(StrEnum):
    STUDY_SCORE = "study-score"
    PRIORITY = "priority"
    PER_FINDING = "per-finding"


@app.command()
@config_options(*cli_options(SynthOptions))
def synth(
    out: Annotated[Path, typer.Option(help="Folder to write the studies and labels.csv into.")],
    studies: Annotated[int, typer.Option(min=1, help="Number of studies.")] = 10,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same data.")] = 0,
    **options: Any,
) -> None:
    """Write SYNTHETIC head CT studies (DICOM phantoms, no patients) with labels and annotations."""
    from service.text import counted
    from synth import synthesize

    try:
        settings = SynthOptions(**options)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    labels = synthesize(out, studies=studies, seed=seed, options=settings)
    typer.echo(
        f"wrote {counted(studies, 'synthetic study', 'synthetic studies')}; labels in {labels}"
    )


@app.command()
@config_options(
    *cli_options(TrainConfig, skip=("molre", "grid")),
    *cli_options(MoLREConfig, MOLRE_OPTIONS, rename=MOLRE_RENAMES),
)
def train(
    depth: Annotated[int, typer.Option(help="Grid slices.")] = TRAIN_GRID[0],
    size: Annotated[int, typer.Option(help="Grid rows = columns.")] = TRAIN_GRID[1],
    **options: Any,
) -> None:
    """Train MoLRE (or a baseline) on DICOM studies; resumes if OUT holds a last.pt.

    Multi-GPU: torchrun --standalone --nproc_per_node N -m training.cli train ...
    """
    require_train_extra("headct train")
    import logging

    from training.runs import training_data_synthetic
    from training.train import train as run_training

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    molre = {name: options.pop(MOLRE_RENAMES.get(name, name)) for name in MOLRE_OPTIONS}
    try:
        config = TrainConfig(**options, molre=MoLREConfig(**molre), grid=(depth, size, size))
        training_data_synthetic(config)  # --no-synthetic on phantoms: refused as an option
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
    require_train_extra("headct evaluate")
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
        bool | None,
        typer.Option(
            help="Whether the model was trained on synthetic phantoms (the card then says not for "
            "clinical use). Default: what the run recorded about its training data; a run that "
            "recorded nothing needs one of the two."
        ),
    ] = None,
    triton_env: Annotated[
        str,
        typer.Option(help="EXECUTION_ENV_PATH of the python-backend model (the Triton venv)."),
    ] = "$$TRITON_MODEL_DIRECTORY/../../.venv-triton",
    thresholds: Annotated[
        ThresholdPolicy,
        typer.Option(
            help="study-score: every finding at a 2% false-positive rate, and a study-level "
            "score per priority level (a logistic regression on the 75 logits) whose threshold "
            "gives critical >= 0.95 and urgent-or-critical >= 0.90 sensitivity out of fold on "
            "the validation data, which should be drawn at clinical prevalence (with under 20 "
            "studies on a side of a level: priority); priority: per-finding thresholds alone, "
            "chosen for those sensitivities; per-finding: each critical finding at 0.95 "
            "sensitivity."
        ),
    ] = ThresholdPolicy.STUDY_SCORE,
) -> None:
    """Export a trained run to ONNX, check it against PyTorch, and publish it as a new version in
    a Triton model repository, with its model card and both config.pbtxt files."""
    require_train_extra("headct export")
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


@app.command()
@config_options(*cli_options(PretrainConfig, skip=("findings",)))
def pretrain(
    max_minutes: Annotated[
        float | None, typer.Option(help="Stop (with a checkpoint) after this long.")
    ] = None,
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
    **options: Any,
) -> None:
    """Pretrain a stand-in foundation backbone on phantoms streamed from the generator, with
    slice-level targets on half of the findings (SYNTHETIC data; resumable)."""
    require_train_extra("headct pretrain")
    import logging

    from training.pretrain import export_weights
    from training.pretrain import pretrain as run_pretrain

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = PretrainConfig(**options)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    result = run_pretrain(
        config,
        max_seconds=None if max_minutes is None else 60 * max_minutes,
        init_from=init_from,
    )
    typer.echo(json.dumps(result))
    if export is not None:
        card = export_weights(Path(config.out), export)
        typer.echo(f"wrote {export} (step {card['steps']})")


@app.command()
@config_options(
    *cli_options(PretrainConfig, ("out", "steps", "workers", "threads"), defaults=CEILING_SETTINGS)
)
def ceiling(**options: Any) -> None:
    """Measure what the phantoms allow: a reference CNN (not the product) trained with
    slice-level targets on all 75 findings at the model grid, per-finding study AUC (SYNTHETIC)."""
    require_train_extra("headct ceiling")
    import logging

    from training.ceiling import ceiling_config, run_ceiling

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = ceiling_config(**options)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    summary = run_ceiling(config)
    typer.echo((Path(config.out) / "ceiling.md").read_text())
    typer.echo(f"weak findings: {summary['weak_findings']}")


if __name__ == "__main__":  # torchrun -m training.cli train ...
    app()
