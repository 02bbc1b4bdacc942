"""Hemorrhage inside the brain and its CSF spaces (extra-axial collections live elsewhere).

Fresh blood is +55..+85 HU: a lobulated parenchymal clot with an edema rim, blood layering in
the dependent (posterior) ventricles, hyperdense cisterns and sylvian fissures or convexity sulci
(SAH), patchy cortical blood inside an infarct (hemorrhagic transformation), salt-and-pepper
foci at the frontal and temporal poles (contusion), tiny foci at the grey-white junction and
corpus callosum (diffuse axonal injury). Intracranial air (pneumocephalus) is drawn here too.
"""

from __future__ import annotations

import numpy as np

from synth.anatomy import Tissue
from synth.canvas import Canvas
from synth.cooccurrence import ICH_SUBTYPES
from synth.geometry import Box, bump, ellipsoid
from synth.lesions_masses import free_site, lobar_point, lobulated_ball
from synth.regions import (
    Point,
    convexity_point,
    random_point,
    territory_box,
    territory_weight,
)

_BRAIN = (Tissue.GM, Tissue.WM, Tissue.DEEP_GM, Tissue.CSF)


def intraparenchymal_hemorrhage(c: Canvas) -> None:
    code = "intraparenchymal_hemorrhage"
    big = c.plan.dominant == code and c.positive("mass_effect")
    radius = c.uniform(16.0, 24.0) if big else c.uniform(6.0, 11.0)
    deep = c.rng.random() < 0.6
    center = free_site(c, code, radius, _deep_point if deep else lobar_point)
    box, r = lobulated_ball(c, center, radius + 4.0)
    if box is None:
        return
    r = r * (radius + 4.0) / radius
    tissue = c.in_tissue(box, *_BRAIN)
    rim = 1.0 + c.uniform(2.0, 4.0) / radius
    c.paint(code, box, tissue & (r < rim), c.hu_of(Tissue.WM) - c.uniform(6.0, 9.0))
    c.paint(code, box, tissue & (r < 1.0), c.uniform(60.0, 80.0), mark=True)
    c.masses.append((center, radius))


def _deep_point(c: Canvas) -> Point:
    """A point in the basal ganglia or thalamus of either side (hypertensive hemorrhage)."""
    side = int(c.rng.choice([-1, 1]))
    return random_point(
        c, (Tissue.DEEP_GM,), (side * 8.0, side * 26.0), (-10.0, 14.0), (-6.0, 10.0)
    )


def intraventricular_hemorrhage(c: Canvas) -> None:
    """Blood layering in the occipital horns (a fluid level), or a cast of one ventricle."""
    code = "intraventricular_hemorrhage"
    value = c.uniform(55.0, 75.0)
    box = c.grid.box((0.0, 0.0, 0.0), (60.0, 60.0, 30.0))
    if box is None:
        return
    ventricles = c.in_tissue(box, Tissue.VENTRICLE) & (box.z > -25.0)
    if c.rng.random() < 0.65:
        level = c.uniform(22.0, 30.0)
        c.paint(code, box, ventricles & (box.v > level) & (np.abs(box.u) > 6.0), value, mark=True)
    else:
        side = c.plan.side
        c.paint(code, box, ventricles & (box.u * side > 0.5) & (box.z > -5.0), value, mark=True)
    if code not in c.slices or c.rng.random() < 0.3:
        c.paint(code, box, ventricles & (np.abs(box.u) < 3.0) & (box.z < 5.0), value, mark=True)
    fourth = c.grid.box((0.0, 24.0, -37.0), (8.0, 6.0, 9.0))
    if fourth is not None and (code not in c.slices or c.rng.random() < 0.3):
        c.paint(code, fourth, c.in_tissue(fourth, Tissue.VENTRICLE), value, mark=True)


