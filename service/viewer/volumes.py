"""The model-grid volumes of the gateway's most recent triages, kept in memory for the viewer.

Bounded by a count of studies (``HEADCT_VIEWER_CACHE_STUDIES``; the least recently used leaves
first), keyed by study UID, and gone when the gateway restarts. An entry holds pixel data on the
model grid and its spacing, nothing else: no patient tag is copied in. Each window's PNG sheet is
rendered on its first request and kept with its volume.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from service.contract import HUWindow
from service.errors import StudyImagesNotFoundError
from service.preprocess import GridVolume
from service.viewer.render import SheetLayout, render_sheet


@dataclass
class _Entry:
    hu: np.ndarray  # int16 [D, H, W], slice 0 inferior
    spacing_mm: tuple[float, float, float]
    sheets: dict[str, bytes] = field(default_factory=dict)  # window name -> PNG


@dataclass(frozen=True, slots=True)
class StudyImages:
    """What the viewer needs to cut a study's sheets into slices."""

    layout: SheetLayout
    spacing_mm: tuple[float, float, float]


class RecentVolumes:
    """Thread-safe LRU of study volumes; ``capacity`` 0 keeps nothing."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, study_uid: object) -> bool:
        return study_uid in self._entries

    def keep(self, study_uid: str, volume: GridVolume) -> None:
        """Keep ``volume`` as the study's (a study triaged again replaces its images)."""
        if self.capacity == 0 or not study_uid:
            return
        entry = _Entry(volume.hu, volume.spacing_mm)
        with self._lock:
            self._entries[study_uid] = entry
            self._entries.move_to_end(study_uid)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def images(self, study_uid: str) -> StudyImages:
        entry = self._entry(study_uid)
        return StudyImages(SheetLayout.for_volume(entry.hu.shape), entry.spacing_mm)

    def sheet(self, study_uid: str, window: HUWindow) -> bytes:
        """The study's PNG sheet under ``window``; rendered once, outside the lock (two first
        requests at once may both render: the same bytes)."""
        entry = self._entry(study_uid)
        png = entry.sheets.get(window.name)
        if png is None:
            png = render_sheet(entry.hu, window)
            with self._lock:
                entry.sheets[window.name] = png
        return png

    def _entry(self, study_uid: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(study_uid)
            if entry is not None:
                self._entries.move_to_end(study_uid)
        if entry is None:
            raise StudyImagesNotFoundError(
                "The gateway keeps no images of this study. It keeps those of its "
                f"{self.capacity} most recent triages, in memory until it restarts: "
                "triage the study again to see its slices.",
            )
        return entry
