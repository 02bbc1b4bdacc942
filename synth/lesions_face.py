"""Findings of the skull base and face: sinuses, mastoids, orbit, craniocervical junction."""

from __future__ import annotations

import numpy as np

from synth.anatomy import Tissue
from synth.canvas import Canvas
from synth.geometry import ellipsoid

MAXILLARY = ((28.0, -58.0, -66.0), (13.0, 16.0, 13.0))  # centre (left side) and semi-axes
SPHENOID = ((0.0, -31.0, -45.0), (13.0, 10.0, 7.0))
ETHMOID = ((0.0, -62.0, -38.0), (11.0, 20.0, 14.0))
MASTOID = ((54.0, 24.0, -40.0), (11.0, 12.0, 11.0))


def _mirror(center: tuple[float, float, float], side: int) -> tuple[float, float, float]:
    return side * center[0], center[1], center[2]


def sinus_air_fluid_level(c: Canvas) -> None:
    """Fluid in the dependent (posterior, patient supine) part of a sinus: a straight level."""
    code = "sinus_air_fluid_level"
    if c.rng.random() < 0.7:
        center, semi = _mirror(MAXILLARY[0], c.plan.side), MAXILLARY[1]
    else:
        center, semi = SPHENOID
    box = c.grid.box(center, semi)
    if box is None:
        return
    level = center[1] + c.uniform(-6.0, 4.0)
    mask = (ellipsoid(box, center, semi) < 1.0) & (box.v > level)
    c.paint(code, box, mask & c.in_tissue(box, Tissue.SINUS_AIR), c.uniform(15.0, 35.0), mark=True)


def paranasal_sinus_disease(c: Canvas) -> None:
    """Mucosal thickening lining the maxillary sinus walls, or opacified ethmoid cells."""
    code = "paranasal_sinus_disease"
    value = c.uniform(25.0, 40.0)
    if c.rng.random() < 0.7:
        sides = (-1, 1) if c.rng.random() < 0.5 else (int(c.rng.choice([-1, 1])),)
        for side in sides:
            center, semi = _mirror(MAXILLARY[0], side), MAXILLARY[1]
            box = c.grid.box(center, semi)
            if box is None:
                continue
            r = np.sqrt(ellipsoid(box, center, semi))
            lining = r > 1.0 - c.uniform(3.0, 7.0) / min(semi)
            c.paint(code, box, lining & c.in_tissue(box, Tissue.SINUS_AIR), value, mark=True)
    else:
        center, semi = ETHMOID
        box = c.grid.box(center, semi)
        if box is not None:
            side = box.u * float(c.rng.choice([-1.0, 1.0])) > -2.0
            c.paint(code, box, side & c.in_tissue(box, Tissue.SINUS_AIR), value, mark=True)


def mastoid_opacification(c: Canvas) -> None:
    code = "mastoid_opacification"
    sides = (-1, 1) if c.rng.random() < 0.3 else (c.plan.side,)
    value = c.uniform(20.0, 40.0)
    for side in sides:
        center, semi = _mirror(MASTOID[0], side), MASTOID[1]
        box = c.grid.box(center, semi)
        if box is not None:
            cells = (ellipsoid(box, center, semi) < 1.0) & c.in_tissue(box, Tissue.SINUS_AIR)
            c.paint(code, box, cells, value, mark=True)


def orbital_abnormality(c: Canvas) -> None:
    """Proptosis: a retrobulbar soft-tissue mass pushing the globe forwards."""
    code = "orbital_abnormality"
    s = int(c.rng.choice([-1, 1]))
    z = c.grid.nearest_slice_z(-35.0)
    globe, shift = (s * 30.0, -76.0, z), c.uniform(5.0, 8.0)
    box = c.grid.box((globe[0], globe[1] + 8.0, z), (16.0, 30.0, 13.0))
    if box is None:
        return
    old = c.in_tissue(box, Tissue.GLOBE, Tissue.LENS)
    new_globe = ellipsoid(box, (globe[0], globe[1] - shift, z), (12.0, 12.0, 12.0)) < 1.0
    lens = ellipsoid(box, (globe[0], globe[1] - 10.0 - shift, z), (4.5, 2.0, 4.5)) < 1.0
    c.relabel(code, box, old & ~new_globe, Tissue.ORBIT_FAT)
    c.relabel(code, box, new_globe & ~lens, Tissue.GLOBE)
    c.relabel(code, box, lens, Tissue.LENS)
    mass = ellipsoid(box, (s * 25.0, -56.0, z), (8.0, 10.0, 7.0)) < 1.0
    c.paint(
        code,
        box,
        mass & c.in_tissue(box, Tissue.ORBIT_FAT, Tissue.NERVE),
        c.uniform(40.0, 55.0),
        mark=True,
    )


def craniocervical_junction_abnormality(c: Canvas) -> None:
    """Atlantoaxial instability with basilar invagination: the dens sits back from the C1
    anterior arch and rises into the foramen magnum, indenting the cord and medulla."""
    code = "craniocervical_junction_abnormality"
    box = c.grid.box((0.0, 2.0, -80.0), (8.0, 12.0, 26.0))
    if box is None:
        return
    back = c.uniform(4.0, 6.0)
    old = ((box.u / 5.0) ** 2 + ((box.v + 3.0) / 5.0) ** 2 < 1.0) & (box.z < -67.0)
    new = ((box.u / 5.0) ** 2 + ((box.v + 3.0 - back) / 5.0) ** 2 < 1.0) & (
        box.z < -67.0 + c.uniform(7.0, 10.0)
    )
    c.relabel(code, box, old & ~new & c.in_tissue(box, Tissue.BONE), Tissue.SOFT)
    c.relabel(code, box, new & ~c.in_tissue(box, Tissue.AIR), Tissue.BONE)