def subarachnoid_hemorrhage(c: Canvas) -> None:
    """Aneurysmal: dense basal cisterns, sylvian and anterior interhemispheric fissures.
    Traumatic: dense sulci over one convexity."""
    code = "subarachnoid_hemorrhage"
    value = c.uniform(55.0, 75.0)
    basal = c.rng.random() < 0.5 and not c.positive("effaced_basal_cisterns")
    if basal:
        box = c.grid.box((0.0, -5.0, -15.0), (60.0, 45.0, 22.0))
        if box is not None:
            spaces = c.in_tissue(box, Tissue.CISTERN) | (
                c.in_tissue(box, Tissue.FISSURE) & ((np.abs(box.u) > 20.0) | (box.v < -30.0))
            )
            c.paint(code, box, spaces, value, mark=True)
    if not basal or code not in c.slices:
        _convexity_sah(c, code, value)


def _convexity_sah(c: Canvas, code: str, value: float) -> None:
    """Blood in the sulci over a convexity: the impact side first, else wherever sulci are
    free (not under another lesion)."""
    lateral = 0.0 if c.plan.side > 0 else 180.0
    z = c.grid.clamp_z(25.0, 16.0)
    semi = (30.0, 35.0, 22.0)
    best: tuple[int, Box, np.ndarray] | None = None
    for azimuth in (lateral + c.uniform(-30.0, 30.0), lateral - 60.0, 180.0 - lateral, -90.0):
        center = convexity_point(c.anatomy, azimuth, z, 10.0)
        box = c.grid.box(center, semi)
        if box is None:
            continue
        w = np.clip(2.0 * bump(ellipsoid(box, center, semi)), 0.0, 1.0)
        # the sulci by their geometry too, so blood shows even where edema closed them
        f, i = c.fields, box.index
        sulci = (f.sulcal[i] < 1.3 * c.anatomy.sulcal_width_mm) & (
            f.brain[i] < f.sulcal_reach[i[1:]]
        )
        spaces = c.in_tissue(box, Tissue.CSF, Tissue.FISSURE) | (
            sulci & c.in_tissue(box, Tissue.GM, Tissue.WM)
        )
        weight = w * spaces
        count = int((weight > 0.5).sum())
        if best is None or count > best[0]:
            best = (count, box, weight)
        if count > 30:
            break
    if best is not None:
        c.paint(code, best[1], best[2], value, mark=True)


def hemorrhagic_transformation(c: Canvas) -> None:
    """Patchy, partly gyriform blood inside the infarcted territory."""
    code = "hemorrhagic_transformation"
    for source in ("acute_territorial_infarct", "subacute_infarct"):
        if source in c.infarcts:
            side, territory, fraction = c.infarcts[source]
            break
    else:
        side, territory, fraction = c.plan.side, c.plan.territory, (0.2, 0.7)
    box = territory_box(c.grid, side, territory)
    if box is None:
        return
    w = territory_weight(box, side, territory, 2.0, fraction)
    patches = np.sin(0.5 * box.u + 0.7) * np.sin(0.45 * box.v + 1.1) * np.cos(0.4 * box.z) > 0.3
    tissue = c.in_tissue(box, Tissue.GM, Tissue.LESION, Tissue.DEEP_GM) & (
        c.fields.brain[box.index] < 12.0
    )
    tissue &= c.hu[box.index] < 50.0  # not over other blood or calcium
    c.paint(code, box, (w > 0.6) & patches & tissue, c.uniform(55.0, 70.0), mark=True)


