"""Findings of the skull, scalp and devices: fractures, bone lesions, craniotomy, scalp swelling,
shunt catheters and metallic foreign bodies (with their streak artefact)."""

from __future__ import annotations

import numpy as np

from synth.anatomy import Tissue
from synth.canvas import Canvas
from synth.geometry import Box, ellipsoid, segment_distance
from synth.regions import Point, convexity_box, convexity_point, footprint

METAL_HU = 3071.0  # the top of the 12-bit range: metal saturates
_BONES = (Tissue.BONE, Tissue.DIPLOE, Tissue.PETROUS)


def outer_depth(c: Canvas, box: Box) -> np.ndarray:
    """Depth below the skin surface (negative outside the head)."""
    b = c.anatomy.outer[1]
    skull = c.anatomy.skull_mm + 2.0 * (box.v / b) ** 2
    return c.fields.inner[box.index] + c.anatomy.scalp_mm + skull


def _unit(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-6)


def _gap(
    c: Canvas,
    code: str,
    p0: Point,
    direction: np.ndarray,
    normal: np.ndarray,
    length: float,
    width: float,
    tissues: tuple[Tissue, ...],
    value: float,
) -> None:
    """A fracture: a thin planar gap through bone along ``direction`` around ``p0``."""
    box = c.grid.box(p0, (length + 3.0, length + 3.0, length + 3.0))
    if box is None:
        return
    du, dv, dz = box.u - p0[0], box.v - p0[1], box.z - p0[2]
    across = du * normal[0] + dv * normal[1] + dz * normal[2]
    along = du * direction[0] + dv * direction[1] + dz * direction[2]
    mask = (np.abs(across) < width / 2) & (np.abs(along) < length)
    mask &= du**2 + dv**2 + dz**2 < (length + 3.0) ** 2
    c.paint(code, box, mask & c.in_tissue(box, *tissues), value)


def calvarial_fracture(c: Canvas) -> None:
    """A linear lucent line through the full skull thickness, running craniocaudally."""
    code = "calvarial_fracture"
    azimuth = c.plan.impact_azimuth + c.uniform(-8.0, 8.0)
    z = c.grid.clamp_z(c.plan.impact_z, 12.0)
    p0 = convexity_point(c.anatomy, azimuth, z, -0.5 * c.anatomy.skull_mm)
    radial = _unit(np.array([p0[0], p0[1], 0.0]))
    tangent = np.array([-radial[1], radial[0], 0.0])
    tilt = np.deg2rad(c.uniform(-40.0, 40.0))
    direction = _unit(np.cos(tilt) * np.array([0.0, 0.0, 1.0]) + np.sin(tilt) * tangent)
    normal = _unit(np.cross(direction, radial))
    _gap(
        c,
        code,
        p0,
        direction,
        normal,
        c.uniform(18.0, 30.0),
        c.uniform(1.3, 2.2),
        (Tissue.BONE, Tissue.DIPLOE),
        c.uniform(35.0, 60.0),
    )


def depressed_skull_fracture(c: Canvas) -> None:
    """A plate of skull broken out and pushed inwards, below the inner table."""
    code = "depressed_skull_fracture"
    azimuth = c.plan.impact_azimuth + (50.0 if c.positive("calvarial_fracture") else 0.0)
    z = c.grid.clamp_z(c.plan.impact_z + c.uniform(-5.0, 10.0), 14.0)
    width, height = c.uniform(10.0, 14.0), c.uniform(12.0, 18.0)
    drop = c.uniform(5.0, 9.0)
    box = convexity_box(c.grid, c.anatomy, azimuth, z, width, height, drop + 10.0)
    if box is None:
        return
    r2 = footprint(box, c.anatomy, azimuth, z, width, height)
    c.paint(
        code, box, (r2 < 1.0) & c.in_tissue(box, Tissue.BONE, Tissue.DIPLOE), c.uniform(40.0, 60.0)
    )
    inner = c.fields.inner[box.index]
    skull = c.anatomy.skull_mm
    fragment = (r2 < 0.8) & (inner >= drop - skull) & (inner < drop)
    fragment &= c.in_tissue(box, Tissue.GM, Tissue.WM, Tissue.CSF, Tissue.FISSURE, Tissue.LESION)
    c.paint(code, box, fragment, c.hu_of(Tissue.BONE), mark=True)


def skull_base_fracture(c: Canvas) -> None:
    """A lucent line through the petrous temporal bone and mastoid, or the sphenoid/clivus."""
    code = "skull_base_fracture"
    s = c.plan.side
    if c.rng.random() < 0.65:
        p0: Point = (s * 42.0, 14.0, c.grid.clamp_z(-38.0, 4.0))
        direction = _unit(np.array([-s * 0.6, -0.8, 0.1]))
    else:
        p0 = (s * 7.0, -26.0, c.grid.clamp_z(-40.0, 4.0))
        direction = _unit(np.array([0.2 * s, 1.0, -0.3]))
    normal = _unit(np.cross(direction, np.array([0.0, 0.0, 1.0])))
    _gap(
        c,
        code,
        p0,
        direction,
        normal,
        c.uniform(14.0, 20.0),
        c.uniform(1.3, 2.0),
        _BONES,
        c.uniform(30.0, 50.0),
    )


