"""The serving side of the ``headct`` command line (``inspect`` now; ``serve`` and ``triage`` join
when the gateway exists). ``training.cli`` adds the training commands to the same app."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from service.errors import IngestError
from service.ingest import ingest_study
from service.preprocess import ModelGrid
from service.series import SelectionRules

app = typer.Typer(
    name="headct",
    help="Head CT triage with a Mixture of Low-Rank Experts. The bundled demo model is trained "
    "on synthetic phantoms and is not for clinical use.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_json(payload: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(payload, indent=2) + "\n")


@app.command()
def inspect(
    paths: Annotated[
        list[Path], typer.Argument(help="A study folder, DICOM files, or a zip of a study.")
    ],
    depth: Annotated[int, typer.Option(help="Slices of the model grid.")] = 32,
    height: Annotated[int, typer.Option(help="Rows of the model grid.")] = 256,
    width: Annotated[int, typer.Option(help="Columns of the model grid.")] = 256,
    fov_mm: Annotated[
        float | None, typer.Option(help="In-plane field of view; default: the image's own.")
    ] = None,
    min_slices: Annotated[int, typer.Option(help="Fewest slices a series may have.")] = 16,
    target_thickness_mm: Annotated[float, typer.Option(help="Preferred slice thickness.")] = 5.0,
) -> None:
    """Show the series of a study, the one chosen for triage and why, and the resulting grid.

    Prints JSON. Exits 2 with the error (its code and reasons per series) if the study is not a
    usable head CT.
    """
    try:
        grid = ModelGrid(depth=depth, height=height, width=width, fov_mm=fov_mm)
        rules = SelectionRules(min_slices=min_slices, target_thickness_mm=target_thickness_mm)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    try:
        result = ingest_study(paths, grid=grid, rules=rules)
    except IngestError as exc:
        _print_json({"error": exc.to_dict()})
        raise typer.Exit(code=2) from None
    _print_json(result.describe())
