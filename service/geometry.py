"""Ordering the slices of a series in space and checking that they form one volume.

File order and InstanceNumber are not trusted: slices are sorted by ImagePositionPatient projected
on the slice normal, so slice 0 is the most inferior. Exact duplicates are dropped; gaps,
non-uniform spacing and gantry tilt are detected and reported (the resampling to the model grid
interpolates on the true positions, so uneven spacing is handled; tilt is reported, not corrected).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from service.errors import InconsistentGeometryError
from service.series import Series, SliceRef, require_consistent, slice_normal

# Slices closer than this along the normal are at the same position.
_SAME_POSITION_MM = 1e-3
# Spacing more than this times the median is a gap (a missing slice or more).
_GAP_FACTOR = 1.5
# Spread of spacings beyond this fraction of the median is "non-uniform".
_UNIFORMITY_TOLERANCE = 0.1
# Stack direction this far off the slice normal is gantry tilt.
_TILT_TOLERANCE_DEG = 0.5


@dataclass
class SliceStack:
    """The slices of one series in anatomical order, inferior to superior."""

    series: Series
    slices: list[SliceRef]
    positions_mm: np.ndarray
    normal: np.ndarray
    row_spacing_mm: float
    column_spacing_mm: float
    tilt_deg: float = 0.0
    duplicates_dropped: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def spacing_mm(self) -> float | None:
        if len(self.positions_mm) < 2:
            return None
        return float(np.median(np.diff(self.positions_mm)))


def _same_pixels(a: SliceRef, b: SliceRef) -> bool:
    if a.frame is not None or b.frame is not None:
        return a.dataset is b.dataset and a.frame == b.frame
    return bool(a.dataset.get("PixelData") == b.dataset.get("PixelData"))


def order_slices(series: Series) -> SliceStack:
    """Sort by position along the normal, drop exact duplicates, and describe the spacing."""
    require_consistent(series)
    slices = series.slices
    first = slices[0]
    normal = slice_normal(first.orientation) if first.orientation else np.array([0.0, 0.0, 1.0])
    row_spacing, column_spacing = first.pixel_spacing or (1.0, 1.0)
    warnings = []
    if first.pixel_spacing is None:
        warnings.append("no PixelSpacing: 1 mm assumed")

    if len(slices) == 1:
        return SliceStack(
            series, slices, np.zeros(1), normal, row_spacing, column_spacing, warnings=warnings
        )
    if any(s.position is None for s in slices):
        raise InconsistentGeometryError(
            f"Series {series.number} has slices without ImagePositionPatient: "
            "their order in space cannot be known."
        )
    points = np.array([s.position for s in slices], dtype=np.float64)
    distance = points @ normal
    order = np.argsort(distance, kind="stable")

    kept: list[int] = [int(order[0])]
    dropped = 0
    for index in order[1:]:
        previous = kept[-1]
        if distance[index] - distance[previous] < _SAME_POSITION_MM:
            if _same_pixels(slices[index], slices[previous]):
                dropped += 1
                continue
            raise InconsistentGeometryError(
                f"Series {series.number} has two different images at the same position "
                f"({distance[index]:.2f} mm along the slice normal)."
            )
        kept.append(int(index))
    if dropped:
        warnings.append(f"{dropped} duplicate slice(s) dropped")

    positions = distance[kept]
    stack = SliceStack(
        series=series,
        slices=[slices[i] for i in kept],
        positions_mm=positions,
        normal=normal,
        row_spacing_mm=row_spacing,
        column_spacing_mm=column_spacing,
        duplicates_dropped=dropped,
        warnings=warnings,
    )
    _describe_spacing(stack)
    if len(kept) >= 2:
        direction = points[kept[-1]] - points[kept[0]]
        cosine = abs(float(direction @ normal)) / float(np.linalg.norm(direction))
        stack.tilt_deg = math.degrees(math.acos(min(1.0, cosine)))
        if stack.tilt_deg > _TILT_TOLERANCE_DEG:
            stack.warnings.append(
                f"gantry tilt of {stack.tilt_deg:.1f} degrees: slices are sheared "
                "(reported, not corrected)"
            )
    return stack


def _describe_spacing(stack: SliceStack) -> None:
    if len(stack.positions_mm) < 2:
        return
    steps = np.diff(stack.positions_mm)
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > _GAP_FACTOR * median)
    for i in gaps:
        stack.warnings.append(
            f"gap of {steps[i]:.1f} mm between slices {i} and {i + 1} "
            f"(median spacing {median:.2f} mm)"
        )
    if not len(gaps) and (steps.max() - steps.min()) > _UNIFORMITY_TOLERANCE * median:
        stack.warnings.append(
            f"non-uniform slice spacing ({steps.min():.2f} to {steps.max():.2f} mm)"
        )