def cerebral_contusion(c: Canvas) -> None:
    """Clustered hemorrhagic foci in oedematous cortex of a frontal or temporal pole."""
    code = "cerebral_contusion"
    side = c.plan.side
    frontal = (side * 22.0, -55.0, c.grid.nearest_slice_z(c.grid.clamp_z(-10.0, 6.0)))
    temporal = (side * 45.0, -22.0, c.grid.nearest_slice_z(c.grid.clamp_z(-26.0, 6.0)))
    poles = [frontal, temporal] if c.rng.random() < 0.5 else [temporal, frontal]
    poles += [(-u, v, z) for u, v, z in poles]  # the other side (contrecoup) if these are taken
    if c.plan.dominant == code:
        poles.insert(0, c.plan.focus)
    big = c.plan.dominant == code and c.positive("mass_effect")
    reach = c.uniform(16.0, 22.0) if big else c.uniform(10.0, 14.0)
    semi = (reach, reach, 0.8 * reach)
    best: tuple[int, Point, Box] | None = None
    for center in poles:  # the first pole with intact brain (not already a lesion), else the most
        box = c.grid.box(center, semi)
        if box is None:
            continue
        core = (ellipsoid(box, center, semi) < 0.5) & c.in_tissue(box, *_BRAIN)
        count = int(core.sum())
        if best is None or count > best[0]:
            best = (count, center, box)
        if count > 40:
            break
    if best is None:
        return
    _, center, box = best
    w = np.clip(1.6 * bump(ellipsoid(box, center, semi)), 0.0, 1.0)
    c.paint(code, box, w * c.in_tissue(box, *_BRAIN), c.hu_of(Tissue.WM) - c.uniform(6.0, 9.0))
    for _ in range(int(c.rng.integers(3, 7))):
        focus = (
            center[0] + c.uniform(-0.5, 0.5) * reach,
            center[1] + c.uniform(-0.5, 0.5) * reach,
            c.grid.nearest_slice_z(center[2] + c.uniform(-0.4, 0.4) * reach),
        )
        radius = c.uniform(2.5, 5.0)
        fsemi = (radius, radius, max(radius, 3.0))
        fbox = c.grid.box(focus, fsemi)
        if fbox is not None:
            blob = (ellipsoid(fbox, focus, fsemi) < 1.0) & c.in_tissue(fbox, *_BRAIN)
            c.paint(code, fbox, blob, c.uniform(55.0, 75.0), mark=True)
    c.masses.append((center, reach * 0.5))


def diffuse_axonal_injury(c: Canvas) -> None:
    """Tiny hemorrhagic foci at the grey-white junction, in the splenium and the midbrain."""
    code = "diffuse_axonal_injury"
    points = [(0.0, 30.0, c.grid.nearest_slice_z(12.0))]
    for _ in range(int(c.rng.integers(3, 7))):
        points.append(random_point(c, (Tissue.WM,), (-50.0, 50.0), (-55.0, 55.0), (0.0, 45.0)))
    if c.rng.random() < 0.4:
        points.append((c.plan.side * 6.0, 12.0, c.grid.nearest_slice_z(-12.0)))
    for point in points:
        radius = c.uniform(1.6, 2.6)
        semi = (radius, radius, 2.6)
        box = c.grid.box(point, semi)
        if box is not None:
            mask = (ellipsoid(box, point, semi) < 1.0) & c.in_tissue(
                box, Tissue.WM, Tissue.BRAINSTEM
            )
            c.paint(code, box, mask, c.uniform(60.0, 80.0), mark=True)


def ich_any(c: Canvas) -> None:
    """Alone (no subtype drawn): a small hemorrhagic focus of unspecified compartment."""
    code = "ich_any"
    drawn = [s for s in ICH_SUBTYPES if c.positive(s)]
    if drawn:
        for subtype in drawn:
            c.slices[code].update(c.slices[subtype])
        return
    radius = c.uniform(3.0, 5.0)
    center = free_site(c, code, radius)
    semi = (radius, radius, max(radius, 3.0))
    box = c.grid.box(center, semi)
    if box is not None:
        mask = (ellipsoid(box, center, semi) < 1.0) & c.in_tissue(box, *_BRAIN)
        c.paint(code, box, mask, c.uniform(60.0, 75.0), mark=True)


def pneumocephalus(c: Canvas) -> None:
    """Air bubbles in the non-dependent (frontal) extra-axial space and sulci."""
    code = "pneumocephalus"
    for i in range(int(c.rng.integers(3, 8))):
        azimuth = c.uniform(-150.0, -30.0)
        z = c.grid.nearest_slice_z(c.grid.clamp_z(c.uniform(-5.0, 40.0), 8.0))
        radius = c.uniform(4.0, 7.0) if i == 0 else c.uniform(1.5, 3.5)
        center = convexity_point(c.anatomy, azimuth, z, radius * 0.8)
        semi = (radius, radius, max(radius, 2.6))
        box = c.grid.box(center, semi)
        if box is not None:
            mask = (ellipsoid(box, center, semi) < 1.0) & c.in_tissue(
                box, Tissue.CSF, Tissue.FISSURE, Tissue.GM, Tissue.WM
            )
            c.paint(code, box, mask, c.uniform(-1000.0, -850.0), mark=True)
