"""Image formation: what the scanner adds to the drawn HU, and the derived series.

The soft-tissue reconstruction blurs edges slightly (partial volume) and adds mildly correlated
Gaussian noise; the bone kernel is sharper and noisier; the thin series has twice as many
slices with more noise; the localizer is a lateral projection.
"""

from __future__ import annotations

import numpy as np

HU_MIN, HU_MAX = -1024.0, 3071.0
METAL_MIN_HU = 2900.0  # metal stays saturated through the blur


def blur_in_plane(volume: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 smoothing along rows and columns of each slice."""
    out = volume.copy()
    out[:, 1:-1, :] = 0.25 * (volume[:, :-2, :] + volume[:, 2:, :]) + 0.5 * volume[:, 1:-1, :]
    tmp = out.copy()
    out[:, :, 1:-1] = 0.25 * (tmp[:, :, :-2] + tmp[:, :, 2:]) + 0.5 * tmp[:, :, 1:-1]
    return out


def correlated_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Unit-variance noise with the short in-plane correlation of filtered back-projection."""
    white = rng.standard_normal(shape, dtype=np.float32)
    return blur_in_plane(white) * np.float32(1.0 / 0.375)


def form_image(
    hu: np.ndarray, noise_gain: np.ndarray, sigma: float, rng: np.random.Generator
) -> np.ndarray:
    """The reconstructed soft-tissue series: blurred edges and correlated noise (white noise
    blurred along with the image), clipped to the 12-bit HU range; metal stays saturated."""
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    noise *= (np.float32(sigma / 0.375) * noise_gain)[:, None, None]
    noise += hu
    image = blur_in_plane(noise)
    metal = hu >= METAL_MIN_HU
    image[metal] = hu[metal]
    return np.clip(image, HU_MIN, HU_MAX, out=image)


def bone_kernel(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A sharp (bone) reconstruction of the same slices: edge-enhanced and noisier."""
    sharp = hu + 1.2 * (hu - blur_in_plane(hu))
    sharp += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(12.0)
    return np.clip(sharp, HU_MIN, HU_MAX)


def thin_slices(hu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Twice the slices at half the thickness: interpolated between the thick slices, with
    the extra noise of a thinner slice."""
    depth = hu.shape[0]
    position = np.clip((np.arange(2 * depth) - 0.5) / 2.0, 0.0, depth - 1.0)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, depth - 1)
    t = (position - low).astype(np.float32)[:, None, None]
    thin = (1.0 - t) * hu[low] + t * hu[high]
    thin += correlated_noise(rng, thin.shape) * np.float32(4.0)
    return np.clip(thin, HU_MIN, HU_MAX)


def lateral_localizer(hu: np.ndarray, pixel_spacing_mm: float, rows_per_slice: int) -> np.ndarray:
    """A lateral scout: attenuation summed across the head, superior at the top, anterior left;
    each axial slice becomes ``rows_per_slice`` rows."""
    attenuation = np.clip(hu + 1000.0, 0.0, None) * np.float32(1e-3)
    path = attenuation.sum(axis=2) * np.float32(pixel_spacing_mm)  # [slices, rows]
    image = np.repeat(path[::-1], rows_per_slice, axis=0) * np.float32(12.0) - 1000.0
    return np.clip(image, HU_MIN, HU_MAX).astype(np.float32)
