"""Tissue classes and the parameters that make one normal head differ from another.

Each voxel of a synthetic head is first a tissue label; a per-study table of HU per tissue
(grey matter 36-40, white matter 8-11 lower, CSF 2-8, cortical bone 1300-1800, diploe 400-700)
turns labels into densities. ``paint`` and ``paint_ellipsoid`` set labels in boxes of the grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from synth.geometry import Box, Grid, HeadPose, ellipsoid


class Tissue(IntEnum):
    AIR = 0
    SCALP = 1
    FAT = 2
    BONE = 3
    DIPLOE = 4
    CSF = 5  # convexity subarachnoid space and sulci
    FISSURE = 6  # interhemispheric and sylvian fissures
    CISTERN = 7
    VENTRICLE = 8
    GM = 9
    WM = 10
    DEEP_GM = 11
    BRAINSTEM = 12
    CEREBELLUM = 13
    CEREBELLAR_WM = 14
    DURA = 15  # falx and tentorium
    SINUS_AIR = 16
    SOFT = 17  # face and neck muscle
    ORBIT_FAT = 18
    GLOBE = 19
    LENS = 20
    PETROUS = 21
    PITUITARY = 22
    CALCIFICATION = 23
    CORD = 24
    NERVE = 25
    LESION = 26  # painted by a lesion; later lesions leave it alone


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Everything that makes one normal head differ from another."""

    pose: HeadPose
    outer: tuple[float, float, float, float]  # semi-axes LR, AP, up, down (canonical mm)
    scalp_mm: float
    skull_mm: float
    csf_mm: float  # convexity subarachnoid space
    cortex_mm: float
    sulcal_depth_mm: float
    sulcal_width_mm: float  # half-width of a sulcus
    gyri: tuple[float, ...]  # pattern parameters, see _sulcal_distance
    ventricle_size: float
    frontal_sinus: float  # 0: not pneumatised
    pineal_calcified: bool
    choroid_calcified: bool
    hu: np.ndarray  # HU per Tissue
    noise_sigma: float
    z_low: float  # canonical z of the bottom of the scan range


def sample_anatomy(rng: np.random.Generator, matrix_fov_mm: float) -> Anatomy:
    """A random normal head that fits the field of view."""
    scale = float(rng.uniform(0.93, 1.06) * min(1.0, matrix_fov_mm / 240.0))
    hu = np.zeros(len(Tissue), dtype=np.float32)
    gm = rng.uniform(36.0, 40.0)
    csf = rng.uniform(2.0, 8.0)
    values = {
        Tissue.AIR: -1000.0,
        Tissue.SCALP: rng.uniform(30, 45),
        Tissue.FAT: rng.uniform(-100, -80),
        Tissue.BONE: rng.uniform(1300, 1800),
        Tissue.DIPLOE: rng.uniform(400, 700),
        Tissue.CSF: csf,
        Tissue.FISSURE: csf,
        Tissue.CISTERN: csf,
        Tissue.VENTRICLE: csf,
        Tissue.GM: gm,
        Tissue.WM: gm - rng.uniform(8.0, 11.0),
        Tissue.DEEP_GM: gm - rng.uniform(1.0, 3.0),
        Tissue.BRAINSTEM: gm - rng.uniform(4.0, 6.0),
        Tissue.CEREBELLUM: gm - rng.uniform(0.0, 2.0),
        Tissue.CEREBELLAR_WM: gm - rng.uniform(7.0, 9.0),
        Tissue.DURA: rng.uniform(50, 70),
        Tissue.SINUS_AIR: rng.uniform(-980, -900),
        Tissue.SOFT: rng.uniform(40, 55),
        Tissue.ORBIT_FAT: rng.uniform(-95, -75),
        Tissue.GLOBE: rng.uniform(8, 16),
        Tissue.LENS: rng.uniform(80, 110),
        Tissue.PETROUS: rng.uniform(1700, 2100),
        Tissue.PITUITARY: rng.uniform(38, 48),
        Tissue.CALCIFICATION: rng.uniform(150, 400),
        Tissue.CORD: gm - 4.0,
        Tissue.NERVE: gm - 6.0,
        Tissue.LESION: gm,
    }
    for tissue, value in values.items():
        hu[tissue] = value
    n = int(rng.integers(17, 21))
    gyri = (
        float(n),
        float(rng.integers(3, 7)),
        rng.uniform(2.0, 3.2),
        rng.uniform(0.06, 0.10),
        rng.uniform(0, 2 * np.pi),
        float(rng.integers(7, 12)),
        rng.uniform(0.6, 1.2),
        rng.uniform(0.10, 0.16),
        rng.uniform(0, 2 * np.pi),
    )
    return Anatomy(
        pose=HeadPose(
            x_mm=float(rng.uniform(-6, 6)),
            y_mm=float(rng.uniform(-6, 6)),
            yaw_rad=float(np.deg2rad(rng.uniform(-7, 7))),
            scale=scale,
        ),
        outer=(rng.uniform(71, 78), rng.uniform(90, 98), rng.uniform(78, 82), 125.0),
        scalp_mm=rng.uniform(3.5, 6.0),
        skull_mm=rng.uniform(5.5, 8.0),
        csf_mm=rng.uniform(1.0, 2.0),
        cortex_mm=rng.uniform(2.3, 3.0),
        sulcal_depth_mm=rng.uniform(8.0, 12.0),
        sulcal_width_mm=rng.uniform(0.5, 0.8),
        gyri=gyri,
        ventricle_size=rng.uniform(0.85, 1.15),
        frontal_sinus=float(rng.uniform(0.6, 1.2)) if rng.random() < 0.9 else 0.0,
        pineal_calcified=bool(rng.random() < 0.6),
        choroid_calcified=bool(rng.random() < 0.4),
        hu=hu,
        noise_sigma=rng.uniform(3.0, 6.0),
        z_low=rng.uniform(-80.0, -76.0),
    )


def paint(tissue: np.ndarray, box: Box | None, mask: np.ndarray, value: Tissue) -> None:
    """Set ``value`` where ``mask`` (box-shaped, broadcastable) holds."""
    if box is None:
        return
    view = tissue[box.index]
    view[np.broadcast_to(mask, view.shape)] = value


def paint_ellipsoid(
    tissue: np.ndarray,
    grid: Grid,
    center: tuple[float, float, float],
    semi: tuple[float, float, float],
    value: Tissue,
    only: tuple[Tissue, ...] | None = None,
) -> None:
    box = grid.box(center, semi)
    if box is None:
        return
    mask = ellipsoid(box, center, semi) < 1.0
    if only is not None:
        mask = mask & np.isin(tissue[box.index], only)
    paint(tissue, box, mask, value)
