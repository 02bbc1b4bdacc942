"""Ischemic and edematous findings: density changes of the parenchyma in a pattern.

Acute infarcts are ill-defined hypodense wedges in a vascular territory that swallow the sulci;
early ischemic change only erases the grey-white difference; subacute infarcts are sharper and
darker; chronic ones reach CSF density. Edema patterns differ by where they sit: around a mass
(vasogenic, white matter only), posterior and symmetric (PRES), periventricular (small vessel
disease), or everywhere supratentorial (hypoxic-ischemic injury).
"""

from __future__ import annotations

import numpy as np

from synth.anatomy import Tissue
from synth.canvas import Canvas
from synth.geometry import Box, bump, ellipsoid, segment_distance
from synth.lesions_structural import enlarge_lateral, supratentorial
from synth.regions import random_point, territory_box, territory_weight
from synth.ventricles import VentricleShape, lateral_ventricle, lateral_ventricle_box

_PARENCHYMA = (Tissue.GM, Tissue.WM, Tissue.DEEP_GM)


def patchy(box: Box, phase: float) -> np.ndarray:
    """An irregular, non-periodic blob pattern (sum of oblique waves), roughly -4..4."""
    u, v, z = box.u, box.v, box.z
    return (
        np.sin(0.23 * u + 0.11 * v + phase)
        + np.sin(0.19 * v - 0.13 * u + 1.7 * phase)
        + np.sin(0.29 * z + 0.07 * u + 2.3)
        + np.sin(0.17 * (u + v) + 0.21 * z + 0.5 * phase)
    )


def _territory(c: Canvas, code: str, same_as_plan: bool) -> tuple[int, str]:
    if same_as_plan:
        return c.plan.side, c.plan.territory
    side = int(c.rng.choice([-1, 1]))
    if any(s == side for s, _, _ in c.infarcts.values()):
        side = -side
    return side, c.choice(("MCA", "MCA", "ACA", "PCA"))


def _fraction(c: Canvas, whole: bool) -> tuple[float, float]:
    if whole:
        return 0.0, 1.0
    start = c.uniform(0.0, 0.4)
    return start, min(1.0, start + c.uniform(0.4, 0.6))


def _wedge(
    c: Canvas,
    code: str,
    side: int,
    territory: str,
    fraction: tuple[float, float],
    edge: float,
    value: float,
    tissues: tuple[Tissue, ...],
    strength: float = 1.0,
) -> None:
    box = territory_box(c.grid, side, territory)
    if box is None:
        return
    w = territory_weight(box, side, territory, edge, fraction) * supratentorial(box)
    c.paint(code, box, strength * w * c.in_tissue(box, *tissues), value, mark=True)
    c.infarcts[code] = (side, territory, fraction)


def acute_territorial_infarct(c: Canvas) -> None:
    code = "acute_territorial_infarct"
    side, territory = _territory(c, code, True)
    whole = c.plan.dominant == code and c.positive("mass_effect")
    value = c.hu_of(Tissue.WM) - c.uniform(7.0, 10.0)
    _wedge(c, code, side, territory, _fraction(c, whole), 7.0, value, (*_PARENCHYMA, Tissue.CSF))


def early_ischemic_change(c: Canvas) -> None:
    """Loss of grey-white differentiation: cortex and basal ganglia fall to white matter HU."""
    code = "early_ischemic_change"
    side, territory = _territory(c, code, True)
    fraction = _fraction(c, False)
    if "acute_territorial_infarct" in c.infarcts:  # the rest of the territory (the penumbra)
        start, end = c.infarcts["acute_territorial_infarct"][2]
        if end < 0.8:
            fraction = (max(0.0, end - 0.1), 1.0)
        elif start > 0.2:
            fraction = (0.0, start + 0.1)
        else:  # the whole territory is infarcted: the neighbouring one is at risk
            territory = "ACA" if territory != "ACA" else "MCA"
    box = territory_box(c.grid, side, territory)
    if box is None:
        return
    w = territory_weight(box, side, territory, 4.0, fraction) * supratentorial(box)
    c.paint(code, box, w * c.in_tissue(box, Tissue.GM, Tissue.DEEP_GM), c.hu_of(Tissue.WM) + 1.0)
    c.infarcts[code] = (side, territory, fraction)


