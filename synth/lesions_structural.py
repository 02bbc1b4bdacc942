"""Structural findings: CSF spaces, ventricles, midline shift and herniations.

These redraw anatomy (tissue labels) rather than add a lesion: atrophy widens sulci and the
subarachnoid space, edema and mass effect close them, hydrocephalus enlarges the ventricles,
midline shift warps the brain across the falx, herniations push brain into the cisterns.
"""

from __future__ import annotations

import numpy as np

from synth.anatomy import Tissue
from synth.canvas import Canvas
from synth.geometry import Box, bump, ellipsoid
from synth.phantom import label_cerebellum, label_cerebrum, sylvian_box, sylvian_fissure
from synth.skull_base import tentorium_z
from synth.ventricles import (
    VentricleShape,
    fourth_ventricle,
    lateral_ventricle,
    lateral_ventricle_box,
    third_ventricle,
)


def supratentorial(box: Box) -> np.ndarray:
    return (box.z >= tentorium_z(box.u, box.v)) & (box.z > -60.0)


def infratentorial(box: Box) -> np.ndarray:
    return (box.z < tentorium_z(box.u, box.v)) & (box.z > -66.0)


def redraw_cortex(
    c: Canvas,
    code: str,
    box: Box | None,
    width_factor: float | np.ndarray = 1.0,
    recession_mm: float | np.ndarray = 0.0,
    extra_mask: np.ndarray | None = None,
) -> None:
    """Relabel cerebral cortex, white matter and sulci with changed sulcal width / surface."""
    if box is None:
        return
    f = c.fields
    i = box.index
    new = label_cerebrum(
        f.brain[i], f.sulcal[i], f.sulcal_reach[i[1:]], c.anatomy, width_factor, recession_mm
    )
    mask = c.in_tissue(box, Tissue.GM, Tissue.WM, Tissue.CSF) & supratentorial(box)
    if extra_mask is not None:
        mask &= extra_mask
    c.relabel(code, box, mask, new)


def widen_sylvian(c: Canvas, code: str, half_width: float) -> None:
    for side in (-1, 1):
        box = sylvian_box(c.grid, side)
        if box is not None:
            brain = c.in_tissue(box, Tissue.GM, Tissue.WM, Tissue.CSF)
            c.relabel(code, box, sylvian_fissure(box, side, half_width) & brain, Tissue.FISSURE)


def close_sylvian(c: Canvas, code: str) -> None:
    for side in (-1, 1):
        box = sylvian_box(c.grid, side)
        if box is not None:
            fissure = c.in_tissue(box, Tissue.FISSURE) & (np.abs(box.u) > 20.0)
            c.relabel(code, box, fissure, Tissue.GM)


def _ventricle_shape(
    c: Canvas, body: float, temporal: float, occipital: float, spread: float = 0.0
) -> VentricleShape:
    s = c.anatomy.ventricle_size
    return VentricleShape(s * body, s * temporal, s * occipital, spread)


def enlarge_lateral(c: Canvas, code: str, side: int, shape: VentricleShape) -> None:
    box = lateral_ventricle_box(c.grid, side, shape)
    if box is None:
        return
    mask = lateral_ventricle(box, side, shape) & c.in_tissue(
        box, Tissue.GM, Tissue.WM, Tissue.DEEP_GM, Tissue.CSF
    )
    c.relabel(code, box, mask & (box.z > -40.0), Tissue.VENTRICLE)


def shrink_lateral(c: Canvas, code: str, side: int, shape: VentricleShape) -> None:
    box = lateral_ventricle_box(c.grid, side, _ventricle_shape(c, 2.2, 2.6, 2.2))
    if box is None:
        return
    keep = lateral_ventricle(box, side, shape) | third_ventricle(box, 1.5)
    lateral = (box.u * side > 0.5) & ((box.z > -5.0) | (box.u * side > 12.0))
    mask = c.in_tissue(box, Tissue.VENTRICLE) & lateral & ~keep & (box.z > -25.0)
    c.relabel(code, box, mask, Tissue.WM)


def enlarge_third(c: Canvas, code: str, width: float) -> None:
    box = c.grid.box((0.0, 2.0, -3.0), (2.5 * width + 2, 14.0, 12.0 + 2 * width))
    if box is not None:
        mask = third_ventricle(box, width) & c.in_tissue(box, Tissue.DEEP_GM, Tissue.WM, Tissue.GM)
        c.relabel(code, box, mask, Tissue.VENTRICLE)


def enlarge_fourth(c: Canvas, code: str, size: float) -> None:
    box = c.grid.box((0.0, 24.0, -37.0), (7 * size, 6 * size, 8.0))
    if box is not None:
        mask = fourth_ventricle(box, size) & c.in_tissue(
            box, Tissue.CEREBELLUM, Tissue.BRAINSTEM, Tissue.CSF
        )
        c.relabel(code, box, mask, Tissue.VENTRICLE)


