"""Ingest on synthetic studies written as real DICOM: HU round-trips, the result does not depend
on file order, compression or rescale encoding, the right series is chosen, and faulty geometry is
reported or refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from service.errors import (
    InconsistentGeometryError,
    NoAxialSeriesError,
    NotDicomError,
    TooFewSlicesError,
)
from service.ingest import ingest_study
from service.preprocess import ModelGrid
from synth import SynthOptions, generate_study, write_study

SLICES, MATRIX = 20, 64
NATIVE = ModelGrid(depth=SLICES, height=MATRIX, width=MATRIX)


def _write(folder: Path, seed: int = 5, **options: object) -> tuple[np.ndarray, list[Path]]:
    opts = SynthOptions(slices=SLICES, matrix=MATRIX, **options)  # type: ignore[arg-type]
    study = generate_study(np.random.default_rng(seed), opts)
    files = write_study(study, folder, opts, np.random.default_rng(seed + 100))
    return study.hu, files


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray]:
    hu, files = _write(tmp_path_factory.mktemp("reference"))
    return hu, ingest_study([files[0].parent], grid=NATIVE).volume.hu


def test_hu_round_trips_within_quantisation(reference: tuple[np.ndarray, np.ndarray]) -> None:
    truth, volume = reference
    expected = np.clip(truth, -1024, None)
    assert volume.dtype == np.int16 and volume.shape == truth.shape
    assert np.abs(volume - expected).max() <= 0.5 + 1e-6


@pytest.mark.parametrize(
    "variant",
    [
        {"slice_order": "shuffled"},
        {"slice_order": "descending"},
        {"compression": "rle"},
        {"compression": "jpeg2000"},
        {"pixel_representation": "signed"},
    ],
    ids=lambda v: "-".join(str(x) for x in v.values()),
)
def test_same_volume_whatever_the_order_or_encoding(
    tmp_path: Path, reference: tuple[np.ndarray, np.ndarray], variant: dict[str, str]
) -> None:
    _write(tmp_path / "study", **variant)
    volume = ingest_study([tmp_path / "study"], grid=NATIVE).volume.hu
    np.testing.assert_array_equal(volume, reference[1])


def test_the_soft_tissue_axial_series_is_chosen(tmp_path: Path) -> None:
    _write(tmp_path / "study", extra_series=True, slice_order="shuffled")
    result = ingest_study([tmp_path / "study"], grid=ModelGrid(8, 32, 32))
    by_choice = {r.selected: r for r in result.reports}
    chosen = by_choice[True]
    assert chosen.kernel_class == "soft_tissue" and chosen.slices == SLICES
    assert len(result.reports) == 4
    reasons = " ".join(" ".join(r.reasons) for r in result.reports if not r.selected)
    assert "localizer" in reasons and "another series was preferred" in reasons
    bone = next(r for r in result.reports if r.kernel_class == "bone")
    assert bone.eligible and not bone.selected


def test_a_localizer_alone_is_no_axial_series(tmp_path: Path) -> None:
    _, files = _write(tmp_path / "study", extra_series=True)
    localizers = [
        f for f in files if "LOCALIZER" in pydicom.dcmread(f, stop_before_pixels=True).ImageType
    ]
    assert localizers
    with pytest.raises(NoAxialSeriesError) as info:
        ingest_study(localizers)
    assert info.value.details["series"][0]["reasons"]


def test_duplicates_are_dropped_and_gaps_reported(tmp_path: Path) -> None:
    _, files = _write(tmp_path / "study")
    shutil.copy(files[3], tmp_path / "study" / "copy_of_slice_4.dcm")
    files[10].unlink()  # a missing slice: a gap
    result = ingest_study([tmp_path / "study"], grid=ModelGrid(8, 32, 32))
    assert result.stack.duplicates_dropped == 1
    assert len(result.stack.slices) == SLICES - 1
    assert any("gap" in w for w in result.warnings)


def test_gantry_tilt_is_reported(tmp_path: Path) -> None:
    _, files = _write(tmp_path / "study")
    for path in files:
        ds = pydicom.dcmread(path)
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 0.2 * z, z]  # each slice shifted along y: ~11 degrees
        ds.save_as(path)
    result = ingest_study([tmp_path / "study"], grid=ModelGrid(8, 32, 32))
    assert 10 < result.stack.tilt_deg < 12
    assert any("tilt" in w for w in result.warnings)


def test_conflicting_slices_at_one_position_are_refused(tmp_path: Path) -> None:
    _, files = _write(tmp_path / "study")
    ds = pydicom.dcmread(files[5])
    ds.ImagePositionPatient = pydicom.dcmread(files[6]).ImagePositionPatient
    ds.save_as(files[5])
    with pytest.raises(InconsistentGeometryError, match="same position"):
        ingest_study([tmp_path / "study"])


def test_missing_positions_and_mixed_sizes_are_refused(tmp_path: Path) -> None:
    _, files = _write(tmp_path / "a")
    ds = pydicom.dcmread(files[2])
    del ds.ImagePositionPatient
    ds.save_as(files[2])
    with pytest.raises(InconsistentGeometryError, match="ImagePositionPatient"):
        ingest_study([tmp_path / "a"])

    _, files = _write(tmp_path / "b")
    ds = pydicom.dcmread(files[2])
    ds.Rows, ds.Columns = 32, 32
    ds.PixelData = ds.PixelData[: 32 * 32 * 2]
    ds.save_as(files[2])
    with pytest.raises(InconsistentGeometryError, match="image sizes"):
        ingest_study([tmp_path / "b"])


def test_too_few_slices_names_the_count(tmp_path: Path) -> None:
    _, files = _write(tmp_path / "study")
    for path in files[8:]:
        path.unlink()
    with pytest.raises(TooFewSlicesError, match="8 slices"):
        ingest_study([tmp_path / "study"])


def test_files_that_are_not_dicom_are_skipped_with_a_warning(
    tmp_path: Path, reference: tuple[np.ndarray, np.ndarray]
) -> None:
    _write(tmp_path / "study")
    (tmp_path / "study" / "notes.txt").write_text("Head CT for a fall.\n")
    (tmp_path / "study" / "empty.bin").write_bytes(b"")
    result = ingest_study([tmp_path / "study"], grid=NATIVE)
    np.testing.assert_array_equal(result.volume.hu, reference[1])
    skipped = [f"skipped {n}: not DICOM" for n in ("empty.bin", "notes.txt")]
    assert result.skipped == skipped
    assert result.warnings[:2] == skipped
    assert result.describe()["skipped"] == skipped
    with pytest.raises(NotDicomError, match="None of the 2 files"):
        ingest_study([tmp_path / "study" / "notes.txt", tmp_path / "study" / "empty.bin"])
    with pytest.raises(NotDicomError, match=r"notes\.txt is not a DICOM file"):
        ingest_study([tmp_path / "study" / "notes.txt"])