def subacute_infarct(c: Canvas) -> None:
    code = "subacute_infarct"
    stroke = c.positive("acute_territorial_infarct") or c.positive("early_ischemic_change")
    side, territory = _territory(c, code, not stroke)
    value = c.hu_of(Tissue.WM) - c.uniform(11.0, 15.0)
    _wedge(c, code, side, territory, _fraction(c, False), 1.5, value, _PARENCHYMA)


def chronic_infarct(c: Canvas) -> None:
    """CSF-density wedge with a gliotic rim and ex vacuo enlargement of the nearby ventricle."""
    code = "chronic_infarct"
    side, territory = _territory(c, code, False)
    fraction = _fraction(c, False)
    box = territory_box(c.grid, side, territory)
    if box is None:
        return
    w = territory_weight(box, side, territory, 3.0, fraction) * supratentorial(box)
    tissue = c.in_tissue(box, *_PARENCHYMA, Tissue.CSF)
    c.paint(code, box, tissue * ((w > 0.15) & (w < 0.7)), c.hu_of(Tissue.WM) - 6.0)
    c.paint(code, box, tissue * (w >= 0.7), c.hu_of(Tissue.CSF) + c.uniform(2.0, 7.0), mark=True)
    c.infarcts[code] = (side, territory, fraction)
    s = c.anatomy.ventricle_size
    enlarge_lateral(c, code, side, VentricleShape(1.3 * s, 1.4 * s, 1.3 * s))


def hypoxic_ischemic_injury(c: Canvas) -> None:
    """Supratentorial grey matter falls to white-matter HU and white matter drops too; the
    cerebellum and brainstem are spared, so they look dense by comparison (reversal sign)."""
    code = "hypoxic_ischemic_injury"
    full = c.grid.full()
    supra = supratentorial(full)
    wm = c.hu_of(Tissue.WM)
    c.paint(
        code, full, c.in_tissue(full, Tissue.GM, Tissue.DEEP_GM) & supra, wm - c.uniform(1.0, 3.0)
    )
    c.paint(code, full, c.in_tissue(full, Tissue.WM) & supra, wm - c.uniform(3.0, 5.0))


def small_vessel_disease(c: Canvas) -> None:
    """Symmetric periventricular caps and patchy deep white matter hypodensity."""
    code = "small_vessel_disease"
    value = c.hu_of(Tissue.WM) - c.uniform(6.0, 9.0)
    s = c.anatomy.ventricle_size
    halo = VentricleShape(1.9 * s, 1.0 * s, 1.7 * s)
    for side in (-1, 1):
        box = lateral_ventricle_box(c.grid, side, halo)
        if box is not None:
            rim = lateral_ventricle(box, side, halo) & c.in_tissue(box, Tissue.WM) & (box.z > -2.0)
            c.paint(code, box, rim, value)
    box = c.grid.box((0.0, -5.0, 32.0), (45.0, 60.0, 16.0))
    if box is not None:
        blobs = patchy(box, c.uniform(0.0, 6.0))
        deep = c.fields.brain[box.index] > 8.0
        mask = c.in_tissue(box, Tissue.WM) & deep & (blobs > 1.1) & (np.abs(box.u) > 6.0)
        c.paint(code, box, mask, value)


def posterior_reversible_edema(c: Canvas) -> None:
    code = "posterior_reversible_edema"
    value = c.hu_of(Tissue.WM) - c.uniform(8.0, 11.0)
    z = c.grid.clamp_z(18.0, 16.0)
    for side in (-1, 1):
        center = (side * 33.0, 52.0, z)
        semi = (24.0, 26.0, 20.0)
        box = c.grid.box(center, semi)
        if box is not None:
            w = np.clip(2.0 * bump(ellipsoid(box, center, semi)), 0.0, 1.0)
            c.paint(code, box, w * c.in_tissue(box, Tissue.WM), value)