def facial_orbital_fracture(c: Canvas) -> None:
    """A break in the lateral orbital wall, the orbital floor or the maxillary sinus wall."""
    code = "facial_orbital_fracture"
    s = c.plan.side
    variant = int(c.rng.integers(3))
    if variant == 0:
        p0: Point = (s * 40.0, -64.0, c.grid.clamp_z(-36.0, 4.0))
        normal = _unit(np.array([0.3 * s, 1.0, 0.2]))
    elif variant == 1:
        p0 = (s * 22.0, -60.0, c.grid.clamp_z(-46.0, 4.0))
        normal = _unit(np.array([1.0 * s, 0.3, 0.4]))
    else:
        p0 = (s * 30.0, -74.0, c.grid.clamp_z(-64.0, 4.0))
        normal = _unit(np.array([1.0 * s, 0.2, 0.3]))
    direction = _unit(
        np.cross(normal, np.array([1.0, 0.0, 0.0]) if variant else np.array([0.0, 0.0, 1.0]))
    )
    _gap(
        c,
        code,
        p0,
        direction,
        normal,
        c.uniform(12.0, 18.0),
        c.uniform(1.5, 2.5),
        _BONES,
        c.uniform(20.0, 45.0),
    )


def calvarial_lesion(c: Canvas) -> None:
    """A round lytic lesion: bone replaced by soft tissue through the skull thickness."""
    code = "calvarial_lesion"
    azimuth = c.uniform(-180.0, 180.0)
    z = c.grid.clamp_z(c.uniform(10.0, 55.0), 12.0)
    center = convexity_point(c.anatomy, azimuth, z, -0.5 * c.anatomy.skull_mm)
    radius = c.uniform(6.0, 10.0)
    semi = (radius, radius, max(radius, 3.0))
    box = c.grid.box(center, semi)
    if box is not None:
        mask = (ellipsoid(box, center, semi) < 1.0) & c.in_tissue(box, Tissue.BONE, Tissue.DIPLOE)
        c.paint(code, box, mask, c.uniform(40.0, 55.0), mark=True)


def postoperative_changes(c: Canvas) -> None:
    """Craniotomy: a bone flap outlined by saw cuts, burr holes at its corners, thick scalp."""
    code = "postoperative_changes"
    azimuth = float(c.rng.choice([-60.0, -120.0, 10.0, 170.0, 50.0, 130.0]))
    z = c.grid.clamp_z(c.uniform(10.0, 40.0), 18.0)
    width, height = c.uniform(22.0, 30.0), c.uniform(25.0, 35.0)
    box = convexity_box(c.grid, c.anatomy, azimuth, z, width * 1.3, height * 1.3, 5.0)
    if box is None:
        return
    r2 = footprint(box, c.anatomy, azimuth, z, width, height)
    bone = c.in_tissue(box, Tissue.BONE, Tissue.DIPLOE)
    c.paint(code, box, bone & (r2 > 0.8) & (r2 < 1.0), c.uniform(15.0, 35.0))
    for angle in c.rng.uniform(0.0, 2 * np.pi, 3):
        hole_az = azimuth + width * 0.95 * np.cos(angle)
        hole_z = z + height * 0.95 * np.sin(angle)
        hole = footprint(box, c.anatomy, hole_az, hole_z, 4.0, 5.0) < 1.0
        c.paint(code, box, bone & hole, c.uniform(10.0, 30.0))
    depth = outer_depth(c, box)
    thick = (r2 < 1.2) & (depth > -c.uniform(3.0, 5.0)) & c.in_tissue(box, Tissue.AIR)
    c.paint(code, box, thick, c.hu_of(Tissue.SCALP))


def scalp_hematoma(c: Canvas) -> None:
    """A dense lentiform swelling of the scalp at the impact site."""
    code = "scalp_hematoma"
    azimuth, z = c.plan.impact_azimuth, c.grid.clamp_z(c.plan.impact_z, 12.0)
    width, height = c.uniform(25.0, 40.0), c.uniform(25.0, 35.0)
    box = convexity_box(c.grid, c.anatomy, azimuth, z, width * 1.2, height, 2.0)
    if box is None:
        return
    inside = np.clip(1.0 - footprint(box, c.anatomy, azimuth, z, width, height), 0.0, 1.0)
    thickness = c.uniform(8.0, 16.0) * np.sqrt(inside)
    depth = outer_depth(c, box)
    mask = (depth > -thickness) & (depth < c.anatomy.scalp_mm) & (inside > 0)
    c.paint(code, box, mask & c.in_tissue(box, Tissue.AIR, Tissue.SCALP), c.uniform(50.0, 75.0))


