"""A normal head rendered as a tissue-label volume, and the distance fields lesions draw with.

The head is an ellipsoid (scalp, a skull with inner and outer tables and diploe) whose cavity is
cut by the skull-base floor (see ``skull_base``). Inside: a cortical ribbon with sulci, white
matter, the interhemispheric and sylvian fissures with the falx, the tentorium, the cerebellum
with its folia, and the deep structures (see ``ventricles``). Everything is vectorised numpy
over the head's bounding box or over small boxes, so a 32x256x256 study renders in well under
0.1 s. ``label_cerebrum`` and ``label_cerebellum`` are reused by findings that redraw the cortex
with changed sulci or surface (atrophy, edema, a brain pushed in by a collection).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from synth.anatomy import Anatomy, Tissue, paint
from synth.geometry import Box, Grid
from synth.skull_base import draw_face, floor_height, tentorium_z
from synth.ventricles import draw_deep_structures


@dataclass(frozen=True, eq=False)
class Fields:
    """Distances that lesions draw with (canonical mm, full grid)."""

    inner: np.ndarray  # depth below the inner table (negative in bone and scalp)
    brain: np.ndarray  # depth below the brain surface (negative in the subarachnoid space)
    sulcal: np.ndarray  # distance from the nearest sulcus centre line
    sulcal_reach: np.ndarray  # [h, w] how deep the sulci at each azimuth reach
    floor: np.ndarray  # [h, w] height of the skull-base floor


# --- rendering ------------------------------------------------------------------------------


def render(grid: Grid, anat: Anatomy) -> tuple[np.ndarray, Fields]:
    """The tissue-label volume of a normal head on ``grid``, and the distance fields.

    Distances are computed only inside the head's bounding box; outside it is air."""
    a, b, c_up, c_down = anat.outer
    head = grid.box((0.0, 0.0, 0.0), (a + 2.0, b + 2.0, 1000.0))
    tissue = np.zeros(grid.shape, dtype=np.uint8)
    inner_full = np.full(grid.shape, -100.0, dtype=np.float32)
    brain_full = np.full(grid.shape, -100.0, dtype=np.float32)
    sulcal_full = np.full(grid.shape, np.inf, dtype=np.float32)
    cavity_full = np.zeros(grid.shape, dtype=bool)
    supra_full = np.zeros(grid.shape, dtype=bool)
    full = grid.full()
    floor = floor_height(full.u[0], full.v[0])
    reach = _sulcal_reach(full, anat)
    if head is None:
        return tissue, Fields(inner_full, brain_full, sulcal_full, reach, floor)
    i = head.index
    u, v, z = head.u, head.v, head.z
    c = np.where(z >= 0, c_up, c_down).astype(np.float32)
    rho = np.sqrt((u / a) ** 2 + (v / b) ** 2 + (z / c) ** 2)
    grad = np.sqrt((u / a**2) ** 2 + (v / b**2) ** 2 + (z / c**2) ** 2) / np.maximum(rho, 1e-3)
    depth = (1.0 - rho) / np.maximum(grad, 1.0 / max(a, b, c_down))
    skull = anat.skull_mm + 2.0 * (v / b) ** 2
    inner = depth - anat.scalp_mm - skull
    above_floor = z - floor[i[1:]]
    cavity_depth = np.minimum(inner, above_floor)
    cavity = cavity_depth >= 0

    view = tissue[i]
    view[depth >= 0] = Tissue.SCALP
    in_head = depth >= anat.scalp_mm
    shell = in_head & (inner < 0) & ((z > -66.0) | (v < -40.0))
    view[shell] = Tissue.BONE
    view[shell & (depth > anat.scalp_mm + 1.8) & (inner < -1.4)] = Tissue.DIPLOE
    base = in_head & (inner >= 0) & (above_floor < 0)
    view[base & (above_floor >= -5.0)] = Tissue.BONE
    view[base & (above_floor < -5.0)] = Tissue.SOFT
    view[cavity] = Tissue.CSF

    midline_gap = np.where(_fissure_plane(v, z), np.abs(u) - 1.0, np.inf)
    brain = np.minimum(cavity_depth, midline_gap) - anat.csf_mm
    sulcal = _sulcal_distance(head, anat)
    sulcal[midline_gap < cavity_depth] = np.inf  # the medial surface: a ribbon, no sulci
    supra = cavity & (z >= tentorium_z(u, v))
    cerebrum = label_cerebrum(brain, sulcal, reach[i[1:]], anat)
    view[supra] = cerebrum[supra]
    inner_full[i], brain_full[i], sulcal_full[i] = inner, brain, sulcal
    cavity_full[i], supra_full[i] = cavity, supra
    _draw_posterior_fossa(tissue, grid, cavity_full & ~supra_full, brain_full)
    fissure = supra & (midline_gap < 0.6)
    view[fissure] = Tissue.FISSURE
    view[fissure & (np.abs(u) < 0.5)] = Tissue.DURA
    _draw_sylvian_fissures(tissue, grid, anat.sulcal_width_mm * 1.4)
    draw_deep_structures(tissue, grid, anat)
    draw_face(tissue, grid, anat)
    return tissue, Fields(inner_full, brain_full, sulcal_full, reach, floor)


