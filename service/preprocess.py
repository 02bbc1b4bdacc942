"""From an ordered slice stack to an INT16 HU volume on the model's grid.

The grid (D slices covering the series, H x W in-plane over a square field of view) is declared by
the model card. Resampling is separable: area averaging when shrinking (so thin structures such as
a subdural rim are averaged, not skipped), linear interpolation when enlarging. In-plane resampling
runs on each slice's stored values as soon as it is decoded (the native volume is never held in
memory); the rescale to HU and the resampling across slices are folded into one small matrix
product. Values below -1024 HU (padding outside the scan circle) become air before averaging.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.geometry import SliceStack
from service.pixels import stored_pixels

AIR_HU = -1024
MAX_HU = 32767


@dataclass(frozen=True, slots=True)
class ModelGrid:
    """The volume the model reads: ``depth`` slices spanning the series, ``height`` x ``width``
    pixels over a square in-plane field of view centred on the image (``fov_mm``; ``None`` takes
    the image's own field of view, its larger side)."""

    depth: int = 32
    height: int = 256
    width: int = 256
    fov_mm: float | None = None

    def __post_init__(self) -> None:
        if min(self.depth, self.height, self.width) < 1:
            raise ValueError("ModelGrid depth, height and width must be positive")
        if self.fov_mm is not None and self.fov_mm <= 0:
            raise ValueError("ModelGrid fov_mm must be positive (or None for the image's own)")


@dataclass
class GridVolume:
    """HU on the model grid, with where its slices lie in the source series."""

    hu: np.ndarray  # int16 [depth, height, width], slice 0 inferior
    spacing_mm: tuple[float, float, float]  # between grid slices, rows, columns
    positions_mm: np.ndarray  # grid slice centres along the normal
    source_positions_mm: np.ndarray  # source slice centres along the normal


@dataclass(frozen=True, slots=True)
class Taps:
    """A 1-D resampling as a sparse matrix: out[j] = sum_t weight[j, t] * in[index[j, t]]."""

    index: np.ndarray  # int [n_out, T]
    weight: np.ndarray  # float32 [n_out, T]; a row sums to the fraction of it inside the input

    @property
    def inside(self) -> np.ndarray:
        return np.asarray(self.weight.sum(axis=1))


def plane_taps(n_in: int, n_out: int, scale: float) -> Taps:
    """Resample ``n_in`` pixels to ``n_out`` whose spacing is ``scale`` input pixels, centred.

    Area weights for scale > 1 (each output pixel averages the input it covers), linear
    interpolation otherwise. Output pixels beyond the input get weight 0 (the caller fills air).
    The taps take at most ``n_out x (n_in + 2)`` entries whatever the scale: an output pixel
    never covers more than the whole input, so its window starts at the input's edge at the
    earliest and is never wider than the input (a spacing of 1e-6 mm costs no more than 1 mm).
    """
    centres = (n_in - 1) / 2 + (np.arange(n_out) - (n_out - 1) / 2) * scale
    if scale > 1:
        lo, hi = centres - scale / 2, centres + scale / 2
        first = np.maximum(np.floor(lo + 0.5).astype(np.int64), -1)
        width = min(int(np.ceil(scale)) + 2, n_in + 2)
        index = first[:, None] + np.arange(width)[None, :]
        left = np.maximum(index - 0.5, lo[:, None])
        right = np.minimum(index + 0.5, hi[:, None])
        weight = np.clip(right - left, 0, None) / scale
    else:
        base = np.floor(centres).astype(np.int64)
        frac = centres - base
        index = np.stack([base, base + 1], axis=1)
        weight = np.stack([1 - frac, frac], axis=1)
        # Within half a pixel of the edge, hold the edge value rather than fade to air.
        edge_low = (centres < 0) & (centres >= -0.5)
        edge_high = (centres > n_in - 1) & (centres <= n_in - 0.5)
        index[edge_low] = 0
        weight[edge_low] = (1.0, 0.0)
        index[edge_high] = n_in - 1
        weight[edge_high] = (1.0, 0.0)
    outside = (index < 0) | (index >= n_in)
    weight[outside] = 0.0
    index = np.clip(index, 0, n_in - 1)
    return Taps(index, weight.astype(np.float32))


def _aligned_box(n_in: int, n_out: int, scale: float) -> tuple[int, int] | None:
    """(offset, factor) when area resampling is an exact k-to-1 block sum inside the input."""
    factor = round(scale)
    if factor < 1 or abs(scale - factor) > 1e-9:
        return None
    excess = n_in - n_out * factor
    if excess < 0 or excess % 2:
        return None
    return excess // 2, factor


class PlaneResampler:
    """In-plane resampling of one slice's values; precomputed once per series."""

    def __init__(self, rows: int, columns: int, row_scale: float, column_scale: float,
                 height: int, width: int) -> None:  # fmt: skip
        self.row_box = _aligned_box(rows, height, row_scale)
        self.column_box = _aligned_box(columns, width, column_scale)
        self.height, self.width = height, width
        self.row_taps = plane_taps(rows, height, row_scale)
        self.column_taps = plane_taps(columns, width, column_scale)
        inside = np.outer(self.row_taps.inside, self.column_taps.inside)
        # Fraction of each output pixel that lies outside the image; there the value is air.
        self.outside = (1.0 - inside).astype(np.float32)
        self.fully_inside = bool(np.all(self.outside < 1e-6))

    def __call__(self, pixels: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The resampled [height, width] float32 slice, written into ``out`` if given."""
        if self.row_box and self.column_box:
            return self._box(pixels, out)
        rows = self.row_taps
        values = pixels.astype(np.float32, copy=False)
        along_rows = rows.weight[:, 0, None] * values[rows.index[:, 0]]
        for t in range(1, rows.index.shape[1]):
            along_rows += rows.weight[:, t, None] * values[rows.index[:, t]]
        cols = self.column_taps
        result = along_rows[:, cols.index[:, 0]] * cols.weight[:, 0]
        for t in range(1, cols.index.shape[1]):
            result += along_rows[:, cols.index[:, t]] * cols.weight[:, t]
        if out is not None:
            out[...] = result
            return out
        return np.asarray(result)

    def _box(self, pixels: np.ndarray, out: np.ndarray | None) -> np.ndarray:
        """Block sums (not yet means: ``gain`` scales them), adding whole rows first, which
        reads memory in order and is about twice as fast as strided single pixels."""
        assert self.row_box and self.column_box
        (r0, kr), (c0, kc) = self.row_box, self.column_box
        r1, c1 = r0 + self.height * kr, c0 + self.width * kc
        if out is None:
            out = np.empty((self.height, self.width), dtype=np.float32)
        if kr > 1:
            rows = np.add(
                pixels[r0:r1:kr, c0:c1], pixels[r0 + 1 : r1 : kr, c0:c1], dtype=np.float32
            )
            for a in range(2, kr):
                rows += pixels[r0 + a : r1 : kr, c0:c1]
        else:
            rows = pixels[r0:r1, c0:c1].astype(np.float32)
        if kc > 1:
            np.add(rows[:, 0::kc], rows[:, 1::kc], out=out)
            for b in range(2, kc):
                out += rows[:, b::kc]
        else:
            out[...] = rows
        return out

    @property
    def gain(self) -> float:
        """What the values ``__call__`` returns must be multiplied by (1 / block size)."""
        if self.row_box and self.column_box:
            return 1.0 / (self.row_box[1] * self.column_box[1])
        return 1.0


def slice_weights(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """[len(target), len(source)] weights across slices: slab overlap when the grid is coarser
    than the source, linear interpolation on the true positions when finer."""
    n = len(source)
    if n == 1:
        return np.ones((len(target), 1))
    steps = np.diff(source)
    step = (target[-1] - target[0]) / max(len(target) - 1, 1)
    if step <= float(np.median(steps)) * 1.0001:
        fractional = np.interp(target, source, np.arange(n, dtype=np.float64))
        base = np.minimum(np.floor(fractional).astype(np.int64), n - 2)
        frac = fractional - base
        weights = np.zeros((len(target), n))
        rows = np.arange(len(target))
        weights[rows, base] = 1 - frac
        weights[rows, base + 1] += frac
        return weights
    bounds = np.concatenate(
        [[source[0] - steps[0] / 2], (source[:-1] + source[1:]) / 2, [source[-1] + steps[-1] / 2]]
    )
    lo = np.maximum(target - step / 2, bounds[0])[:, None]
    hi = np.minimum(target + step / 2, bounds[-1])[:, None]
    overlap = np.clip(np.minimum(hi, bounds[None, 1:]) - np.maximum(lo, bounds[None, :-1]), 0, None)
    return np.asarray(overlap / overlap.sum(axis=1, keepdims=True))


def _air_floor(pixels: np.ndarray, slope: float, intercept: float, padding: object) -> np.ndarray:
    """Stored values below -1024 HU (padding outside the scan circle) become air."""
    floor = (AIR_HU - intercept) / slope
    if padding is not None and np.issubdtype(pixels.dtype, np.integer):
        pad_value = int(padding) if not isinstance(padding, bytes) else None  # type: ignore[call-overload]
        if pad_value is not None and pad_value * slope + intercept > AIR_HU:
            pixels = np.where(pixels == pad_value, np.asarray(floor, pixels.dtype), pixels)
    if np.issubdtype(pixels.dtype, np.integer):
        lowest = np.iinfo(pixels.dtype).min * slope + intercept
        if lowest >= AIR_HU:
            return pixels
        return np.asarray(np.maximum(pixels, np.asarray(np.ceil(floor), dtype=pixels.dtype)))
    return np.asarray(np.maximum(pixels, floor))


def to_model_grid(stack: SliceStack, grid: ModelGrid) -> GridVolume:
    """Decode, rescale to HU and resample the stack onto the grid; INT16 HU out."""
    first = stack.slices[0]
    rows, columns = first.rows, first.columns
    fov = grid.fov_mm or max(rows * stack.row_spacing_mm, columns * stack.column_spacing_mm)
    out_row_spacing, out_column_spacing = fov / grid.height, fov / grid.width
    plane = PlaneResampler(
        rows,
        columns,
        out_row_spacing / stack.row_spacing_mm,
        out_column_spacing / stack.column_spacing_mm,
        grid.height,
        grid.width,
    )
    resampled = np.empty((len(stack.slices), grid.height, grid.width), dtype=np.float32)
    slopes = np.empty(len(stack.slices))
    intercepts = np.empty(len(stack.slices))
    for i, ref in enumerate(stack.slices):
        padding = ref.dataset.get("PixelPaddingValue")
        pixels = _air_floor(stored_pixels(ref), ref.slope, ref.intercept, padding)
        plane(pixels, out=resampled[i])
        slopes[i], intercepts[i] = ref.slope, ref.intercept

    source = stack.positions_mm
    target = np.linspace(source[0], source[-1], grid.depth)
    weights = slice_weights(source, target)
    # HU = slope * stored + intercept, folded into the across-slice weights.
    hu = (weights * (slopes * plane.gain)[None, :]).astype(np.float32) @ resampled.reshape(
        len(stack.slices), -1
    )
    hu = hu.reshape(grid.depth, grid.height, grid.width)
    offset = (weights @ intercepts).astype(np.float32)
    if plane.fully_inside:
        hu += offset[:, None, None]
    else:
        hu += offset[:, None, None] * (1 - plane.outside) + AIR_HU * plane.outside
    np.rint(hu, out=hu)
    np.clip(hu, AIR_HU, MAX_HU, out=hu)
    depth_spacing = (
        float(target[1] - target[0])
        if grid.depth > 1
        else float(stack.spacing_mm or first.thickness or 0.0)
    )
    return GridVolume(
        hu=hu.astype(np.int16),
        spacing_mm=(depth_spacing, out_row_spacing, out_column_spacing),
        positions_mm=target,
        source_positions_mm=source,
    )
