"""Extra-axial findings: subdural and epidural collections, hygromas, cysts and meningiomas.

A collection sits between the inner table and the brain: it has a thickness profile over a
footprint on the convexity (a long tapering crescent for a subdural, a short steep lens for an
epidural), and the cortex under it is redrawn pushed inwards by that thickness, its sulci
compressed, so the brain is displaced rather than painted over.
"""

from __future__ import annotations

import numpy as np

from synth.anatomy import Tissue
from synth.canvas import Canvas
from synth.geometry import bump, ellipsoid
from synth.lesions_structural import redraw_cortex
from synth.regions import convexity_box, convexity_point, footprint

# Candidate sites (azimuth degrees: 0 patient left, 90 posterior, 180 right, -90 anterior).
_SITES_LEFT = (10.0, 40.0, -25.0)
_INTRACRANIAL = (Tissue.GM, Tissue.WM, Tissue.CSF, Tissue.FISSURE)


def _site(c: Canvas, code: str) -> tuple[float, float]:
    """Azimuth and height of a collection: the dominant one at the plan's side, the others
    spread out so that several collections do not overlap."""
    used = c.collection_sites
    side = c.plan.side if (c.plan.dominant == code or not used) else -c.plan.side
    candidates = [a if side > 0 else 180.0 - a for a in _SITES_LEFT]
    candidates += [180.0 - a for a in candidates]
    for azimuth in candidates:
        if all(abs((azimuth - u + 180.0) % 360.0 - 180.0) > 55.0 for u in used):
            break
    used.append(azimuth)
    return azimuth + c.uniform(-10.0, 10.0), c.grid.clamp_z(c.uniform(5.0, 35.0), 20.0)


def draw_collection(
    c: Canvas,
    code: str,
    site: tuple[float, float],
    size: tuple[float, float],
    thickness: float,
    lens: bool,
    value: float | np.ndarray,
) -> np.ndarray | None:
    """Draw a collection; returns its mask within its box (for further detail), or None."""
    azimuth, z = site
    width, height = size
    anat = c.anatomy
    box = convexity_box(c.grid, anat, azimuth, z, width, height, thickness + 20.0)
    if box is None:
        return None
    r2 = footprint(box, anat, azimuth, z, width, height)
    inside = np.clip(1.0 - r2, 0.0, 1.0)
    t = thickness * (np.sqrt(inside) if lens else inside)
    redraw_cortex(c, code, box, 1.0 - 0.8 * (t > 0.5), t, extra_mask=t > 0.0)
    inner = c.fields.inner[box.index]
    mask = (inner >= 0.0) & (inner < t) & c.in_tissue(box, *_INTRACRANIAL)
    c.paint(code, box, mask, value, mark=True)
    return mask


def _thickness(
    c: Canvas, code: str, small: tuple[float, float], large: tuple[float, float]
) -> float:
    big = c.plan.dominant == code and c.positive("mass_effect")
    return c.uniform(*(large if big else small))


def subdural_hematoma_acute(c: Canvas) -> None:
    code = "subdural_hematoma_acute"
    thickness = _thickness(c, code, (4.0, 7.0), (11.0, 18.0))
    size = (c.uniform(45.0, 65.0), c.uniform(40.0, 55.0))
    draw_collection(c, code, _site(c, code), size, thickness, False, c.uniform(62.0, 80.0))


def subdural_hematoma_subacute(c: Canvas) -> None:
    code = "subdural_hematoma_subacute"
    thickness = _thickness(c, code, (5.0, 8.0), (11.0, 16.0))
    size = (c.uniform(45.0, 65.0), c.uniform(40.0, 55.0))
    draw_collection(c, code, _site(c, code), size, thickness, False, c.uniform(33.0, 42.0))


def subdural_hematoma_chronic(c: Canvas) -> None:
    """Hypodense crescent; often a denser dependent (posterior) layer of settled cells."""
    code = "subdural_hematoma_chronic"
    thickness = _thickness(c, code, (5.0, 9.0), (12.0, 20.0))
    site = _site(c, code)
    size = (c.uniform(50.0, 70.0), c.uniform(45.0, 60.0))
    mask = draw_collection(c, code, site, size, thickness, False, c.uniform(12.0, 22.0))
    if mask is not None and c.rng.random() < 0.4:
        box = convexity_box(c.grid, c.anatomy, *site, *size, thickness + 20.0)
        assert box is not None
        level = convexity_point(c.anatomy, site[0], site[1])[1] + c.uniform(0.0, 15.0)
        c.paint(code, box, mask & (box.v > level), c.uniform(30.0, 40.0), mark=True)


