"""Ingest against the real DICOM files that pydicom and pydicom-data ship."""

from __future__ import annotations

import io
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut

from service.dicom_io import load_study
from service.errors import (
    CorruptDicomError,
    EmptyStudyError,
    IngestError,
    NotCTError,
    NotDicomError,
    TooFewSlicesError,
    TruncatedDicomError,
)
from service.geometry import order_slices
from service.ingest import ingest_study
from service.preprocess import ModelGrid, to_model_grid
from service.series import SelectionRules, group_series
from tests.conftest import real_dicom_file, real_dicom_files

SMALL_GRID = ModelGrid(depth=2, height=32, width=32)
FILES = real_dicom_files()


def test_there_are_real_files_to_read() -> None:
    assert len(FILES) > 150


def test_every_shipped_file_ingests_or_fails_specifically() -> None:
    outcomes: dict[str, str] = {}
    for path in FILES:
        try:
            result = ingest_study([path], grid=SMALL_GRID, rules=SelectionRules(min_slices=1))
        except IngestError as exc:
            assert exc.code != IngestError.code and exc.message, path.name
            outcomes[path.name] = exc.code
        else:
            assert result.volume.hu.dtype == np.int16
            assert result.volume.hu.shape == (2, 32, 32)
            outcomes[path.name] = "ok"
        # Any other exception propagates and fails the test with the file's traceback.
    assert outcomes["CT_small.dcm"] == "ok"
    assert outcomes["MR_small.dcm"] == "not_ct"
    assert {"ok", "not_ct", "no_pixel_data", "not_dicom"} <= set(outcomes.values())


def test_every_shipped_image_decodes_or_fails_specifically() -> None:
    """Past the CT rules: order and resample every image series of every file, whatever its
    modality, so that each decoder and each odd header meets the preprocessing code."""
    codes: Counter[str] = Counter()
    for path in FILES:
        try:
            series_list = group_series(load_study([path]).files)
        except IngestError:
            continue
        for series in series_list:
            if not series.slices:
                continue
            try:
                volume = to_model_grid(order_slices(series), SMALL_GRID)
            except IngestError as exc:
                assert exc.message, path.name
                codes[exc.code] += 1
            else:
                assert volume.hu.shape == (2, 32, 32) and volume.hu.dtype == np.int16
                codes["ok"] += 1
    # With pydicom 3.0 and its plugins: 85 decode; colour images are not CT; multi-frame objects
    # without per-frame positions (RT dose, colour cine) have no usable geometry.
    assert codes["ok"] > 80
    assert set(codes) <= {
        "ok",
        "not_ct",
        "inconsistent_geometry",
        "corrupt_dicom",
        "truncated_dicom",
        "unsupported_transfer_syntax",
    }


def _native_grid(ds: pydicom.Dataset) -> ModelGrid:
    return ModelGrid(depth=1, height=int(ds.Rows), width=int(ds.Columns))


@pytest.mark.parametrize("name", ["CT_small.dcm", "693_UNCR.dcm", "693_J2KR.dcm", "693_UNCI.dcm"])
def test_real_ct_hu_matches_the_modality_lut(name: str) -> None:
    path = real_dicom_file(name)
    ds = pydicom.dcmread(path)
    expected = np.maximum(apply_modality_lut(ds.pixel_array, ds), -1024)
    result = ingest_study([path], grid=_native_grid(ds), rules=SelectionRules(min_slices=1))
    hu = result.volume.hu[0]
    np.testing.assert_array_equal(hu, np.rint(expected).astype(np.int16))
    # A head/body CT: air, soft tissue and bone are all there.
    assert hu.min() <= -850
    assert -100 < np.median(hu[hu > -500]) < 200
    assert hu.max() > 600


def test_lossless_jpeg2000_decodes_to_the_same_hu_as_uncompressed() -> None:
    a = ingest_study([real_dicom_file("693_UNCR.dcm")], rules=SelectionRules(min_slices=1))
    b = ingest_study([real_dicom_file("693_J2KR.dcm")], rules=SelectionRules(min_slices=1))
    np.testing.assert_array_equal(a.volume.hu, b.volume.hu)


def test_enhanced_ct_multiframe_uses_per_frame_geometry_and_rescale() -> None:
    path = real_dicom_file("eCT_Supplemental.dcm")
    ds = pydicom.dcmread(path)
    rules = SelectionRules(min_slices=1, excluded_image_types=())
    result = ingest_study([path], grid=ModelGrid(depth=2, height=512, width=512), rules=rules)
    assert len(result.stack.slices) == 2 and result.stack.slices[0].frame is not None
    transform = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    raw = ds.pixel_array.astype(np.float64)
    expected = raw * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
    positions = [
        float(f.PlanePositionSequence[0].ImagePositionPatient[2])
        for f in ds.PerFrameFunctionalGroupsSequence
    ]
    order = np.argsort(positions)
    np.testing.assert_array_equal(
        result.volume.hu, np.rint(np.maximum(expected[order], -1024)).astype(np.int16)
    )
    # By default a perfusion map is not a series to triage.
    with pytest.raises(IngestError) as info:
        ingest_study([path], rules=SelectionRules(min_slices=1))
    assert "perfusion" in str(info.value.details["series"][0]["reasons"])


def test_default_rules_want_a_whole_head(ct_small: Path) -> None:
    with pytest.raises(TooFewSlicesError) as info:
        ingest_study([ct_small])
    report = info.value.details["series"][0]
    assert report["slices"] == 1 and not report["eligible"]


def test_truncated_ct_is_reported_as_truncated(ct_small: Path) -> None:
    data = ct_small.read_bytes()
    for cut in (len(data) - 1000, len(data) // 2, 400):
        with pytest.raises((TruncatedDicomError, NotDicomError)):
            ingest_study([("cut.dcm", data[:cut])], rules=SelectionRules(min_slices=1))
    with pytest.raises(TruncatedDicomError):
        ingest_study([("cut.dcm", data[:-1000])], rules=SelectionRules(min_slices=1))


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (b"", NotDicomError),
        (b"hello, I am a text file\n" * 20, NotDicomError),
        (bytes(range(256)) * 8, NotDicomError),
        (b"\0" * 128 + b"DICM" + b"\xff" * 64, NotDicomError),
        (b"PK\x03\x04 not really a zip", CorruptDicomError),
    ],
)
def test_garbage_is_not_dicom(payload: bytes, error: type[IngestError]) -> None:
    with pytest.raises(error):
        ingest_study([("upload.bin", payload)])


def test_zip_of_a_study_with_clutter(ct_small: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("study/IM0001", ct_small.read_bytes())
        archive.writestr("__MACOSX/study/._IM0001", b"resource fork")
        archive.writestr(".DS_Store", b"finder")
        archive.writestr("study/", b"")
    result = ingest_study([("study.zip", buffer.getvalue())], rules=SelectionRules(min_slices=1))
    assert len(result.stack.slices) == 1


def test_empty_zip_and_empty_folder(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w"):
        pass
    with pytest.raises(EmptyStudyError):
        ingest_study([("empty.zip", buffer.getvalue())])
    with pytest.raises(EmptyStudyError):
        ingest_study([tmp_path])


def test_mr_is_not_ct() -> None:
    with pytest.raises(NotCTError, match="MR"):
        ingest_study([real_dicom_file("MR_small.dcm")], rules=SelectionRules(min_slices=1))