def _fissure_plane(v: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Where the interhemispheric fissure reaches down: above the corpus callosum, or in front
    of and behind it."""
    return (z > 23.0) | (v < -36.0) | (v > 40.0)


def _sulcal_distance(box: Box, anat: Anatomy) -> np.ndarray:
    """Distance (mm) to the nearest sulcus: zero lines of a wobbling azimuthal phase, so sulci
    run roughly perpendicular to the surface in each axial slice, bend with depth and meander
    from slice to slice like gyri."""
    n, m1, a1, w1, p1, m2, a2, w2, p2 = anat.gyri
    theta = np.arctan2(box.v, box.u * 1.2)
    radius = np.maximum(np.hypot(box.u, box.v), 25.0)
    wobble1 = (a1 * np.sin(m1 * theta + p1)).astype(np.float32)
    wobble2 = (a2 * np.sin(m2 * theta - p2)).astype(np.float32)
    bend = (1.3 * np.sin(0.21 * radius + 5.0 * theta + p1)).astype(np.float32)
    phase = n * theta + bend + wobble1 * np.cos(w1 * box.z + p2)
    phase += wobble2 * np.sin(w2 * box.z + p1)
    turns = phase * np.float32(1.0 / np.pi)
    return np.abs(turns - np.round(turns)) * (np.pi / n) * radius


def _sulcal_reach(box: Box, anat: Anatomy) -> np.ndarray:
    """Depth each sulcus reaches, varying from sulcus to sulcus (deep fissures, shallow ones)."""
    index = np.round(anat.gyri[0] * np.arctan2(box.v[0], box.u[0] * 1.2) / np.pi)
    jitter = np.abs(np.sin(index * 12.9898 + anat.gyri[4]) * 43.7585) % 1.0
    return (anat.sulcal_depth_mm * (0.4 + 0.9 * jitter)).astype(np.float32)


def label_cerebrum(
    brain: np.ndarray,
    sulcal: np.ndarray,
    reach: np.ndarray,
    anat: Anatomy,
    width_factor: float | np.ndarray = 1.0,
    recession_mm: float | np.ndarray = 0.0,
) -> np.ndarray:
    """Cortex, white matter and CSF of the cerebral hemispheres from the distance fields.

    ``width_factor`` widens (atrophy) or closes (effacement) the sulci; ``recession_mm`` moves
    the brain surface inwards (atrophy, or a brain compressed by an extra-axial collection).
    """
    depth = brain - recession_mm
    width = anat.sulcal_width_mm * width_factor
    sulcus = (sulcal < width) & (depth < reach)
    grey = (depth < anat.cortex_mm) | (
        (sulcal < width + anat.cortex_mm) & (depth < reach + anat.cortex_mm)
    )
    out = np.where(grey, np.uint8(Tissue.GM), np.uint8(Tissue.WM))
    out[sulcus | (depth < 0)] = Tissue.CSF
    return out


def label_cerebellum(
    box: Box, brain: np.ndarray, width_factor: float = 1.0, recession_mm: float = 0.0
) -> np.ndarray:
    """Cerebellar cortex with folia (concentric fissures around the fourth ventricle), and CSF."""
    radius = np.hypot(box.u * 0.8, box.v - 12.0) + 0.35 * box.z
    turns = radius * np.float32(1.0 / 5.5)
    folia = np.abs(turns - np.round(turns)) * 5.5 < 0.45 * width_factor
    depth = brain - recession_mm
    out = np.full(depth.shape, Tissue.CEREBELLUM, dtype=np.uint8)
    out[(folia & (depth < 9.0)) | (depth < 0)] = Tissue.CSF
    return out


def _draw_posterior_fossa(
    tissue: np.ndarray, grid: Grid, fossa: np.ndarray, brain: np.ndarray
) -> None:
    box = grid.box((0.0, 45.0, -40.0), (80.0, 55.0, 40.0))
    if box is None:
        return
    i = box.index
    cerebellum = label_cerebellum(box, brain[i])
    inside = fossa[i]
    view = tissue[i]
    view[inside] = cerebellum[inside]
    tentorium = inside & (np.abs(box.z - tentorium_z(box.u, box.v)) < 0.35)
    view[tentorium] = Tissue.DURA


def sylvian_box(grid: Grid, side: int) -> Box | None:
    return grid.box((side * 52.0, -4.0, -5.0), (26.0, 22.0, 12.0))


def sylvian_fissure(box: Box, side: int, half_width: float) -> np.ndarray:
    """Mask of one sylvian fissure: an oblique sheet between frontal and temporal lobes."""
    au = box.u * side
    line = -12.0 + 0.3 * (au - 30.0)
    z_ok = np.abs(box.z + 5.0) < 11.0 - 4.0 * np.abs((box.v + 4.0) / 22.0)
    return (np.abs(box.v - line) < half_width) & (au > 27.0) & z_ok


def _draw_sylvian_fissures(tissue: np.ndarray, grid: Grid, half_width: float) -> None:
    for side in (-1, 1):
        box = sylvian_box(grid, side)
        if box is None:
            continue
        mask = sylvian_fissure(box, side, half_width)
        mask &= np.isin(tissue[box.index], (Tissue.GM, Tissue.WM, Tissue.CSF))
        paint(tissue, box, mask, Tissue.FISSURE)
