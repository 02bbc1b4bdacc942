"""Real exports carry files that are not DICOM beside the images (a notes.txt, a JPEG preview, a
PDF report). They are skipped with a warning in the result when a usable series remains, through
every way a study comes in: a folder upload, a zip, and the command line. A lone upload that is
not DICOM, or a study of nothing else, is still refused as not DICOM."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.cli import app as cli
from testing.onnx_fixture import FixtureModel
from testing.studies import multipart_files

NOTES = b"Head CT for a fall on 2 November; compare with the prior study.\n"
# The first bytes of a JFIF file: start of image, the APP0 segment, then image data.
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + bytes(512)
PDF = (
    b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"
)
STRAYS = {"notes.txt": NOTES, "preview.jpg": JPEG, "report.pdf": PDF}


def _skipped(prefix: str = "") -> list[str]:
    return [f"skipped {prefix}{name}: not DICOM" for name in STRAYS]


def _probabilities(body: dict[str, object]) -> np.ndarray:
    return np.array([f["probability"] for f in body["findings"]])  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def study_with_strays(study: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic study's files in a folder, with the three strays among them."""
    folder = tmp_path_factory.mktemp("export")
    for path in study:
        (folder / path.name).write_bytes(path.read_bytes())
    for name, data in STRAYS.items():
        (folder / name).write_bytes(data)
    return folder


def test_a_folder_upload_skips_the_strays(client: TestClient, study: list[Path]) -> None:
    reference = client.post("/v1/triage", files=multipart_files(study)).json()
    strays = [("files", (name, data, "application/octet-stream")) for name, data in STRAYS.items()]
    parts = multipart_files(study[:10]) + strays + multipart_files(study[10:])
    response = client.post("/v1/triage", files=parts)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["warnings"][:3] == _skipped()
    assert body["warnings"][3:] == reference["warnings"]
    np.testing.assert_array_equal(_probabilities(body), _probabilities(reference))
    assert body["slices"]["source_count"] == len(study)


def test_a_zip_skips_the_strays(client: TestClient, study_with_strays: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(study_with_strays.iterdir()):
            archive.write(path, f"export/{path.name}")
    response = client.post(
        "/v1/triage", content=buffer.getvalue(), headers={"Content-Type": "application/zip"}
    )
    assert response.status_code == 200, response.text
    skipped = [w for w in response.json()["warnings"] if "skipped" in w]
    assert sorted(skipped) == sorted(_skipped("upload.zip:export/"))


def test_the_cli_skips_the_strays(study_with_strays: Path, fixture_model: FixtureModel) -> None:
    repository = ["--model-repository", str(fixture_model.repository)]
    result = CliRunner().invoke(cli, ["triage", str(study_with_strays), "--json", *repository])
    assert result.exit_code == 0, result.output
    assert sorted(w for w in json.loads(result.stdout)["warnings"] if "skipped" in w) == sorted(
        _skipped()
    )
    table = CliRunner().invoke(cli, ["triage", str(study_with_strays), *repository])
    assert table.exit_code == 0, table.output
    shown = " ".join(table.stdout.split())
    for warning in _skipped():
        assert f"warning: {warning}" in shown


@pytest.mark.parametrize(
    "request_kwargs",
    [
        {"files": [("files", ("notes.txt", NOTES, "text/plain"))]},
        {"content": PDF, "headers": {"Content-Type": "application/dicom"}},
        {"files": [("files", (n, d, "application/octet-stream")) for n, d in STRAYS.items()]},
    ],
    ids=["lone_text_part", "lone_pdf_body", "nothing_but_strays"],
)
def test_an_upload_with_nothing_dicom_is_still_refused(
    client: TestClient, request_kwargs: dict[str, object]
) -> None:
    response = client.post("/v1/triage", **request_kwargs)  # type: ignore[arg-type]
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "not_dicom"


def test_a_damaged_dicom_file_is_not_a_stray(client: TestClient, study: list[Path]) -> None:
    """A file with the DICOM marker that cannot be read is a broken part of the study, not a
    stray: the study is refused rather than triaged without it."""
    damaged = bytes(128) + b"DICM" + b"\xff" * 64
    parts = [("files", ("IM9999.dcm", damaged, "application/dicom"))]
    response = client.post("/v1/triage", files=multipart_files(study) + parts)
    assert response.status_code == 400
    assert response.json()["code"] == "not_dicom"
