"""Resampling to the model grid: the numerical pieces, checked against hand computations."""

from __future__ import annotations

import numpy as np
import pytest

from service.preprocess import ModelGrid, PlaneResampler, _air_floor, plane_taps, slice_weights


def _dense(taps_index: np.ndarray, taps_weight: np.ndarray, n_in: int) -> np.ndarray:
    matrix = np.zeros((taps_index.shape[0], n_in))
    for j in range(taps_index.shape[0]):
        for t in range(taps_index.shape[1]):
            matrix[j, taps_index[j, t]] += taps_weight[j, t]
    return matrix


def test_area_weights_halve_by_averaging_pairs() -> None:
    taps = plane_taps(8, 4, 2.0)
    expected = np.kron(np.eye(4), [0.5, 0.5])
    np.testing.assert_allclose(_dense(taps.index, taps.weight, 8), expected, atol=1e-7)


def test_area_weights_for_a_fractional_scale_cover_each_input_once() -> None:
    taps = plane_taps(10, 4, 2.5)
    matrix = _dense(taps.index, taps.weight, 10)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-6)
    # Every input pixel contributes in total its share: 10 pixels into 4 outputs of 2.5 each.
    np.testing.assert_allclose(matrix.sum(axis=0) * 2.5, 1.0, atol=1e-6)


def test_linear_upsampling_reproduces_a_ramp() -> None:
    taps = plane_taps(5, 9, 0.5)
    ramp = np.arange(5, dtype=np.float64) * 3.0
    out = _dense(taps.index, taps.weight, 5) @ ramp
    centres = 2 + (np.arange(9) - 4) * 0.5
    np.testing.assert_allclose(out, centres * 3.0, atol=1e-6)


def test_pixels_beyond_the_image_get_no_weight() -> None:
    taps = plane_taps(4, 8, 1.0)  # field of view twice the image: two pixels each side outside
    np.testing.assert_allclose(taps.inside, [0, 0, 1, 1, 1, 1, 0, 0])


def test_box_fast_path_equals_the_general_path() -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4000, size=(64, 48)).astype(np.uint16)
    fast = PlaneResampler(64, 48, 2.0, 2.0, 24, 24)  # rows cropped by 8 each side, columns exact
    assert fast.row_box == (8, 2) and fast.column_box == (0, 2)
    general = PlaneResampler(64, 48, 2.0, 2.0, 24, 24)
    general.row_box = None  # force the tap path
    np.testing.assert_allclose(fast(pixels) * fast.gain, general(pixels), rtol=1e-6, atol=1e-3)
    assert fast.gain == 0.25 and general.gain == 1.0


def test_slice_weights_identity_and_interpolation() -> None:
    source = np.array([0.0, 5.0, 10.0, 15.0])
    np.testing.assert_allclose(slice_weights(source, source), np.eye(4), atol=1e-12)
    finer = slice_weights(source, np.linspace(0, 15, 7))
    np.testing.assert_allclose(finer @ source, np.linspace(0, 15, 7), atol=1e-9)


def test_slice_weights_follow_true_positions_when_spacing_is_uneven() -> None:
    source = np.array([0.0, 5.0, 10.0, 20.0])  # a missing slice at 15 mm
    target = np.linspace(0, 20, 5)
    weights = slice_weights(source, target)
    np.testing.assert_allclose(weights @ source, target, atol=1e-9)


def test_coarser_grid_averages_slabs() -> None:
    source = np.arange(8, dtype=np.float64) * 2.5  # 8 slices, 2.5 mm
    weights = slice_weights(source, np.linspace(0, 17.5, 4))
    np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    assert (weights > 0).sum(axis=1).min() >= 2  # every output slab averages several slices


@pytest.mark.parametrize(
    ("stored", "slope", "intercept", "padding", "expected_hu"),
    [
        (np.array([-2000, -1024, 0, 40], dtype=np.int16), 1.0, 0.0, None, [-1024, -1024, 0, 40]),
        (np.array([0, 1024, 1064], dtype=np.uint16), 1.0, -1024.0, None, [-1024, 0, 40]),
        # A padding value that would read as brain must become air.
        (np.array([1030, 1030, 1064], dtype=np.uint16), 1.0, -1024.0, 1030, [-1024, -1024, 40]),
    ],
)
def test_padding_and_values_below_air_become_air(
    stored: np.ndarray,
    slope: float,
    intercept: float,
    padding: int | None,
    expected_hu: list[int],
) -> None:
    floored = _air_floor(stored, slope, intercept, padding)
    np.testing.assert_allclose(floored * slope + intercept, expected_hu)


def test_grid_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="positive"):
        ModelGrid(depth=0)
    with pytest.raises(ValueError, match="fov_mm"):
        ModelGrid(fov_mm=-1.0)


@pytest.mark.parametrize("scale", [1e6, 1e4, 50.0, 13.0])
def test_plane_taps_cost_follows_the_grid_not_the_input_spacing(scale: float) -> None:
    """A spacing ratio of 1e6 (PixelSpacing 1\\1e-6) once sized the taps by the ratio: 9 GB."""
    taps = plane_taps(10, 4, scale)
    assert taps.index.shape[1] <= 10 + 2
    # the area weights by their definition: the overlap of each output pixel with each input one
    centres = 4.5 + (np.arange(4) - 1.5) * scale
    pixels = np.arange(10)
    lo = np.maximum(centres[:, None] - scale / 2, pixels[None, :] - 0.5)
    hi = np.minimum(centres[:, None] + scale / 2, pixels[None, :] + 0.5)
    expected = np.clip(hi - lo, 0, None) / scale
    np.testing.assert_allclose(_dense(taps.index, taps.weight, 10), expected, atol=1e-6)