def scalp_soft_tissue_mass(c: Canvas) -> None:
    """A round, well-defined soft-tissue nodule bulging from the scalp."""
    code = "scalp_soft_tissue_mass"
    azimuth = c.uniform(-180.0, 180.0)
    z = c.grid.clamp_z(c.uniform(10.0, 55.0), 12.0)
    radius = c.uniform(7.0, 13.0)
    wall = c.anatomy.scalp_mm + c.anatomy.skull_mm
    center = convexity_point(c.anatomy, azimuth, z, -wall - 0.3 * radius)
    semi = (radius, radius, radius)
    box = c.grid.box(center, semi)
    if box is not None:
        mask = (ellipsoid(box, center, semi) < 1.0) & c.in_tissue(box, Tissue.AIR, Tissue.SCALP)
        c.paint(code, box, mask, c.uniform(30.0, 48.0), mark=True)


def shunt_catheter(c: Canvas) -> None:
    """A ventricular catheter: a thin dense tube from a frontal burr hole (with a reservoir
    under the scalp) through the brain into the frontal horn."""
    code = "shunt_catheter"
    s = -1 if c.rng.random() < 0.7 else 1
    azimuth = -70.0 if s > 0 else -110.0
    z = c.grid.clamp_z(45.0, 10.0)
    wall = c.anatomy.scalp_mm + c.anatomy.skull_mm
    entry = convexity_point(c.anatomy, azimuth, z, -wall + 1.0)
    tip = (s * (1.5 + 4.6 * c.anatomy.ventricle_size), -17.0, c.grid.clamp_z(9.0, 3.0))
    center = tuple((np.array(entry) + np.array(tip)) / 2)
    half = tuple(np.abs(np.array(entry) - np.array(tip)) / 2 + 10.0)
    box = c.grid.box(center, half)  # type: ignore[arg-type]
    if box is None:
        return
    distance = segment_distance(box, entry, tip)
    burr = (distance < 5.0) & c.in_tissue(box, Tissue.BONE, Tissue.DIPLOE)
    c.paint(code, box, burr, c.uniform(20.0, 40.0))
    c.paint(code, box, distance < c.uniform(1.3, 1.7), c.uniform(400.0, 900.0), mark=True)
    reservoir = convexity_point(c.anatomy, azimuth, z, -wall - 2.0)
    rbox = c.grid.box(reservoir, (6.0, 6.0, 6.0))
    if rbox is not None:
        bulb = (ellipsoid(rbox, reservoir, (6.0, 6.0, 4.5)) < 1.0) & c.in_tissue(
            rbox, Tissue.AIR, Tissue.SCALP
        )
        c.paint(code, rbox, bulb, c.uniform(60.0, 100.0))


def penetrating_foreign_body(c: Canvas) -> None:
    """Metal (saturating the HU scale) entering through the skull, with radiating dark and
    bright streaks on the slices it is on."""
    code = "penetrating_foreign_body"
    azimuth = c.plan.impact_azimuth
    z = c.grid.nearest_slice_z(c.grid.clamp_z(c.plan.impact_z, 12.0))
    wall = c.anatomy.scalp_mm + c.anatomy.skull_mm
    outside = convexity_point(c.anatomy, azimuth, z, -wall - c.uniform(0.0, 8.0))
    deep = convexity_point(
        c.anatomy, azimuth + c.uniform(-10.0, 10.0), z + c.uniform(-4.0, 4.0), c.uniform(20.0, 40.0)
    )
    center = tuple((np.array(outside) + np.array(deep)) / 2)
    half = tuple(np.abs(np.array(outside) - np.array(deep)) / 2 + 6.0)
    box = c.grid.box(center, half)  # type: ignore[arg-type]
    if box is None:
        return
    distance = segment_distance(box, outside, deep)
    c.paint(code, box, (distance < 3.5) & c.in_tissue(box, Tissue.BONE, Tissue.DIPLOE), 45.0)
    metal = distance < c.uniform(1.3, 2.0)
    c.paint(code, box, metal, METAL_HU, mark=True)
    _streaks(c, code, deep, metal, box)


def _streaks(c: Canvas, code: str, center: Point, metal: np.ndarray, box: Box) -> None:
    planes = np.flatnonzero(np.broadcast_to(metal, c.tissue[box.index].shape).any(axis=(1, 2)))
    amplitude = c.uniform(250.0, 500.0)
    k = int(c.rng.integers(4, 8))
    phase = c.uniform(0.0, np.pi)
    for i in planes + box.first_slice:
        head = c.grid.box((center[0], center[1], float(c.grid.z[i])), (110.0, 110.0, 0.01))
        if head is None:
            continue
        angle = np.arctan2(head.v - center[1], head.u - center[0])
        radius = np.hypot(head.u - center[0], head.v - center[1])
        lobe = np.cos(k * angle + phase)
        streak = amplitude * np.sign(lobe) * np.abs(lobe) ** 24 * np.exp(-radius / 60.0)
        inside = ~c.in_tissue(head, Tissue.AIR)
        current = c.hu[head.index]
        c.paint(code, head, inside, current + streak)