def epidural_hematoma(c: Canvas) -> None:
    """Biconvex lens at the impact site; a swirl of unclotted (less dense) blood in some."""
    code = "epidural_hematoma"
    thickness = _thickness(c, code, (7.0, 10.0), (14.0, 24.0))
    site = (c.plan.impact_azimuth, c.plan.impact_z)
    size = (c.uniform(22.0, 32.0), c.uniform(22.0, 30.0))
    c.collection_sites.append(site[0])
    mask = draw_collection(c, code, site, size, thickness, True, c.uniform(58.0, 85.0))
    if mask is not None and c.rng.random() < 0.3:
        center = convexity_point(c.anatomy, site[0], site[1], 0.5 * thickness)
        semi = (0.3 * thickness, 0.3 * thickness, 0.3 * thickness)
        box = c.grid.box(center, semi)
        if box is not None:
            swirl = (ellipsoid(box, center, semi) < 1.0) & c.in_tissue(box, Tissue.LESION)
            c.paint(code, box, swirl, c.uniform(35.0, 45.0))


def subdural_hygroma(c: Canvas) -> None:
    """Bifrontal crescents of CSF density."""
    code = "subdural_hygroma"
    z = c.grid.clamp_z(c.uniform(10.0, 30.0), 20.0)
    for azimuth in (-60.0, -120.0):
        size = (c.uniform(25.0, 35.0), c.uniform(30.0, 40.0))
        draw_collection(
            c, code, (azimuth, z), size, c.uniform(4.0, 8.0), False, c.uniform(0.0, 8.0)
        )


def extra_axial_collection(c: Canvas) -> None:
    """Alone (no subdural, epidural or hygroma drawn): a thin parafalcine fluid collection."""
    code = "extra_axial_collection"
    members = (
        "subdural_hematoma_acute",
        "subdural_hematoma_subacute",
        "subdural_hematoma_chronic",
        "epidural_hematoma",
        "subdural_hygroma",
    )
    if any(c.positive(m) for m in members):
        for m in members:
            c.slices[code].update(c.slices[m])
        return
    side = int(c.rng.choice([-1, 1]))
    z = c.grid.clamp_z(c.uniform(30.0, 45.0), 12.0)
    box = c.grid.box((side * 5.0, 0.0, z), (7.0, 50.0, 15.0))
    if box is None:
        return
    t = c.uniform(3.0, 5.0) * bump(((box.v) / 48.0) ** 2 + ((box.z - z) / 15.0) ** 2)
    su = box.u * side
    mask = (su > 0.6) & (su < 0.6 + t) & c.in_tissue(box, *_INTRACRANIAL)
    c.paint(code, box, mask, c.uniform(12.0, 22.0), mark=True)


def arachnoid_cyst(c: Canvas) -> None:
    """CSF-density, sharply marginated cyst in the anterior middle cranial fossa."""
    code = "arachnoid_cyst"
    side = int(c.rng.choice([-1, 1]))
    center = (side * 40.0, -28.0, c.grid.clamp_z(-30.0, 6.0))
    semi = (c.uniform(11.0, 15.0), c.uniform(13.0, 18.0), c.uniform(8.0, 12.0))
    box = c.grid.box(center, semi)
    if box is None:
        return
    mask = (ellipsoid(box, center, semi) < 1.0) & c.in_tissue(box, *_INTRACRANIAL, Tissue.DEEP_GM)
    c.paint(code, box, mask, c.hu_of(Tissue.CSF) + c.uniform(-1.0, 3.0), mark=True)


def extra_axial_mass(c: Canvas) -> None:
    """Meningioma: a dural-based hyperdense dome with a CSF cleft, speckled calcification in
    some, and sclerosis of the overlying bone."""
    code = "extra_axial_mass"
    if c.plan.dominant == code:
        u, v, z = c.plan.focus
        azimuth = float(np.degrees(np.arctan2(v / c.anatomy.outer[1], u / c.anatomy.outer[0])))
    else:
        azimuth = float(c.rng.choice([10.0, 170.0, -60.0, -120.0, 60.0, 120.0]))
        azimuth += c.uniform(-15.0, 15.0)
        z = c.uniform(5.0, 40.0)
    z = c.grid.clamp_z(z, 14.0)
    big = c.plan.dominant == code and c.positive("mass_effect")
    radius = c.uniform(18.0, 24.0) if big else c.uniform(9.0, 14.0)
    center = convexity_point(c.anatomy, azimuth, z, 0.25 * radius)
    semi = (radius + 12.0, radius + 12.0, radius + 2.0)
    box = c.grid.box(center, semi)
    if box is None:
        return
    r = np.sqrt(ellipsoid(box, center, (radius, radius, radius)))
    inner = c.fields.inner[box.index]
    intracranial = (inner >= 0.0) & c.in_tissue(box, *_INTRACRANIAL, Tissue.DEEP_GM)
    c.paint(code, box, intracranial & (r >= 1.0) & (r < 1.0 + 1.5 / radius), c.hu_of(Tissue.CSF))
    value = np.full(r.shape, c.uniform(45.0, 60.0), dtype=np.float32)
    if c.rng.random() < 0.35:
        speckle = np.sin(1.7 * box.u + 0.3) * np.sin(1.9 * box.v) * np.sin(2.3 * box.z) > 0.55
        value = np.where(speckle, c.uniform(150.0, 300.0), value).astype(np.float32)
    c.paint(code, box, intracranial & (r < 1.0), value, mark=True)
    bone = c.in_tissue(box, Tissue.DIPLOE) & (r < 1.3)
    c.paint(code, box, bone, c.hu_of(Tissue.BONE))
