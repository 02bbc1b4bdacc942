"""Ventricles, deep grey nuclei, basal cisterns, brainstem and the physiological calcifications.

The ventricle shapes are functions of a ``VentricleShape`` so findings can redraw them larger
(hydrocephalus, atrophy, a trapped ventricle) or smaller (mass effect, edema).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synth.anatomy import Anatomy, Tissue, paint, paint_ellipsoid
from synth.geometry import Box, Grid, ellipsoid


@dataclass(frozen=True)
class VentricleShape:
    """Size parameters of the lateral ventricles of one side (1.0 = this head's normal)."""

    body: float = 1.0
    temporal: float = 1.0
    occipital: float = 1.0
    spread_mm: float = 0.0  # extra lateral position (callosal agenesis: parallel ventricles)


def lateral_ventricle(box: Box, side: int, shape: VentricleShape) -> np.ndarray:
    """Mask of one lateral ventricle: frontal horn, body, atrium, occipital and temporal horns."""
    hw = 4.6 * shape.body
    medial = 1.2 + shape.spread_mm
    u = box.u * side
    divergence = 0.12 * (box.v + 20.0) * (shape.spread_mm == 0)
    body_u = u - (medial + hw + divergence)
    frontal = ((u - medial - hw) / hw) ** 2 + ((box.v + 19.0) / 11.0) ** 2 + (
        (box.z - 7.0) / 8.0
    ) ** 2 < 1.0
    body = (body_u / (0.9 * hw)) ** 2 + ((box.v + 1.0) / 22.0) ** 2 + ((box.z - 15.0) / 6.5) ** 2
    atrium_u = 15.0 + shape.spread_mm + hw
    occ = shape.occipital
    atrium = (
        ((u - atrium_u) / (1.3 * hw * occ**0.5)) ** 2
        + ((box.v - 25.0) / 11.0) ** 2
        + ((box.z - 8.0) / 8.0) ** 2
    )
    occipital = (
        ((u - atrium_u - 3.0) / (0.6 * hw * occ)) ** 2
        + ((box.v - 38.0) / (10.0 * occ**0.5)) ** 2
        + ((box.z - 6.0) / 4.5) ** 2
    )
    t = shape.temporal
    temporal = (
        ((u - 30.0 - 0.5 * shape.spread_mm) / (2.3 * t)) ** 2
        + ((box.v + 3.0) / 12.0) ** 2
        + ((box.z + 15.0) / (3.0 * t**0.7)) ** 2
    )
    mask = (frontal | (body < 1.0)) & (u > medial)
    return mask | (atrium < 1.0) | (occipital < 1.0) | (temporal < 1.0)


def lateral_ventricle_box(grid: Grid, side: int, shape: VentricleShape) -> Box | None:
    """A box holding one lateral ventricle of this shape."""
    grow = max(shape.body, shape.temporal, shape.occipital)
    half = (26.0 + 6.0 * grow + shape.spread_mm, 44.0 + 6.0 * grow, 26.0 + 4.0 * grow)
    return grid.box((side * 22.0, -10.0, 6.0), half)


def third_ventricle(box: Box, width: float) -> np.ndarray:
    return ellipsoid(box, (0.0, 2.0, -3.0), (2.0 * width, 13.0, 8.0 + 1.5 * (width - 1))) < 1.0


def fourth_ventricle(box: Box, size: float) -> np.ndarray:
    return ellipsoid(box, (0.0, 24.0, -37.0), (6.0 * size, 4.5 * size, 7.0)) < 1.0


def draw_deep_structures(tissue: np.ndarray, grid: Grid, anat: Anatomy) -> None:
    size = anat.ventricle_size
    hw = 4.6 * size
    for side in (-1, 1):
        paint_ellipsoid(tissue, grid, (side * 22.0, -2.0, -2.0), (6.0, 14.0, 9.5), Tissue.DEEP_GM)
        paint_ellipsoid(tissue, grid, (side * 9.5, 10.0, 0.0), (7.5, 11.0, 8.5), Tissue.DEEP_GM)
        caudate_u = side * (1.2 + 2 * hw + 3.0)
        paint_ellipsoid(tissue, grid, (caudate_u, -17.0, 7.0), (4.5, 8.0, 9.0), Tissue.DEEP_GM)
        shape = VentricleShape(body=size, temporal=size, occipital=size)
        box = lateral_ventricle_box(grid, side, shape)
        if box is not None:
            paint(tissue, box, lateral_ventricle(box, side, shape), Tissue.VENTRICLE)
    box = grid.box((0.0, 2.0, -3.0), (4.0, 14.0, 10.0))
    if box is not None:
        paint(tissue, box, third_ventricle(box, size), Tissue.VENTRICLE)
    # basal cisterns around the midbrain, the pons and medulla in front of the fourth ventricle
    paint_ellipsoid(tissue, grid, (0.0, -10.0, -17.0), (12.0, 8.0, 4.5), Tissue.CISTERN)
    paint_ellipsoid(tissue, grid, (0.0, 7.0, -14.0), (13.5, 13.0, 8.0), Tissue.CISTERN)
    paint_ellipsoid(tissue, grid, (0.0, 22.0, -8.0), (9.0, 5.0, 5.0), Tissue.CISTERN)
    paint_ellipsoid(tissue, grid, (0.0, 8.0, -14.0), (10.5, 9.5, 8.0), Tissue.BRAINSTEM)
    paint_ellipsoid(tissue, grid, (0.0, -3.0, -15.0), (2.5, 3.5, 6.0), Tissue.CISTERN)
    paint_ellipsoid(tissue, grid, (0.0, -4.0, -34.0), (9.0, 4.5, 11.0), Tissue.CISTERN)
    paint_ellipsoid(tissue, grid, (0.0, 7.0, -34.0), (13.5, 11.0, 11.0), Tissue.BRAINSTEM)
    paint_ellipsoid(tissue, grid, (0.0, 15.0, -53.0), (8.0, 8.0, 11.0), Tissue.BRAINSTEM)
    paint_ellipsoid(tissue, grid, (0.0, 50.0, -56.0), (12.0, 10.0, 7.0), Tissue.CISTERN)
    for side in (-1, 1):
        paint_ellipsoid(
            tissue,
            grid,
            (side * 20.0, 40.0, -36.0),
            (11.0, 12.0, 9.0),
            Tissue.CEREBELLAR_WM,
            only=(Tissue.CEREBELLUM,),
        )
    box = grid.box((0.0, 24.0, -37.0), (8.0, 6.0, 8.0))
    if box is not None:
        paint(tissue, box, fourth_ventricle(box, size), Tissue.VENTRICLE)
    paint_ellipsoid(tissue, grid, (0.0, 12.5, -14.0), (1.3, 1.3, 8.0), Tissue.VENTRICLE)
    paint_ellipsoid(tissue, grid, (0.0, -24.0, -33.5), (6.5, 5.0, 3.5), Tissue.PITUITARY)
    if anat.pineal_calcified:
        z = grid.nearest_slice_z(0.0)
        paint_ellipsoid(tissue, grid, (0.0, 20.0, z), (2.5, 2.5, 2.5), Tissue.CALCIFICATION)
    if anat.choroid_calcified:
        z = grid.nearest_slice_z(8.0)
        for side in (-1, 1):
            center = (side * (17.0 + hw), 26.0, z)
            paint_ellipsoid(tissue, grid, center, (2.5, 3.0, 2.5), Tissue.CALCIFICATION)