def global_atrophy(c: Canvas) -> None:
    code = "global_atrophy"
    redraw_cortex(c, code, c.grid.full(), c.uniform(2.4, 3.2), c.uniform(2.5, 4.0))
    widen_sylvian(c, code, c.anatomy.sulcal_width_mm * c.uniform(3.0, 4.0))
    for side in (-1, 1):
        enlarge_lateral(c, code, side, _ventricle_shape(c, 1.25, 1.5, 1.2))
    enlarge_third(c, code, 1.6)


def focal_atrophy(c: Canvas) -> None:
    code = "focal_atrophy"
    side = int(c.rng.choice([-1, 1]))
    center = c.choice(("frontal", "temporal"))
    point = (side * 40.0, -45.0, 15.0) if center == "frontal" else (side * 48.0, -18.0, -22.0)
    point = (point[0], point[1], c.grid.clamp_z(point[2], 10.0))
    half = (38.0, 38.0, 26.0)
    box = c.grid.box(point, half)
    if box is None:
        return
    w = bump(ellipsoid(box, point, half))
    redraw_cortex(c, code, box, 1.0 + 2.5 * w, 5.0 * w)
    if center == "temporal":
        enlarge_lateral(c, code, side, _ventricle_shape(c, 1.0, 2.2, 1.0))


def cerebellar_atrophy(c: Canvas) -> None:
    code = "cerebellar_atrophy"
    box = c.grid.box((0.0, 45.0, -42.0), (70.0, 45.0, 28.0))
    if box is None:
        return
    new = label_cerebellum(box, c.fields.brain[box.index], c.uniform(2.6, 3.2), c.uniform(2.5, 4))
    mask = (
        c.in_tissue(box, Tissue.CEREBELLUM, Tissue.CEREBELLAR_WM)
        & infratentorial(box)
        & (box.v > 10)
    )
    c.relabel(code, box, mask & (new == Tissue.CSF), Tissue.CSF)
    enlarge_fourth(c, code, 1.5)


def diffuse_cerebral_edema(c: Canvas) -> None:
    code = "diffuse_cerebral_edema"
    redraw_cortex(c, code, c.grid.full(), 0.0, -c.anatomy.csf_mm - 0.5)
    close_sylvian(c, code)
    if not (c.positive("acute_hydrocephalus") or c.positive("ventriculomegaly")):
        for side in (-1, 1):
            shrink_lateral(c, code, side, _ventricle_shape(c, 0.55, 0.4, 0.6))
    full = c.grid.full()
    grey_white = c.hu_of(Tissue.GM) - c.hu_of(Tissue.WM)
    c.paint(
        code,
        full,
        c.in_tissue(full, Tissue.GM, Tissue.DEEP_GM),
        c.hu_of(Tissue.WM) + 0.45 * grey_white,
    )


def ventriculomegaly(c: Canvas) -> None:
    code = "ventriculomegaly"
    if c.positive("acute_hydrocephalus"):
        c.slices[code].update(c.slices["acute_hydrocephalus"])
        return
    for side in (-1, 1):
        enlarge_lateral(c, code, side, _ventricle_shape(c, 1.75, 1.8, 1.5))
    enlarge_third(c, code, 2.0)
    enlarge_fourth(c, code, 1.3)


def acute_hydrocephalus(c: Canvas) -> None:
    code = "acute_hydrocephalus"
    shape = _ventricle_shape(c, 2.1, 2.8, 1.6)
    for side in (-1, 1):
        enlarge_lateral(c, code, side, shape)
        halo = VentricleShape(shape.body * 1.45, shape.temporal * 1.2, shape.occipital * 1.3)
        box = lateral_ventricle_box(c.grid, side, halo)
        if box is not None:
            rim = lateral_ventricle(box, side, halo) & c.in_tissue(box, Tissue.WM, Tissue.GM)
            c.paint(code, box, rim & (box.z > 0.0), c.hu_of(Tissue.WM) - c.uniform(7.0, 10.0))
    enlarge_third(c, code, 2.7)
    redraw_cortex(c, code, c.grid.full(), 0.35, -0.5 * c.anatomy.csf_mm)


def trapped_ventricle(c: Canvas) -> None:
    code = "trapped_ventricle"
    enlarge_lateral(c, code, -c.plan.side, _ventricle_shape(c, 1.7, 2.8, 2.4))


def fourth_ventricle_compression(c: Canvas) -> None:
    code = "fourth_ventricle_compression"
    box = c.grid.box((0.0, 24.0, -37.0), (8.0, 7.0, 9.0))
    if box is None:
        return
    keep = ellipsoid(box, (c.plan.side * -1.5, 22.0, -37.0), (1.2, 1.5, 5.0)) < 1.0
    mask = c.in_tissue(box, Tissue.VENTRICLE) & ~keep & (np.abs(box.u) < 8.0)
    c.relabel(code, box, mask, Tissue.CEREBELLUM)


