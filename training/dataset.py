"""Torch datasets over the ingest cache, and the training augmentations.

Augmentations act on HU volumes [D, H, W], the same transform for every slice of a study (a
study is one head: its slices must stay aligned): left-right flips, small rotations and shifts,
intensity jitter (scanner calibration differs by a few HU and percent), and slice dropout (a
dropped slice repeats its neighbour, as when a slice is missing from a series).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from training.data import CachedStudy

AIR_HU = -1024.0


@dataclass(frozen=True)
class Augmentation:
    flip_probability: float = 0.5
    max_rotation_deg: float = 10.0
    max_shift_fraction: float = 0.05
    hu_scale_jitter: float = 0.03
    hu_offset_jitter: float = 10.0
    slice_dropout: float = 0.05

    def __call__(self, volume: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        def uniform(low: float, high: float) -> float:
            return low + (high - low) * float(torch.rand((), generator=generator))

        if uniform(0, 1) < self.flip_probability:
            volume = volume.flip(-1)
        angle = math.radians(uniform(-self.max_rotation_deg, self.max_rotation_deg))
        shift = [uniform(-1, 1) * 2 * self.max_shift_fraction for _ in range(2)]
        if angle or any(shift):
            volume = _rotate_shift(volume, angle, shift)
        volume = volume * (1 + uniform(-self.hu_scale_jitter, self.hu_scale_jitter))
        volume = volume + uniform(-self.hu_offset_jitter, self.hu_offset_jitter)
        if self.slice_dropout > 0 and volume.shape[0] > 1:
            dropped = torch.rand(volume.shape[0], generator=generator) < self.slice_dropout
            for i in torch.nonzero(dropped).flatten().tolist():
                volume[i] = volume[i - 1] if i > 0 else volume[i + 1]
        return volume


def _rotate_shift(volume: torch.Tensor, angle: float, shift: list[float]) -> torch.Tensor:
    cos, sin = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[cos, -sin, shift[0]], [sin, cos, shift[1]]], dtype=volume.dtype)
    slices = (volume - AIR_HU).unsqueeze(1)  # [D, 1, H, W]; zero padding is then air
    grid = F.affine_grid(
        theta.expand(slices.shape[0], 2, 3), list(slices.shape), align_corners=False
    )
    moved = F.grid_sample(slices, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return moved.squeeze(1) + AIR_HU


class CachedStudyDataset(Dataset[tuple[torch.Tensor, torch.Tensor, int]]):
    """(HU volume float32 [D, H, W], labels float32 [75] with NaN unknown, index)."""

    def __init__(
        self,
        studies: Sequence[CachedStudy],
        augmentation: Augmentation | None = None,
        seed: int = 0,
    ) -> None:
        self.studies = list(studies)
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Different augmentations each epoch, the same ones for the same seed and epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        study = self.studies[index]
        volume = torch.from_numpy(np.load(study.volume_path).astype(np.float32))
        if self.augmentation is not None:
            generator = torch.Generator().manual_seed(
                self.seed * 1_000_003 + self.epoch * 10_007 + index
            )
            volume = self.augmentation(volume, generator)
        return volume, torch.from_numpy(study.record.labels.copy()), index
