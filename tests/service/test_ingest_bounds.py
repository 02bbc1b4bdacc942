"""Work per request is bounded by what the files really hold: declared frame counts are checked
against the pixel data before any per-frame work, a geometry outside the head CT envelope makes a
series ineligible (resampling cost never follows a spacing of 1e-6 mm), DICOMDIR indexes inside
an upload are skipped, and error messages never quote header values."""

from __future__ import annotations

import io
import time
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.fileset import FileSet

from service.errors import CorruptDicomError, IngestError, NoAxialSeriesError, NotDicomError
from service.ingest import ingest_study
from service.preprocess import ModelGrid
from synth import SynthOptions, generate_study, write_study

GRID = ModelGrid(depth=16, height=32, width=32)


def _study(folder: Path, slices: int = 20) -> list[Path]:
    options = SynthOptions(slices=slices, matrix=64)
    study = generate_study(np.random.default_rng(4), options)
    return write_study(study, folder, options, np.random.default_rng(5))


def _edit(path: Path, *, text_tag: int | None = None, text: str = "", **values: object) -> bytes:
    """The file with tags changed; ``text_tag`` is written as free text (LO), whatever its VR."""
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    if text_tag is not None:
        del ds[text_tag]
        ds.add_new(text_tag, "LO", text)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.mark.parametrize("frames", [2, 1000, 2_147_483_647])
def test_declared_frames_beyond_the_pixel_data_are_refused_at_once(
    tmp_path: Path, frames: int
) -> None:
    files = _study(tmp_path)
    data = _edit(files[0], NumberOfFrames=frames)
    started = time.perf_counter()
    with pytest.raises(CorruptDicomError, match="frames") as error:
        ingest_study([(files[0].name, data)], grid=GRID)
    assert time.perf_counter() - started < 2.0
    assert error.value.code == "corrupt_dicom"


@pytest.mark.parametrize(
    ("spacing", "reason"),
    [([1.0, 1e-6], "outside the head CT envelope"), ([0.5, 4.0], "differ more than")],
)
def test_geometry_outside_the_envelope_makes_the_series_ineligible(
    tmp_path: Path, spacing: list[float], reason: str
) -> None:
    files = _study(tmp_path)
    edited = [(f.name, _edit(f, PixelSpacing=spacing)) for f in files]
    started = time.perf_counter()
    with pytest.raises(NoAxialSeriesError) as error:
        ingest_study(edited, grid=GRID)
    assert time.perf_counter() - started < 5.0
    reports = error.value.details["series"]
    assert any(reason in r for report in reports for r in report["reasons"]), reports


def test_a_zip_with_a_dicomdir_index_is_read_without_it(tmp_path: Path) -> None:
    files = _study(tmp_path / "study")
    file_set = FileSet()
    for path in files:
        file_set.add(pydicom.dcmread(path))
    file_set.write(tmp_path / "media")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as handle:
        for path in sorted((tmp_path / "media").rglob("*")):
            if path.is_file():
                handle.write(path, path.relative_to(tmp_path / "media").as_posix())
    names = zipfile.ZipFile(io.BytesIO(archive.getvalue())).namelist()
    assert "DICOMDIR" in names
    result = ingest_study([("upload.zip", archive.getvalue())], grid=GRID)
    assert result.volume.hu.shape == (16, 32, 32)


def test_errors_name_the_file_not_header_values(tmp_path: Path) -> None:
    files = _study(tmp_path)
    identifier = "PHI987654"
    # SeriesNumber holding an identifier where a number belongs (explicit VR: read back as text)
    edited = [(f.name, _edit(f, text_tag=0x00200011, text=identifier)) for f in files]
    with pytest.raises(IngestError) as error:
        ingest_study(edited, grid=GRID)
    assert identifier not in error.value.message
    assert identifier not in str(error.value.to_dict())
    # Garbage that pydicom chokes on: the message names the file and the kind of failure.
    with pytest.raises(NotDicomError) as garbage:
        ingest_study([("x.dcm", b"DICM" + identifier.encode() * 40)], grid=GRID)
    assert identifier not in garbage.value.message and "x.dcm" in garbage.value.message