def congenital_malformation(c: Canvas) -> None:
    """Agenesis of the corpus callosum: widely spaced parallel lateral ventricles, dilated
    occipital horns (colpocephaly), a high third ventricle open to the interhemispheric fissure."""
    code = "congenital_malformation"
    for side in (-1, 1):
        shrink_lateral(c, code, side, VentricleShape(0.01, 1.0, 0.01))
        enlarge_lateral(c, code, side, _ventricle_shape(c, 1.0, 1.0, 2.3, spread=9.0))
    box = c.grid.box((0.0, 0.0, 14.0), (4.0, 40.0, 18.0))
    if box is not None:
        high_third = ellipsoid(box, (0.0, 2.0, 10.0), (2.8, 12.0, 14.0)) < 1.0
        cleft = (np.abs(box.u) < 1.5) & (np.abs(box.v) < 38.0) & (box.z > 18.0)
        c.relabel(code, box, (high_third | cleft) & ~c.in_tissue(box, Tissue.DURA), Tissue.FISSURE)


def mass_effect(c: Canvas) -> None:
    code = "mass_effect"
    u, v, z = c.plan.focus
    if z < -15.0 and v > 10.0:  # posterior fossa: folia and cisterna magna effaced
        half = (40.0, 35.0, 22.0)
        box = c.grid.box((u, v, z), half)
        if box is not None:
            w = bump(ellipsoid(box, (u, v, z), half))
            mask = c.in_tissue(box, Tissue.CSF, Tissue.CISTERN) & infratentorial(box) & (w > 0.2)
            c.relabel(code, box, mask, Tissue.CEREBELLUM)
        return
    half = (55.0, 60.0, 40.0)
    box = c.grid.box((u, v, z), half)
    if box is not None:
        w = bump(ellipsoid(box, (u, v, z), half))
        redraw_cortex(c, code, box, 1.0 - w, -c.anatomy.csf_mm * w)
    shrink_lateral(c, code, c.plan.side, _ventricle_shape(c, 0.45, 0.35, 0.6))


def midline_shift(c: Canvas) -> None:
    code = "midline_shift"
    subfalcine = c.positive("subfalcine_herniation")
    size = c.uniform(9.0, 13.0) if subfalcine else c.uniform(4.0, 8.0)
    _shift(c, code, size, (-5.0, 5.0), (45.0, 28.0), 60.0)
    if subfalcine:
        c.slices["subfalcine_herniation"].update(c.slices[code])


def subfalcine_herniation(c: Canvas) -> None:
    """The cingulate gyrus and frontal horn pushed under the falx, anteriorly."""
    code = "subfalcine_herniation"
    if not c.positive("midline_shift"):
        _shift(c, code, c.uniform(8.0, 11.0), (-5.0, 5.0), (45.0, 28.0), 60.0)
    _shift(c, code, c.uniform(5.0, 7.0), (-20.0, 12.0), (22.0, 14.0), 40.0)


def _shift(
    c: Canvas,
    code: str,
    size_mm: float,
    center_vz: tuple[float, float],
    radius_vz: tuple[float, float],
    reach_u: float,
) -> None:
    """Warp the brain sideways, away from the dominant lesion, by a smooth compact field."""
    grid = c.grid
    box = grid.box((0.0, center_vz[0], center_vz[1]), (reach_u, radius_vz[0], radius_vz[1]))
    if box is None:
        return
    r2 = ((box.v - center_vz[0]) / radius_vz[0]) ** 2 + ((box.z - center_vz[1]) / radius_vz[1]) ** 2
    d = -c.plan.side * size_mm * bump(r2) * bump((box.u / reach_u) ** 2)
    pose = grid.pose
    px = pose.scale / grid.pixel_spacing_mm
    zs, rs, cs = box.index
    n = grid.shape[1]
    rows = np.arange(rs.start, rs.stop)[None, :, None]
    cols = np.arange(cs.start, cs.stop)[None, None, :]
    src_r = np.clip(np.rint(rows - d * px * np.sin(pose.yaw_rad)), 0, n - 1).astype(np.intp)
    src_c = np.clip(np.rint(cols - d * px * np.cos(pose.yaw_rad)), 0, n - 1).astype(np.intp)
    planes = np.arange(zs.start, zs.stop)[:, None, None]
    moved_t = c.tissue[planes, src_r, src_c]
    moved_h = c.hu[planes, src_r, src_c]
    view_t, view_h = c.tissue[box.index], c.hu[box.index]
    changed = (moved_t != view_t) | (np.abs(moved_h - view_h) > 0.25)
    view_t[changed] = moved_t[changed]
    view_h[changed] = moved_h[changed]
    c.record(code, box, changed)


