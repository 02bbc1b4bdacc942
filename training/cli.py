"""The ``headct`` command line: the serving commands from ``service.cli`` plus the offline ones.

Training commands import their heavy dependencies when they run, so ``headct inspect`` and
``headct serve`` stay fast and work on a gateway install without torch.
"""

from __future__ import annotations

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
    from training.synth import SynthOptions, synthesize

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
