"""Findings about the examination rather than the patient: artefacts and missing coverage."""

from __future__ import annotations

import numpy as np

from synth.canvas import Canvas


def artifact_limited_study(c: Canvas) -> None:
    """Patient motion over a run of slices: a displaced ghost of the head blended in, streaks
    across the slice, and much more noise."""
    code = "artifact_limited_study"
    depth = c.grid.shape[0]
    length = max(3, round(depth * c.uniform(0.35, 0.6)))
    start = int(c.rng.integers(0, max(depth - length, 0) + 1))
    n = c.grid.shape[1]
    rows = np.arange(n, dtype=np.float32)[:, None]
    cols = np.arange(n, dtype=np.float32)[None, :]
    angle = c.uniform(0.0, np.pi)
    period = c.uniform(10.0, 25.0) * 256.0 / n
    lines = np.abs(np.sin(np.pi * (cols * np.cos(angle) + rows * np.sin(angle)) / period)) ** 40
    for i in range(start, min(start + length, depth)):
        shift = c.rng.integers(3, 9, size=2) * c.rng.choice([-1, 1], size=2) * max(n // 256, 1)
        ghost = np.roll(c.hu[i], tuple(int(s) for s in shift), axis=(0, 1))
        head = c.hu[i] > -500.0
        streak = c.uniform(-180.0, 180.0) * lines * head
        c.hu[i] = (0.6 * c.hu[i] + 0.4 * ghost + streak).astype(np.float32)
        c.noise_gain[i] = c.uniform(2.5, 3.5)
        c.slices[code].add(i)


def incomplete_coverage(c: Canvas) -> None:
    """The scan range was set wrongly (see ``Plan.coverage``): the slices at the cut end show
    the head truncated. The shift of the range itself is applied when the grid is made."""
    code = "incomplete_coverage"
    depth = c.grid.shape[0]
    if c.plan.coverage == "base_cut":
        c.slices[code].update({0, 1})
    else:
        c.slices[code].update({depth - 2, depth - 1})