def test_series_reports_carry_no_free_text_tags(tmp_path: Path) -> None:
    """A 422's per-series report names the series by UID and number, never by SeriesDescription,
    where sites put names and notes."""
    files = _study(tmp_path)
    identifier = "PHI987654 DOE^JOHN"
    edited = [(f.name, _edit(f, SeriesDescription=identifier, Modality="MR")) for f in files]
    with pytest.raises(IngestError) as error:
        ingest_study(edited, grid=GRID)
    body = str(error.value.to_dict())
    assert "series" in body  # the report is there
    assert "PHI987654" not in body and "DOE" not in body


def _deflated(ds: pydicom.Dataset) -> bytes:
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_deflated_files_are_read_and_a_deflate_bomb_is_refused_unread(tmp_path: Path) -> None:
    files = _study(tmp_path)
    deflated = [(f.name, _deflated(pydicom.dcmread(f))) for f in files]
    plain = ingest_study([f.parent for f in files[:1]], grid=GRID).volume.hu
    assert np.array_equal(ingest_study(deflated, grid=GRID).volume.hu, plain)

    bomb = pydicom.dcmread(files[0])
    bomb.Rows = bomb.Columns = 4096
    bomb.PixelData = bytes(4096 * 4096 * 2)  # 32 MiB of zeros: about 33 KB deflated
    data = _deflated(bomb)
    assert len(data) < 100_000
    started = time.perf_counter()
    with pytest.raises(CorruptDicomError, match="inflates past"):
        ingest_study([("bomb.dcm", data)], grid=GRID)
    assert time.perf_counter() - started < 2.0


@pytest.mark.parametrize("compression", ["rle", "jpeg2000"])
@pytest.mark.parametrize(("rows", "frames"), [(4096, 1), (2048, 8)])
def test_compressed_pixels_declaring_far_more_than_they_hold_are_refused_undecoded(
    tmp_path: Path, compression: str, rows: int, frames: int
) -> None:
    options = SynthOptions(slices=20, matrix=64, compression=compression)
    study = generate_study(np.random.default_rng(4), options)
    files = write_study(study, tmp_path, options, np.random.default_rng(5))
    data = _edit(files[0], Rows=rows, Columns=rows, NumberOfFrames=frames)
    started = time.perf_counter()
    with pytest.raises(CorruptDicomError, match="refused undecoded"):
        ingest_study([(files[0].name, data)], grid=GRID)
    assert time.perf_counter() - started < 2.0


def test_declared_pixels_over_the_decoded_cap_are_refused(tmp_path: Path) -> None:
    files = _study(tmp_path)
    # 4096 x 4096 x 2 bytes x 64 frames = 2 GiB declared, in a 8 KB file
    data = _edit(files[0], Rows=4096, Columns=4096, NumberOfFrames=64)
    with pytest.raises(CorruptDicomError, match="over the limit"):
        ingest_study([(files[0].name, data)], grid=GRID)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("Modality", "ZZTEST"), ("Modality", "PHI98765"), ("ImageType", ["ORIGINAL", "PHI98765"])],
)
def test_coded_tags_holding_identifiers_are_not_echoed(
    tmp_path: Path, keyword: str, value: object
) -> None:
    files = _study(tmp_path)
    values: dict[str, object] = {keyword: value}
    if keyword == "ImageType":
        values["ImageType"] = [*value, "LOCALIZER"]  # type: ignore[misc]
    edited = [(f.name, _edit(f, **values)) for f in files]
    with pytest.raises(IngestError) as error:
        ingest_study(edited, grid=GRID)
    shown = str(error.value.to_dict())
    assert "PHI98765" not in shown and "ZZTEST" not in shown
    assert ("modality" if keyword == "Modality" else "ImageType") in shown  # named, not quoted
