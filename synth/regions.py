"""Anatomical regions that findings are placed in: convexity sites, vascular territories, and
random points inside a tissue."""

from __future__ import annotations

import numpy as np

from synth.anatomy import Anatomy, Tissue
from synth.canvas import Canvas
from synth.geometry import Box, Grid

Point = tuple[float, float, float]


def inner_semi_axes(anat: Anatomy, z: float) -> tuple[float, float]:
    """In-plane semi-axes of the inner table at height ``z``."""
    a, b, c_up, c_down = anat.outer
    wall = anat.scalp_mm + anat.skull_mm
    c = (c_up if z >= 0 else c_down) - wall
    f = float(np.sqrt(max(1.0 - (z / c) ** 2, 0.05)))
    return (a - wall) * f, (b - wall - 1.0) * f


def convexity_point(anat: Anatomy, azimuth_deg: float, z: float, depth_mm: float = 0.0) -> Point:
    """The point ``depth_mm`` inside the inner table at an azimuth (0 = patient left, 90 =
    posterior) and height."""
    a, b = inner_semi_axes(anat, z)
    t = np.deg2rad(azimuth_deg)
    ca, sa = float(np.cos(t)), float(np.sin(t))
    scale = max(1.0 - depth_mm / max(np.hypot(a * ca, b * sa), 1.0), 0.0)
    return a * ca * scale, b * sa * scale, z


def azimuth(box: Box, anat: Anatomy) -> np.ndarray:
    """Azimuth (degrees) of each voxel around the head axis, in the inner table's ellipse."""
    a, b, _, _ = anat.outer
    return np.degrees(np.arctan2(box.v / b, box.u / a))


def angle_difference(a: np.ndarray, b: float) -> np.ndarray:
    return (a - b + 180.0) % 360.0 - 180.0


def footprint(
    box: Box, anat: Anatomy, azimuth_deg: float, z: float, width_deg: float, height_mm: float
) -> np.ndarray:
    """Squared normalised distance along the convexity from a site: < 1 on its footprint."""
    return (angle_difference(azimuth(box, anat), azimuth_deg) / width_deg) ** 2 + (
        (box.z - z) / height_mm
    ) ** 2


def convexity_box(
    grid: Grid,
    anat: Anatomy,
    azimuth_deg: float,
    z: float,
    width_deg: float,
    height_mm: float,
    reach_mm: float,
) -> Box | None:
    """A box holding a convexity footprint down to ``reach_mm`` below the inner table."""
    samples = [
        convexity_point(anat, azimuth_deg + da * width_deg, z + dz * height_mm, depth)
        for da in (-1.0, -0.5, 0.0, 0.5, 1.0)
        for dz in (-1.0, 0.0, 1.0)
        for depth in (-25.0, reach_mm)
    ]
    pts = np.array(samples)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    center = (lo + hi) / 2
    half = (hi - lo) / 2
    return grid.box(tuple(center), (half[0] + 2, half[1] + 2, height_mm + 1))  # type: ignore[arg-type]


def sector(
    box: Box,
    side: int,
    apex: tuple[float, float],
    angles: tuple[float, float],
    z_range: tuple[float, float],
    edge: float,
) -> np.ndarray:
    """Soft weight of a wedge: in-plane angles from an apex (0 = lateral on ``side``, +90 =
    posterior), between two heights; ``edge`` (mm-ish) sets how ill-defined its margins are."""
    ang = np.degrees(np.arctan2(box.v - apex[1], side * (box.u - apex[0])))
    mid = 0.5 * (angles[0] + angles[1])
    half = 0.5 * (angles[1] - angles[0])
    radial = np.hypot(box.u - apex[0], box.v - apex[1])
    angular = (half - np.abs(ang - mid)) * np.pi / 180.0 * np.maximum(radial, 10.0)
    vertical = np.minimum(box.z - z_range[0], z_range[1] - box.z)
    inside = np.minimum(angular, vertical)
    return np.clip(inside / edge + 0.5, 0.0, 1.0)


TERRITORIES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    # apex (lateral offset, v), angles, heights
    "MCA": ((8.0, -2.0), (-55.0, 60.0), (-16.0, 45.0)),
    "ACA": ((3.0, 0.0), (-178.0, -105.0), (2.0, 70.0)),
    "PCA": ((8.0, 18.0), (62.0, 125.0), (-14.0, 22.0)),
}


def territory_box(grid: Grid, side: int, territory: str) -> Box | None:
    (_, _), _, (z0, z1) = TERRITORIES[territory]
    return grid.box((side * 40.0, 0.0, 0.5 * (z0 + z1)), (42.0, 95.0, 0.5 * (z1 - z0) + 2.0))


def territory_weight(
    box: Box, side: int, territory: str, edge: float, fraction: tuple[float, float] = (0.0, 1.0)
) -> np.ndarray:
    """Soft mask of (a part of) a vascular territory; ``fraction`` picks a sub-range of its
    angles, e.g. one MCA division."""
    (au, av), (a0, a1), zr = TERRITORIES[territory]
    lo, hi = a0 + fraction[0] * (a1 - a0), a0 + fraction[1] * (a1 - a0)
    return sector(box, side, (side * au, av), (lo, hi), zr, edge)


def random_point(
    canvas: Canvas,
    tissues: tuple[Tissue, ...],
    u_range: tuple[float, float],
    v_range: tuple[float, float],
    z_range: tuple[float, float],
    snap: bool = True,
) -> Point:
    """A random point whose voxel holds one of ``tissues``, inside the ranges (the last try
    wins if none does); snapped to a slice centre so small lesions show."""
    grid = canvas.grid
    z_lo = max(z_range[0], float(grid.z[0]) + 4.0)
    z_hi = min(z_range[1], float(grid.z[-1]) - 4.0)
    if z_hi < z_lo:
        z_lo = z_hi = 0.5 * (z_lo + z_hi)
    point: Point = (0.0, 0.0, 0.0)
    for _ in range(40):
        u = canvas.uniform(min(u_range), max(u_range))
        v = canvas.uniform(*v_range)
        z = canvas.uniform(z_lo, z_hi)
        if snap:
            z = grid.nearest_slice_z(z)
        point = (u, v, z)
        voxel = grid.voxel(point)
        if voxel is not None and canvas.tissue[voxel] in tissues:
            return point
    return point
