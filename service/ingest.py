"""DICOM study in, HU volume on the model grid out: the one preprocessing path that training and
serving share (training imports it from here, never the other way round)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from service.dicom_io import StudySource, load_study
from service.geometry import SliceStack, order_slices
from service.preprocess import GridVolume, ModelGrid, to_model_grid
from service.series import SelectionRules, Series, SeriesReport, group_series, select_series


@dataclass
class IngestResult:
    """The chosen series on the model grid, and the account of how it was chosen."""

    study_uid: str
    series_uid: str
    volume: GridVolume
    stack: SliceStack
    reports: list[SeriesReport]
    timing_ms: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # files left out as not DICOM, a line each

    @property
    def warnings(self) -> list[str]:
        """Files left out, then what ordering the slices noticed (gaps, tilt, duplicates)."""
        return [*self.skipped, *self.stack.warnings]

    def drop_pixel_data(self) -> None:
        """Let the source pixels go once they are on the grid (``volume``): the result then
        carries headers only, cheap to hand from a worker process to the one that infers."""
        for dataset in {id(s.dataset): s.dataset for s in self.stack.series.slices}.values():
            if "PixelData" in dataset:
                del dataset.PixelData

    def describe(self) -> dict[str, Any]:
        """A JSON-able account: series found, the one selected and why, the resulting grid."""
        stack, volume = self.stack, self.volume
        selected = next(r for r in self.reports if r.selected)
        skipped = {"skipped": self.skipped} if self.skipped else {}
        return {
            "study_uid": self.study_uid,
            **skipped,
            "series": [r.to_dict() for r in self.reports],
            "selected": {
                "series_uid": self.series_uid,
                "series_number": selected.series_number,
                "reasons": selected.reasons,
                "slices": len(stack.slices),
                "duplicates_dropped": stack.duplicates_dropped,
                "slice_spacing_mm": _round(stack.spacing_mm),
                "pixel_spacing_mm": [_round(stack.row_spacing_mm), _round(stack.column_spacing_mm)],
                "matrix": [stack.slices[0].rows, stack.slices[0].columns],
                "coverage_mm": _round(float(stack.positions_mm[-1] - stack.positions_mm[0])),
                "gantry_tilt_deg": _round(stack.tilt_deg),
                "warnings": stack.warnings,
            },
            "grid": {
                "shape": list(volume.hu.shape),
                "dtype": str(volume.hu.dtype),
                "spacing_mm": [_round(v) for v in volume.spacing_mm],
                "hu_min": int(volume.hu.min()),
                "hu_max": int(volume.hu.max()),
            },
            "timing_ms": {k: round(v, 2) for k, v in self.timing_ms.items()},
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def _study_uid(series: Series) -> str:
    return str(series.slices[0].dataset.get("StudyInstanceUID") or "")


def _carry_on() -> None:
    """The default checkpoint: nothing stops the work."""


def ingest_study(
    sources: Iterable[StudySource],
    grid: ModelGrid | None = None,
    rules: SelectionRules | None = None,
    checkpoint: Callable[[], None] | None = None,
) -> IngestResult:
    """Read, group, select, order, decode and resample a study. Raises an ``IngestError``
    subclass with a stable code for anything that is not a usable head CT. ``checkpoint`` is
    called before each file and each stage; it raises to stop the work (a deadline passed, the
    client left)."""
    grid = grid or ModelGrid()
    rules = rules or SelectionRules()
    check = checkpoint or _carry_on
    t0 = time.perf_counter()
    study = load_study(sources, check)
    check()
    t1 = time.perf_counter()
    chosen, reports = select_series(group_series(study.files), rules)
    stack = order_slices(chosen)
    check()
    t2 = time.perf_counter()
    volume = to_model_grid(stack, grid)
    t3 = time.perf_counter()
    return IngestResult(
        study_uid=_study_uid(chosen),
        series_uid=chosen.uid,
        volume=volume,
        stack=stack,
        reports=reports,
        timing_ms={"read": (t1 - t0) * 1e3, "select": (t2 - t1) * 1e3, "resample": (t3 - t2) * 1e3},
        skipped=study.warnings,
    )