def vasogenic_edema(c: Canvas) -> None:
    """Finger-like white matter hypodensity sparing the cortex, around each drawn mass (or in a
    lobe when there is none)."""
    code = "vasogenic_edema"
    sites = list(c.masses)
    if not sites:
        point = random_point(c, (Tissue.WM,), (-45.0, 45.0), (-50.0, 45.0), (5.0, 40.0))
        sites = [(point, 6.0)]
    value = c.hu_of(Tissue.WM) - c.uniform(10.0, 13.0)
    for center, radius in sites:
        reach = radius + c.uniform(14.0, 24.0)
        semi = (reach, reach, 0.8 * reach)
        box = c.grid.box(center, semi)
        if box is not None:
            w = np.clip(1.8 * bump(ellipsoid(box, center, semi)), 0.0, 1.0)
            c.paint(code, box, w * c.in_tissue(box, Tissue.WM), value)


def acute_lacunar_infarct(c: Canvas) -> None:
    code = "acute_lacunar_infarct"
    point = random_point(c, (Tissue.DEEP_GM,), (-28.0, 28.0), (-15.0, 18.0), (-8.0, 12.0))
    radius = c.uniform(3.5, 6.0)
    semi = (radius, radius, max(radius, 3.0))
    box = c.grid.box(point, semi)
    if box is not None:
        w = np.clip(1.6 * bump(ellipsoid(box, point, semi)), 0.0, 1.0)
        value = c.hu_of(Tissue.WM) - c.uniform(7.0, 10.0)
        c.paint(code, box, w * c.in_tissue(box, Tissue.DEEP_GM, Tissue.WM), value, mark=True)


def chronic_lacunar_infarcts(c: Canvas) -> None:
    code = "chronic_lacunar_infarcts"
    for _ in range(int(c.rng.integers(2, 6))):
        point = random_point(
            c, (Tissue.DEEP_GM, Tissue.WM), (-30.0, 30.0), (-18.0, 18.0), (-6.0, 30.0)
        )
        radius = c.uniform(2.5, 4.5)
        semi = (radius, radius, max(radius, 3.0))
        box = c.grid.box(point, semi)
        if box is not None:
            mask = (ellipsoid(box, point, semi) < 1.0) & c.in_tissue(box, Tissue.DEEP_GM, Tissue.WM)
            c.paint(code, box, mask, c.hu_of(Tissue.CSF) + c.uniform(3.0, 6.0), mark=True)


def cerebellar_infarct(c: Canvas) -> None:
    """Hypodense wedge in the inferior posterior cerebellar hemisphere (PICA territory)."""
    code = "cerebellar_infarct"
    side = c.plan.side
    big = c.positive("mass_effect") and c.plan.dominant is None
    center = (side * 24.0, 44.0, c.grid.clamp_z(-44.0, 6.0))
    semi = (20.0, 22.0, 14.0) if big else (14.0, 16.0, 10.0)
    box = c.grid.box(center, semi)
    if box is None:
        return
    w = np.clip(2.0 * bump(ellipsoid(box, center, semi)), 0.0, 1.0) * (box.u * side > 4.0)
    tissue = c.in_tissue(box, Tissue.CEREBELLUM, Tissue.CEREBELLAR_WM, Tissue.CSF)
    c.paint(code, box, w * tissue, c.hu_of(Tissue.WM) - c.uniform(7.0, 10.0), mark=True)


def brainstem_infarct(c: Canvas) -> None:
    """Paramedian pontine infarct, sharply bounded by the midline."""
    code = "brainstem_infarct"
    side = int(c.rng.choice([-1, 1]))
    center = (side * 5.0, 6.0, c.grid.nearest_slice_z(-33.0))
    semi = (5.5, 7.5, 6.0)
    box = c.grid.box(center, semi)
    if box is not None:
        mask = (ellipsoid(box, center, semi) < 1.0) & (box.u * side > 0.6)
        value = c.hu_of(Tissue.WM) - c.uniform(8.0, 11.0)
        c.paint(code, box, mask & c.in_tissue(box, Tissue.BRAINSTEM), value, mark=True)


