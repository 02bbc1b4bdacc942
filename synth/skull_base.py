"""The skull base and face: the floor of the cranial cavity (fossae, petrous ridges, sella,
clivus, foramen magnum), the tentorium, and below the floor the orbits, paranasal sinuses,
mastoid air cells, petrous bones and the upper cervical spine."""

from __future__ import annotations

import numpy as np

from synth.anatomy import Anatomy, Tissue, paint, paint_ellipsoid
from synth.geometry import Grid, bump, ellipsoid, segment_distance, smoothstep


def floor_height(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Canonical z of the cranial cavity's floor under each (u, v): the three fossae, each a
    bowl, the oblique petrous ridges between the middle and posterior fossae, the sella and
    the clivus."""
    au = np.abs(u)
    behind_ridge = v - petrous_ridge_v(au)
    w_ant = smoothstep(v, -30.0, -40.0)
    w_post = smoothstep(behind_ridge, -2.0, 6.0)
    anterior = -20.0 - 0.008 * (au - 30.0) ** 2 - 0.08 * (v + 40.0)
    middle = -50.0 + 0.025 * (au - 38.0) ** 2 + 0.02 * (v + 12.0) ** 2
    posterior = -68.0 + 0.0045 * (au**2 + (v - 22.0) ** 2)
    lateral = w_ant * anterior + w_post * posterior + (1.0 - w_ant - w_post) * middle
    ridge = 15.0 * bump((behind_ridge / 6.0) ** 2) * smoothstep(au, 14.0, 24.0)
    lateral = lateral + ridge
    clivus = np.interp(
        v, [-40.0, -34.0, -31.0, -15.0, -12.0, 6.0, 400.0], [-22, -22, -30, -30, -27, -64, -64]
    ).astype(np.float32)
    sella = -7.0 * bump((u / 7.0) ** 2 + ((v + 23.0) / 7.5) ** 2)
    w_c = smoothstep(au, 16.0, 9.0)
    floor = w_c * (clivus + sella) + (1.0 - w_c) * lateral
    return np.where(in_foramen_magnum(u, v), -1000.0, floor).astype(np.float32)


def petrous_ridge_v(au: np.ndarray) -> np.ndarray:
    """AP position of the petrous ridge, running from the apex (medial, anterior) to the
    mastoid (lateral, posterior)."""
    return -4.0 + 0.7 * (au - 16.0)


def in_foramen_magnum(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u / 13.0) ** 2 + ((v - 19.0) / 15.0) ** 2 < 1.0


def tentorium_z(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Canonical z of the tentorium, a tent sloping down posteriorly and laterally; -inf in
    front of it."""
    tent = -6.0 - 0.22 * np.maximum(v - 5.0, 0.0) - 0.12 * np.abs(u)
    behind = (v >= 10.0) & (v >= petrous_ridge_v(np.abs(u)) + 2.0)
    return np.where(behind, tent, -np.inf).astype(np.float32)


def draw_face(tissue: np.ndarray, grid: Grid, anat: Anatomy) -> None:
    """Orbits, sinuses, mastoids, petrous bones and the craniocervical junction."""
    not_cavity = (Tissue.BONE, Tissue.DIPLOE, Tissue.SOFT, Tissue.SCALP)
    for side in (-1, 1):
        _draw_orbit(tissue, grid, side)
        box = grid.box((side * 34.0, 11.0, -38.0), (20.0, 14.0, 12.0))
        if box is not None:
            near = segment_distance(box, (side * 16.0, -4.0, -36.0), (side * 52.0, 22.0, -40.0))
            mask = (near < 9.0) & np.isin(tissue[box.index], not_cavity)
            paint(tissue, box, mask, Tissue.PETROUS)
        box = grid.box((side * 54.0, 24.0, -40.0), (11.0, 12.0, 11.0))
        if box is not None:
            cells = np.cos(1.1 * box.u) * np.cos(1.1 * box.v) * np.cos(1.1 * box.z) > -0.25
            inside = ellipsoid(box, (side * 54.0, 24.0, -40.0), (11.0, 12.0, 11.0)) < 1.0
            view = tissue[box.index]
            ok = np.isin(view, (*not_cavity, Tissue.PETROUS))
            paint(tissue, box, inside & ok, Tissue.BONE)
            paint(tissue, box, inside & ok & cells, Tissue.SINUS_AIR)
        _sinus(tissue, grid, (side * 28.0, -58.0, -66.0), (13.0, 16.0, 13.0))
    _sinus(tissue, grid, (0.0, -31.0, -45.0), (13.0, 10.0, 7.0))
    box = grid.box((0.0, -62.0, -38.0), (11.0, 20.0, 14.0))
    if box is not None:
        cells = np.cos(1.3 * box.u) * np.cos(1.3 * box.v) * np.cos(1.3 * box.z) > -0.3
        ok = np.isin(tissue[box.index], not_cavity)
        paint(tissue, box, ok & cells, Tissue.SINUS_AIR)
        paint(tissue, box, ok & ~cells, Tissue.BONE)
    box = grid.box((0.0, -60.0, -68.0), (13.0, 28.0, 14.0))
    if box is not None:
        ok = np.isin(tissue[box.index], (Tissue.SOFT, Tissue.BONE))
        paint(tissue, box, ok, Tissue.SINUS_AIR)
        paint(tissue, box, ok & (np.abs(box.u) < 1.0), Tissue.BONE)
    paint_ellipsoid(tissue, grid, (0.0, -16.0, -74.0), (12.0, 8.0, 9.0), Tissue.SINUS_AIR)
    if anat.frontal_sinus > 0:
        s = anat.frontal_sinus
        b = anat.outer[1]
        v = -b + anat.scalp_mm + 0.5 * anat.skull_mm + 3.0
        paint_ellipsoid(
            tissue, grid, (0.0, v, -8.0), (15.0 * s + 1.5, 7.5, 9.0 * s + 1.5), Tissue.BONE
        )
        paint_ellipsoid(tissue, grid, (0.0, v, -8.0), (15.0 * s, 6.0, 9.0 * s), Tissue.SINUS_AIR)
    _draw_cervical_junction(tissue, grid)


def _sinus(
    tissue: np.ndarray,
    grid: Grid,
    center: tuple[float, float, float],
    semi: tuple[float, float, float],
) -> None:
    wall = (semi[0] + 2.0, semi[1] + 2.0, semi[2] + 2.0)
    paint_ellipsoid(tissue, grid, center, wall, Tissue.BONE, only=(Tissue.SOFT, Tissue.BONE))
    paint_ellipsoid(tissue, grid, center, semi, Tissue.SINUS_AIR, only=(Tissue.BONE,))


def _draw_orbit(tissue: np.ndarray, grid: Grid, side: int) -> None:
    apex = np.array([side * 13.0, -38.0, -33.0])
    opening = np.array([side * 33.0, -84.0, -36.0])
    box = grid.box(tuple((apex + opening) / 2), (20.0, 32.0, 20.0))  # type: ignore[arg-type]
    if box is None:
        return
    axis = opening - apex
    length2 = float(axis @ axis)
    du, dv, dz = box.u - apex[0], box.v - apex[1], box.z - apex[2]
    t = (du * axis[0] + dv * axis[1] + dz * axis[2]) / length2
    radial = np.sqrt((du - t * axis[0]) ** 2 + (dv - t * axis[1]) ** 2 + (dz - t * axis[2]) ** 2)
    radius = 4.0 + 13.0 * np.clip(t, 0, 1)
    inside = (t > 0) & (t < 1.1) & (radial < radius)
    view = tissue[box.index]
    solid = np.isin(view, (Tissue.SOFT, Tissue.BONE, Tissue.SCALP, Tissue.AIR))
    paint(tissue, box, solid & (t > -0.05) & (t < 1.0) & (radial < radius + 2.0), Tissue.BONE)
    paint(tissue, box, solid & inside, Tissue.ORBIT_FAT)
    globe = (side * 30.0, -76.0, grid.nearest_slice_z(-35.0))
    paint_ellipsoid(tissue, grid, globe, (12.0, 12.0, 12.0), Tissue.GLOBE)
    paint_ellipsoid(
        tissue, grid, (globe[0], globe[1] - 10.0, globe[2]), (4.5, 2.0, 4.5), Tissue.LENS
    )
    nerve = inside & (radial < 2.2) & (t < 0.72)
    paint(tissue, box, nerve, Tissue.NERVE)


def _draw_cervical_junction(tissue: np.ndarray, grid: Grid) -> None:
    """Upper cervical canal with cord, C1 ring and the dens below the foramen magnum."""
    box = grid.box((0.0, 12.0, -95.0), (30.0, 32.0, 33.0))
    if box is None:
        return
    canal = in_foramen_magnum(box.u, box.v) & (box.z < -62.0)
    cord = ((box.u / 7.0) ** 2 + ((box.v - 18.0) / 6.0) ** 2 < 1.0) & (box.z < -62.0)
    low = box.z < -66.0
    ring = ((box.u / 21.0) ** 2 + ((box.v - 19.0) / 20.0) ** 2 < 1.0) & ~canal & low
    c1 = (box.z > -82.0) & low
    masses = (((np.abs(box.u) - 20.0) / 8.0) ** 2 + ((box.v - 2.0) / 9.0) ** 2 < 1.0) & c1
    arch = ((box.u / 7.0) ** 2 + ((box.v + 13.0) / 3.0) ** 2 < 1.0) & c1
    dens = ((box.u / 5.0) ** 2 + ((box.v + 3.0) / 5.0) ** 2 < 1.0) & (box.z < -67.0)
    body = ((box.u / 9.0) ** 2 + ((box.v + 2.0) / 9.0) ** 2 < 1.0) & (box.z < -84.0)
    soft = np.isin(tissue[box.index], (Tissue.SOFT, Tissue.BONE, Tissue.SCALP))
    paint(tissue, box, soft & low & (ring | masses | arch | dens | body), Tissue.BONE)
    paint(tissue, box, canal, Tissue.CSF)
    paint(tissue, box, cord, Tissue.CORD)
