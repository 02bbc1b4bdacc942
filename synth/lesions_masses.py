"""Masses, cysts, vascular malformations and calcifications.

Each has its own density pattern and place: a necrotic rim-like or solid lobulated tumour in the
hemispheres, small ring lesions at the grey-white junction (metastases), a thin-walled ring with
a fluid centre (abscess), a cyst with a mural nodule in the cerebellum, a mass filling the
suprasellar cistern, a dense ball at the foramen of Monro (colloid cyst), a pineal cyst, a tangle
of dense serpiginous vessels (AVM), pallidal or granuloma calcification, carotid siphon calcium.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from synth.anatomy import Tissue
from synth.canvas import Canvas
from synth.geometry import Box, ellipsoid, segment_distance
from synth.regions import Point, random_point

_BRAIN = (Tissue.GM, Tissue.WM, Tissue.DEEP_GM, Tissue.CSF)


def lobar_point(c: Canvas) -> Point:
    return random_point(c, (Tissue.WM,), (-45.0, 45.0), (-50.0, 45.0), (0.0, 40.0))


def free_site(
    c: Canvas, code: str, radius: float, candidate: Callable[[Canvas], Point] = lobar_point
) -> Point:
    """Where to put a round lesion: the plan's focus if it is the dominant lesion, else a
    candidate point; another candidate when earlier lesions already fill most of the place."""
    first = [c.plan.focus] if c.plan.dominant == code else []
    points = itertools.chain(first, (candidate(c) for _ in range(6)))
    best, best_free = None, -1.0
    semi = (radius, radius, max(radius, 3.0))
    for point in points:
        box = c.grid.box(point, semi)
        if box is None:
            continue
        inside = ellipsoid(box, point, semi) < 1.0
        free = float((inside & c.in_tissue(box, *_BRAIN)).sum()) / max(int(inside.sum()), 1)
        if free > best_free:
            best, best_free = point, free
        if free >= 0.6:
            break
    return best if best is not None else candidate(c)


def _lobulated_radius(box: Box, center: Point, radius: float, phase: float) -> np.ndarray:
    """Normalised radius of a lobulated blob (1 at its margin)."""
    du, dv, dz = box.u - center[0], box.v - center[1], box.z - center[2]
    r = np.sqrt(du**2 + dv**2 + dz**2)
    lobes = 1.0 + 0.14 * np.sin(3.0 * np.arctan2(dv, du) + phase) * np.cos(0.15 * dz + phase)
    return r / (radius * lobes)


def lobulated_ball(c: Canvas, center: Point, radius: float) -> tuple[Box | None, np.ndarray]:
    """The box around a lobulated blob and the normalised radius of its voxels."""
    semi = (radius * 1.2, radius * 1.2, max(radius * 1.2, 3.0))
    box = c.grid.box(center, semi)
    if box is None:
        return None, np.zeros(0)
    return box, _lobulated_radius(box, center, radius, c.uniform(0.0, 6.0))


def intra_axial_mass(c: Canvas) -> None:
    """Glioblastoma-like (thick irregular rim, necrotic centre) or lymphoma-like (solid,
    hyperdense) lobulated mass."""
    code = "intra_axial_mass"
    big = c.plan.dominant == code and c.positive("mass_effect")
    radius = c.uniform(18.0, 25.0) if big else c.uniform(9.0, 15.0)
    center = free_site(c, code, radius)
    box, r = lobulated_ball(c, center, radius)
    if box is None:
        return
    tissue = c.in_tissue(box, *_BRAIN)
    if c.rng.random() < 0.6:
        c.paint(code, box, tissue & (r < 1.0), c.uniform(40.0, 46.0), mark=True)
        core = 1.0 - c.uniform(3.0, 5.0) / radius
        c.paint(code, box, tissue & (r < core), c.uniform(14.0, 20.0), mark=True)
    else:
        c.paint(code, box, tissue & (r < 1.0), c.uniform(45.0, 52.0), mark=True)
    c.masses.append((center, radius))


def multiple_lesions(c: Canvas) -> None:
    """Several small ring lesions at the grey-white junction, in both hemispheres."""
    code = "multiple_lesions"
    for i in range(int(c.rng.integers(3, 6))):
        side = 1 if i % 2 else -1
        u_range = (0.0, 50.0) if side > 0 else (-50.0, 0.0)
        center = random_point(c, (Tissue.WM,), u_range, (-55.0, 55.0), (-5.0, 45.0))
        radius = c.uniform(4.0, 7.5)
        box, r = lobulated_ball(c, center, radius)
        if box is None:
            continue
        tissue = c.in_tissue(box, *_BRAIN)
        c.paint(code, box, tissue & (r < 1.0), c.uniform(40.0, 46.0), mark=True)
        c.paint(code, box, tissue & (r < 0.55), c.uniform(22.0, 28.0), mark=True)
        c.masses.append((center, radius))


def infection_abscess(c: Canvas) -> None:
    """Round lesion with a thin smooth rim and a low-density (pus) centre."""
    code = "infection_abscess"
    big = c.plan.dominant == code and c.positive("mass_effect")
    radius = c.uniform(15.0, 20.0) if big else c.uniform(8.0, 13.0)
    center = free_site(c, code, radius)
    semi = (radius + 1, radius + 1, max(radius + 1, 3.0))
    box = c.grid.box(center, semi)
    if box is None:
        return
    r = np.sqrt(ellipsoid(box, center, (radius, radius, radius)))
    tissue = c.in_tissue(box, *_BRAIN)
    c.paint(code, box, tissue & (r < 1.0), c.uniform(37.0, 42.0), mark=True)
    c.paint(code, box, tissue & (r < 1.0 - 2.3 / radius), c.uniform(10.0, 18.0), mark=True)
    c.masses.append((center, radius))


def posterior_fossa_mass(c: Canvas) -> None:
    """Cerebellar mass: a cyst with a mural nodule (pilocytic-like) or a solid mass."""
    code = "posterior_fossa_mass"
    side = c.plan.side if c.rng.random() < 0.7 else 0
    center = (side * 22.0, 42.0, c.grid.clamp_z(-36.0, 8.0))
    radius = c.uniform(12.0, 17.0)
    box, r = lobulated_ball(c, center, radius)
    if box is None:
        return
    tissue = c.in_tissue(box, Tissue.CEREBELLUM, Tissue.CEREBELLAR_WM, Tissue.CSF, Tissue.VENTRICLE)
    if c.rng.random() < 0.5:
        c.paint(code, box, tissue & (r < 1.0), c.hu_of(Tissue.CSF) + c.uniform(4.0, 9.0), mark=True)
        nodule = (center[0] + 0.6 * radius * (1 if side >= 0 else -1), center[1], center[2])
        node = np.sqrt(ellipsoid(box, nodule, (5.5, 5.5, 5.5))) < 1.0
        c.paint(code, box, tissue & node, c.uniform(40.0, 48.0), mark=True)
    else:
        c.paint(code, box, tissue & (r < 1.0), c.uniform(40.0, 48.0), mark=True)
    c.masses.append((center, radius))


def sellar_suprasellar_mass(c: Canvas) -> None:
    """Soft-tissue mass expanding the sella and filling the suprasellar cistern; a calcified
    rim in some (craniopharyngioma)."""
    code = "sellar_suprasellar_mass"
    center = (0.0, -18.0, c.grid.clamp_z(-24.0, 4.0))
    semi = (c.uniform(10.0, 13.0), c.uniform(10.0, 12.0), c.uniform(9.0, 12.0))
    box = c.grid.box(center, semi)
    if box is None:
        return
    r = np.sqrt(ellipsoid(box, center, semi))
    tissue = c.in_tissue(
        box,
        Tissue.CISTERN,
        Tissue.PITUITARY,
        Tissue.GM,
        Tissue.WM,
        Tissue.BRAINSTEM,
        Tissue.DEEP_GM,
        Tissue.FISSURE,
        Tissue.CSF,
        Tissue.BONE,
        Tissue.SINUS_AIR,
    )
    c.paint(code, box, tissue & (r < 1.0), c.uniform(40.0, 50.0), mark=True)
    if c.rng.random() < 0.4:
        c.paint(code, box, tissue & (r > 0.85) & (r < 1.0), c.uniform(150.0, 300.0))


def colloid_cyst(c: Canvas) -> None:
    code = "colloid_cyst"
    radius = c.uniform(4.0, 6.5)
    center = (0.0, -12.0, c.grid.nearest_slice_z(6.0))
    semi = (radius, radius, max(radius, 3.0))
    box = c.grid.box(center, semi)
    if box is not None:
        mask = ellipsoid(box, center, semi) < 1.0
        c.paint(
            code, box, mask & ~c.in_tissue(box, Tissue.LESION), c.uniform(55.0, 70.0), mark=True
        )


def incidental_cyst(c: Canvas) -> None:
    """Pineal cyst: a round CSF-density lesion behind the third ventricle."""
    code = "incidental_cyst"
    radius = c.uniform(4.5, 7.0)
    center = (0.0, 21.0, c.grid.nearest_slice_z(-1.0))
    semi = (radius, radius, max(radius, 3.0))
    box = c.grid.box(center, semi)
    if box is not None:
        mask = (ellipsoid(box, center, semi) < 1.0) & ~c.in_tissue(box, Tissue.LESION)
        c.paint(code, box, mask, c.hu_of(Tissue.CSF) + c.uniform(2.0, 6.0), mark=True)


def vascular_malformation(c: Canvas) -> None:
    """AVM: a tangle of dense serpiginous vessels with a few calcified foci."""
    code = "vascular_malformation"
    center = random_point(c, (Tissue.WM, Tissue.GM), (-45.0, 45.0), (-45.0, 50.0), (0.0, 40.0))
    radius = c.uniform(12.0, 17.0)
    semi = (radius, radius, radius)
    box = c.grid.box(center, semi)
    if box is None:
        return
    k = 0.45
    x, y, z = k * (box.u - center[0]), k * (box.v - center[1]), k * (box.z - center[2])
    gyroid = np.sin(x) * np.cos(y) + np.sin(y) * np.cos(z) + np.sin(z) * np.cos(x)
    inside = ellipsoid(box, center, semi) < 1.0
    tissue = c.in_tissue(box, *_BRAIN)
    c.paint(code, box, inside & tissue & (np.abs(gyroid) < 0.45), c.uniform(52.0, 64.0), mark=True)
    if c.rng.random() < 0.5:
        dots = inside & tissue & (np.abs(gyroid) < 0.45) & (np.sin(3.1 * box.u) > 0.97)
        c.paint(code, box, dots, c.uniform(180.0, 300.0))


def pathologic_calcification(c: Canvas) -> None:
    """Bilateral pallidal calcification, or a few calcified granulomas."""
    code = "pathologic_calcification"
    value = c.uniform(180.0, 380.0)
    if c.rng.random() < 0.5:
        z = c.grid.nearest_slice_z(-1.0)
        for side in (-1, 1):
            center, semi = (side * 17.0, -1.0, z), (3.2, 7.0, 4.0)
            box = c.grid.box(center, semi)
            if box is not None:
                c.paint(code, box, ellipsoid(box, center, semi) < 1.0, value, mark=True)
        return
    for _ in range(int(c.rng.integers(2, 6))):
        center = random_point(
            c, (Tissue.GM, Tissue.WM), (-55.0, 55.0), (-60.0, 60.0), (-10.0, 50.0)
        )
        radius = c.uniform(1.6, 2.6)
        semi = (radius, radius, max(radius, 2.5))
        box = c.grid.box(center, semi)
        if box is not None:
            c.paint(code, box, ellipsoid(box, center, semi) < 1.0, value + 100.0, mark=True)


def vascular_calcification(c: Canvas) -> None:
    """Calcified carotid siphons (and often the vertebrobasilar arteries)."""
    code = "vascular_calcification"
    value = c.uniform(250.0, 600.0)
    segments = []
    for side in (-1, 1):
        segments.append(((side * 14.0, -27.0, -36.0), (side * 15.0, -15.0, -28.0)))
        segments.append(((side * 15.0, -15.0, -28.0), (side * 12.0, -19.0, -19.0)))
    if c.rng.random() < 0.5:
        segments.append(((0.0, -6.0, -48.0), (0.0, -6.0, -24.0)))
    for p0, p1 in segments:
        center = tuple((np.array(p0) + np.array(p1)) / 2)
        half = tuple(np.abs(np.array(p1) - np.array(p0)) / 2 + 3.0)
        box = c.grid.box(center, half)  # type: ignore[arg-type]
        if box is not None:
            wall = segment_distance(box, p0, p1) < c.uniform(1.3, 1.9)
            c.paint(code, box, wall, value)
