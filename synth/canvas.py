"""The volume that findings are drawn onto, and the study-level plan they share.

Every edit goes through ``Canvas.relabel`` (change tissue, HU follows) or ``Canvas.paint`` (blend
HU towards a value), and both record the slices where a voxel actually changed under the
finding's code: ``lesion_slices`` is where each finding changed the image, by construction.
Later findings avoid voxels marked ``Tissue.LESION``, so they rarely hide an earlier one.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from service.findings import FINDING_INDEX
from synth.anatomy import Anatomy, Tissue
from synth.geometry import Box, Grid
from synth.phantom import Fields


@dataclass(frozen=True)
class Plan:
    """Decisions several findings must agree on, made once per study."""

    side: int  # +1 patient left, -1 right: hemisphere of the dominant lateralised process
    dominant: str | None  # the lesion causing the mass effect, drawn large
    focus: tuple[float, float, float]  # canonical centre of the mass effect / dominant lesion
    impact_azimuth: float  # degrees, 0 = patient left, 90 = posterior: trauma impact site
    impact_z: float
    territory: str  # vascular territory of the acute stroke: MCA, ACA or PCA
    coverage: str  # "full", "vertex_cut" (top of the head missing) or "base_cut" (bottom)
    coverage_shift_mm: float  # canonical shift of the scan range (negative: downwards)


class Canvas:
    """Tissue labels and HU of one study, the labels to draw, and what was drawn where."""

    def __init__(
        self,
        grid: Grid,
        anatomy: Anatomy,
        tissue: np.ndarray,
        fields: Fields,
        labels: np.ndarray,
        plan: Plan,
        rng: np.random.Generator,
    ) -> None:
        self.grid = grid
        self.anatomy = anatomy
        self.tissue = tissue
        self.fields = fields
        self.labels = labels
        self.plan = plan
        self.rng = rng  # replaced by each finding's own stream while it is drawn
        self.hu = anatomy.hu[tissue]
        self.noise_gain = np.ones(grid.shape[0], dtype=np.float32)
        self.slices: dict[str, set[int]] = defaultdict(set)
        self.collection_sites: list[float] = []  # azimuths taken by extra-axial collections
        # where infarcts were drawn (side, territory, angular fraction), for transformation
        self.infarcts: dict[str, tuple[int, str, tuple[float, float]]] = {}
        # centre and radius of drawn masses, for the edema around them
        self.masses: list[tuple[tuple[float, float, float], float]] = []

    def positive(self, code: str) -> bool:
        return bool(self.labels[FINDING_INDEX[code]])

    def hu_of(self, tissue: Tissue) -> float:
        return float(self.anatomy.hu[tissue])

    def record(self, code: str, box: Box, changed: np.ndarray) -> None:
        """Note the slices of ``box`` where ``changed`` holds anywhere."""
        per_slice = np.broadcast_to(changed, self.tissue[box.index].shape).any(axis=(1, 2))
        self.slices[code].update(int(i) + box.first_slice for i in np.flatnonzero(per_slice))

    def relabel(
        self, code: str, box: Box | None, mask: np.ndarray, tissue: np.ndarray | int
    ) -> None:
        """Set tissue (a value, or an array shaped like the box) where ``mask``; HU follows."""
        if box is None:
            return
        view = self.tissue[box.index]
        mask = np.broadcast_to(mask, view.shape)
        new = np.where(mask, tissue, view).astype(np.uint8)
        changed = new != view
        if not changed.any():
            return
        view[changed] = new[changed]
        self.hu[box.index][changed] = self.anatomy.hu[new[changed]]
        self.record(code, box, changed)

    def paint(
        self,
        code: str,
        box: Box | None,
        weight: np.ndarray,
        value: float | np.ndarray,
        mark: bool = False,
    ) -> None:
        """Blend HU towards ``value`` by ``weight`` (0..1, or a mask). With ``mark`` the voxels
        mostly painted become ``Tissue.LESION`` so later findings leave them alone."""
        if box is None:
            return
        view = self.hu[box.index]
        w = np.broadcast_to(np.asarray(weight, dtype=np.float32), view.shape)
        new = view + w * (np.asarray(value, dtype=np.float32) - view)
        changed = np.abs(new - view) > 0.25
        if not changed.any():
            return
        view[changed] = new[changed]
        if mark:
            self.tissue[box.index][changed & (w > 0.5)] = Tissue.LESION
        self.record(code, box, changed)

    def in_tissue(self, box: Box, *tissues: Tissue) -> np.ndarray:
        return np.isin(self.tissue[box.index], tissues)

    def uniform(self, low: float, high: float) -> float:
        return float(self.rng.uniform(low, high))

    def choice(self, options: list[str] | tuple[str, ...]) -> str:
        return str(options[int(self.rng.integers(len(options)))])
