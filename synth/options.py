"""Options of the synthetic study generator (what the ``headct synth`` command exposes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SliceOrder = Literal["ascending", "descending", "shuffled"]
Compression = Literal["none", "rle", "jpeg2000"]
PixelRepresentation = Literal["unsigned", "signed"]


@dataclass(frozen=True)
class SynthOptions:
    slices: int = field(default=32, metadata={"help": "Axial slices in the main series."})
    matrix: int = field(default=256, metadata={"help": "Rows = columns of each slice."})
    slice_thickness_mm: float = field(
        default=5.0, metadata={"help": "Slice thickness of the main series, also its spacing."}
    )
    pixel_spacing_mm: float | None = field(
        default=None, metadata={"help": "In-plane spacing; default a 240 mm field of view."}
    )
    slice_order: SliceOrder = field(
        default="ascending",
        metadata={
            "help": "Order files are named and written in; instance numbers stay "
            "anatomical (1 = most inferior)."
        },
    )
    compression: Compression = field(
        default="none",
        metadata={"help": "Pixel data: uncompressed, RLE Lossless or JPEG 2000 Lossless."},
    )
    pixel_representation: PixelRepresentation = field(
        default="unsigned",
        metadata={
            "help": "unsigned: 12-bit HU+1024, intercept -1024; signed: 16-bit, "
            "intercept 0, -1000 or -1024 (slope 1 or 0.5)."
        },
    )
    extra_series: bool = field(
        default=False,
        metadata={"help": "Also write a localizer, a thin-slice and a bone-kernel series."},
    )
    prevalence_scale: float = field(
        default=1.0, metadata={"help": "Multiplies every finding's base prevalence."}
    )

    def __post_init__(self) -> None:
        if self.slices < 4:
            raise ValueError(f"slices={self.slices}: need at least 4 slices")
        if self.matrix < 32:
            raise ValueError(f"matrix={self.matrix}: need at least 32 rows and columns")
        if self.slice_thickness_mm <= 0:
            raise ValueError(f"slice_thickness_mm={self.slice_thickness_mm}: must be positive")
        if self.pixel_spacing_mm is not None and self.pixel_spacing_mm <= 0:
            raise ValueError(f"pixel_spacing_mm={self.pixel_spacing_mm}: positive, or None")
        if self.slice_order not in ("ascending", "descending", "shuffled"):
            raise ValueError(f"slice_order={self.slice_order!r}: ascending/descending/shuffled")
        if self.compression not in ("none", "rle", "jpeg2000"):
            raise ValueError(f"compression={self.compression!r}: none, rle or jpeg2000")
        if self.pixel_representation not in ("unsigned", "signed"):
            raise ValueError(
                f"pixel_representation={self.pixel_representation!r}: unsigned or signed"
            )
        if self.prevalence_scale < 0:
            raise ValueError(f"prevalence_scale={self.prevalence_scale}: must be >= 0")

    @property
    def spacing_mm(self) -> float:
        """In-plane pixel spacing actually used."""
        return self.pixel_spacing_mm if self.pixel_spacing_mm is not None else 240.0 / self.matrix