def effaced_basal_cisterns(c: Canvas) -> None:
    code = "effaced_basal_cisterns"
    box = c.grid.box((0.0, 15.0, -30.0), (20.0, 50.0, 35.0))
    if box is None:
        return
    cisterns = c.in_tissue(box, Tissue.CISTERN)
    c.relabel(code, box, cisterns & (box.v > 35.0), Tissue.CEREBELLUM)
    c.relabel(code, box, cisterns & (box.v <= 35.0), Tissue.GM)


def transtentorial_herniation(c: Canvas) -> None:
    """Uncal herniation: the medial temporal lobe bulges into the suprasellar and ambient
    cisterns, the midbrain is pushed across and narrowed, the opposite ambient cistern widens."""
    code = "transtentorial_herniation"
    s = c.plan.side
    box = c.grid.box((0.0, 6.0, -14.0), (22.0, 22.0, 9.0))
    if box is None:
        return
    old_midbrain = c.in_tissue(box, Tissue.BRAINSTEM)
    new_midbrain = ellipsoid(box, (-s * 3.5, 9.0, -14.0), (8.5, 9.5, 8.0)) < 1.0
    widened = (ellipsoid(box, (-s * 11.0, 11.0, -14.0), (5.0, 10.0, 7.0)) < 1.0) & ~new_midbrain
    uncus = ellipsoid(box, (s * 11.0, -3.0, -15.0), (7.0, 9.0, 5.5)) < 1.0
    c.relabel(code, box, old_midbrain & ~new_midbrain, Tissue.CISTERN)
    c.relabel(code, box, new_midbrain, Tissue.BRAINSTEM)
    c.relabel(
        code,
        box,
        widened & c.in_tissue(box, Tissue.GM, Tissue.WM, Tissue.CISTERN, Tissue.CSF),
        Tissue.CISTERN,
    )
    c.relabel(code, box, uncus & ~new_midbrain, Tissue.GM)


def tonsillar_herniation(c: Canvas) -> None:
    code = "tonsillar_herniation"
    _tonsils(c, code, -66.0, 7.0)
    box = c.grid.box((0.0, 50.0, -56.0), (13.0, 11.0, 8.0))
    if box is not None:
        c.relabel(code, box, c.in_tissue(box, Tissue.CISTERN), Tissue.CEREBELLUM)


def _tonsils(c: Canvas, code: str, z: float, height: float) -> None:
    for side in (-1, 1):
        center = (side * 5.5, 27.0, z)
        semi = (5.0, 6.5, height)
        box = c.grid.box(center, semi)
        if box is not None:
            mask = (ellipsoid(box, center, semi) < 1.0) & c.in_tissue(
                box, Tissue.CSF, Tissue.CISTERN
            )
            c.relabel(code, box, mask, Tissue.CEREBELLUM)


def chiari_malformation(c: Canvas) -> None:
    """Peg-like tonsils low in the cervical canal, no cisterna magna, a cervical syrinx."""
    code = "chiari_malformation"
    _tonsils(c, code, -72.0, 13.0)
    box = c.grid.box((0.0, 50.0, -56.0), (13.0, 11.0, 8.0))
    if box is not None:
        c.relabel(code, box, c.in_tissue(box, Tissue.CISTERN), Tissue.CEREBELLUM)
    box = c.grid.box((0.0, 18.0, -90.0), (4.0, 4.0, 20.0))
    if box is not None:
        syrinx = ((box.u / 2.6) ** 2 + ((box.v - 18.0) / 2.2) ** 2 < 1.0) & (box.z < -71.0)
        c.relabel(code, box, syrinx & c.in_tissue(box, Tissue.CORD), Tissue.VENTRICLE)


def empty_sella(c: Canvas) -> None:
    """An enlarged pituitary fossa filled with CSF, the gland a thin layer on its floor."""
    code = "empty_sella"
    center = (0.0, -24.0, c.grid.nearest_slice_z(-34.0))
    semi = (7.5, 6.0, 5.0)
    box = c.grid.box(center, semi)
    if box is not None:
        fossa = ellipsoid(box, center, semi) < 1.0
        c.relabel(code, box, c.in_tissue(box, Tissue.PITUITARY), Tissue.CISTERN)
        rock = c.in_tissue(box, Tissue.BONE, Tissue.SINUS_AIR, Tissue.SOFT)
        c.relabel(code, box, fossa & (rock | c.in_tissue(box, Tissue.CISTERN)), Tissue.CISTERN)
        floor = (ellipsoid(box, (0.0, -24.0, -39.0), (6.0, 4.5, 1.2)) < 1.0) & c.in_tissue(
            box, Tissue.CISTERN
        )
        c.relabel(code, box, floor, Tissue.PITUITARY)