def encephalomalacia(c: Canvas) -> None:
    """Irregular CSF-density tissue loss at a frontal or temporal pole, with a gliotic rim."""
    code = "encephalomalacia"
    side = int(c.rng.choice([-1, 1]))
    if c.rng.random() < 0.5:
        center = (side * 22.0, -58.0, c.grid.clamp_z(-8.0, 6.0))
    else:
        center = (side * 44.0, -22.0, c.grid.clamp_z(-26.0, 6.0))
    semi = (c.uniform(12.0, 17.0), c.uniform(12.0, 17.0), c.uniform(9.0, 13.0))
    box = c.grid.box(center, semi)
    if box is None:
        return
    lumpy = 0.25 * np.sin(0.35 * box.u + 1.3) * np.cos(0.4 * box.v) * np.sin(0.3 * box.z + 2.0)
    r = np.sqrt(ellipsoid(box, center, semi)) + lumpy
    tissue = c.in_tissue(box, *_PARENCHYMA, Tissue.CSF)
    c.paint(code, box, tissue & (r >= 0.75) & (r < 1.0), c.hu_of(Tissue.WM) - 6.0)
    c.paint(code, box, tissue & (r < 0.75), c.hu_of(Tissue.CSF) + c.uniform(3.0, 8.0), mark=True)


def hyperdense_artery_sign(c: Canvas) -> None:
    """Dense thrombosed M1 segment of the middle cerebral artery, in the sylvian cistern."""
    code = "hyperdense_artery_sign"
    side = c.plan.side
    z = c.grid.nearest_slice_z(-15.0)
    p0, p1 = (side * 5.0, -10.0, z), (side * 32.0, -14.0, z)
    box = c.grid.box((side * 18.5, -12.0, z), (16.0, 5.0, 2.5))
    if box is None:
        return
    tube = segment_distance(box, p0, p1) < c.uniform(1.6, 2.1)
    tissue = c.in_tissue(
        box,
        Tissue.GM,
        Tissue.WM,
        Tissue.CISTERN,
        Tissue.FISSURE,
        Tissue.CSF,
        Tissue.DEEP_GM,
        Tissue.LESION,
    )
    c.paint(code, box, tube & tissue, c.uniform(60.0, 75.0), mark=True)


def dense_venous_sinus(c: Canvas) -> None:
    """Thrombosed dural sinus: the superior sagittal (triangular, at the vertex and occiput) or
    a transverse sinus along the occipital inner table."""
    code = "dense_venous_sinus"
    value = c.uniform(70.0, 90.0)
    if c.rng.random() < 0.6:
        box = c.grid.box((0.0, 25.0, 35.0), (8.0, 75.0, 50.0))
        if box is None:
            return
        inner = c.fields.inner[box.index]
        triangle = (inner >= 0.0) & (inner < 6.0) & (np.abs(box.u) < 4.5 * (1.0 - inner / 6.0))
        mask = (
            triangle
            & (box.v > -30.0)
            & c.in_tissue(box, Tissue.FISSURE, Tissue.DURA, Tissue.CSF, Tissue.GM)
        )
    else:
        side = int(c.rng.choice([-1, 1]))
        box = c.grid.box((side * 35.0, 60.0, -25.0), (40.0, 35.0, 12.0))
        if box is None:
            return
        inner = c.fields.inner[box.index]
        mask = (inner >= 0.0) & (inner < 5.0) & (box.u * side > 8.0) & (box.v > 25.0)
        mask &= (box.z > -32.0) & (box.z < -18.0)
        mask &= c.in_tissue(box, Tissue.CSF, Tissue.GM, Tissue.WM, Tissue.CEREBELLUM, Tissue.DURA)
    c.paint(code, box, mask, value, mark=True)
