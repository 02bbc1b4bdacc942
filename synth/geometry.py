"""The sampling grid of a synthetic series, in a head-centred canonical frame, and shape helpers.

Anatomy and lesions are described in *canonical* millimetres: ``u`` to the patient's left, ``v``
to posterior, ``z`` to superior, origin near the foramen of Monro, for an average-sized head. A
``HeadPose`` places that frame in the image (offset, in-plane rotation, size), so every study has
its own head position and size while the drawing code stays in one fixed coordinate system.
Craniocaudally a series always spans a fixed canonical length whatever its slice count, so a
finding forced into a study is always in view; the DICOM geometry carries the physical spacing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COVERAGE_MM = 160.0  # canonical craniocaudal length of every series: skull base to vertex


@dataclass(frozen=True)
class HeadPose:
    """Where the canonical head frame sits in the image: centre, yaw and size."""

    x_mm: float
    y_mm: float
    yaw_rad: float
    scale: float  # image millimetres per canonical millimetre


@dataclass(frozen=True)
class Box:
    """A sub-volume of the grid and the canonical coordinates of its voxels (broadcastable)."""

    index: tuple[slice, slice, slice]
    u: np.ndarray  # [1, h, w]
    v: np.ndarray  # [1, h, w]
    z: np.ndarray  # [d, 1, 1]

    @property
    def first_slice(self) -> int:
        return int(self.index[0].start)


class Grid:
    """Voxel centres of one axial series in canonical head coordinates; slice 0 is inferior."""

    def __init__(
        self, slices: int, matrix: int, pixel_spacing_mm: float, z_low: float, pose: HeadPose
    ) -> None:
        self.shape = (slices, matrix, matrix)
        self.pixel_spacing_mm = pixel_spacing_mm
        self.pose = pose
        self.slice_step = COVERAGE_MM / slices
        self.z = (z_low + (np.arange(slices) + 0.5) * self.slice_step).astype(np.float32)
        centred = (np.arange(matrix, dtype=np.float64) - (matrix - 1) / 2) * pixel_spacing_mm
        dx = centred[None, :] - pose.x_mm
        dy = centred[:, None] - pose.y_mm
        cos, sin = np.cos(pose.yaw_rad), np.sin(pose.yaw_rad)
        self.u = ((cos * dx + sin * dy) / pose.scale).astype(np.float32)
        self.v = ((-sin * dx + cos * dy) / pose.scale).astype(np.float32)

    def full(self) -> Box:
        return Box(
            (slice(0, self.shape[0]), slice(0, self.shape[1]), slice(0, self.shape[2])),
            self.u[None],
            self.v[None],
            self.z[:, None, None],
        )

    def box(
        self, center: tuple[float, float, float], half: tuple[float, float, float]
    ) -> Box | None:
        """The smallest sub-volume holding the canonical box ``center ± half``; None if outside."""
        cu, cv, cz = center
        hu, hv, hz = half
        z0 = int(np.searchsorted(self.z, cz - hz, side="left"))
        z1 = int(np.searchsorted(self.z, cz + hz, side="right"))
        if z1 <= z0:
            return None
        p = self.pose
        cos, sin = np.cos(p.yaw_rad), np.sin(p.yaw_rad)
        n = self.shape[1]
        col = (p.x_mm + p.scale * (cos * cu - sin * cv)) / self.pixel_spacing_mm + (n - 1) / 2
        row = (p.y_mm + p.scale * (sin * cu + cos * cv)) / self.pixel_spacing_mm + (n - 1) / 2
        half_col = p.scale * (abs(cos) * hu + abs(sin) * hv) / self.pixel_spacing_mm + 1
        half_row = p.scale * (abs(sin) * hu + abs(cos) * hv) / self.pixel_spacing_mm + 1
        c0, c1 = max(int(col - half_col), 0), min(int(np.ceil(col + half_col)) + 1, n)
        r0, r1 = max(int(row - half_row), 0), min(int(np.ceil(row + half_row)) + 1, n)
        if c1 <= c0 or r1 <= r0:
            return None
        rows, cols = slice(r0, r1), slice(c0, c1)
        return Box(
            (slice(z0, z1), rows, cols),
            self.u[None, rows, cols],
            self.v[None, rows, cols],
            self.z[z0:z1, None, None],
        )

    def voxel(self, point: tuple[float, float, float]) -> tuple[int, int, int] | None:
        """Index of the voxel nearest a canonical point; None if it is off the grid."""
        i = int(np.argmin(np.abs(self.z - point[2])))
        if abs(float(self.z[i]) - point[2]) > self.slice_step:
            return None
        p = self.pose
        cos, sin = np.cos(p.yaw_rad), np.sin(p.yaw_rad)
        n = self.shape[1]
        col = (p.x_mm + p.scale * (cos * point[0] - sin * point[1])) / self.pixel_spacing_mm
        row = (p.y_mm + p.scale * (sin * point[0] + cos * point[1])) / self.pixel_spacing_mm
        c, r = round(col + (n - 1) / 2), round(row + (n - 1) / 2)
        if not (0 <= r < n and 0 <= c < n):
            return None
        return i, r, c

    def nearest_slice_z(self, z: float) -> float:
        """Centre of the slice nearest ``z``: small lesions centred on a slice always show."""
        return float(self.z[int(np.argmin(np.abs(self.z - z)))])

    def clamp_z(self, z: float, margin: float = 6.0) -> float:
        """``z`` moved inside the covered range, so a lesion placed there is in view."""
        return float(np.clip(z, self.z[0] + margin, self.z[-1] - margin))


def ellipsoid(
    box: Box, center: tuple[float, float, float], semi: tuple[float, float, float]
) -> np.ndarray:
    """Squared normalised radius of an axis-aligned ellipsoid: < 1 inside."""
    cu, cv, cz = center
    a, b, c = semi
    return ((box.u - cu) / a) ** 2 + ((box.v - cv) / b) ** 2 + ((box.z - cz) / c) ** 2


def segment_distance(
    box: Box, p0: tuple[float, float, float], p1: tuple[float, float, float]
) -> np.ndarray:
    """Distance in mm from each voxel to the segment p0-p1 (tubes: catheters, vessels, nails)."""
    d = np.subtract(p1, p0, dtype=np.float64)
    length2 = float(d @ d) or 1.0
    du, dv, dz = box.u - p0[0], box.v - p0[1], box.z - p0[2]
    t = np.clip((du * d[0] + dv * d[1] + dz * d[2]) / length2, 0.0, 1.0)
    return np.sqrt((du - t * d[0]) ** 2 + (dv - t * d[1]) ** 2 + (dz - t * d[2]) ** 2)


def smoothstep(x: np.ndarray | float, edge0: float, edge1: float) -> np.ndarray:
    """0 below edge0, 1 above edge1 (edges may be reversed), cubic in between."""
    t = np.clip((np.asarray(x, dtype=np.float32) - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def bump(r2: np.ndarray) -> np.ndarray:
    """A compactly supported weight of a squared normalised radius: 1 at 0, exactly 0 from 1 on."""
    return np.clip(1.0 - r2, 0.0, 1.0) ** 2
