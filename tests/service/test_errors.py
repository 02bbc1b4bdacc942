"""Every error the gateway answers, with an input that causes it: problem+json, the right status and
code, never a 500, and no file left behind in the upload folder."""

from __future__ import annotations

import importlib
import io
import pkgutil
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate

import service
from service.api.deps import get_backend
from service.api.problems import ERROR_CODES, install_problem_handlers
from service.contract import ModelOutputs
from service.errors import BackendUnavailableError, HeadCTError, error_classes
from service.model_card import ModelCard

Files = list[tuple[str, tuple[str, bytes, str]]]


def _parts(named: list[tuple[str, bytes]]) -> Files:
    return [("files", (name, data, "application/dicom")) for name, data in named]


def _edited(files: list[Path], edit: Callable[[Dataset], None], only: int | None = None) -> Files:
    out = []
    for i, path in enumerate(files):
        data = path.read_bytes()
        if only is None or i == only:
            ds = pydicom.dcmread(io.BytesIO(data))
            edit(ds)
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=False)
            data = buffer.getvalue()
        out.append((path.name, data))
    return _parts(out)


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _mpeg2(ds: Dataset) -> None:
    raw = ds.PixelData
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
    ds.PixelData = encapsulate([raw])
    ds["PixelData"].VR = "OB"


def _strip_pixels(ds: Dataset) -> None:
    for keyword in (
        "PixelData",
        "Rows",
        "Columns",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "SamplesPerPixel",
        "PhotometricInterpretation",
    ):
        if keyword in ds:
            delattr(ds, keyword)


def _sagittal(ds: Dataset) -> None:
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]


def _set(keyword: str, value: Any) -> Callable[[Dataset], None]:
    return lambda ds: setattr(ds, keyword, value)


def _truncate(files: list[Path]) -> Files:
    named = [(p.name, p.read_bytes()) for p in files]
    name, data = named[-1]
    named[-1] = (name, data[: len(data) // 2])
    return _parts(named)


def _request(
    files: Files | None = None, content: bytes | Iterator[bytes] | None = None, ctype: str = ""
) -> dict[str, Any]:
    if files is not None:
        return {"files": files}
    return {"content": content, "headers": {"Content-Type": ctype} if ctype else {}}


# (id, settings overrides, request kwargs built from the study, status, code)
CASES: list[tuple[str, dict[str, Any], Callable[[list[Path]], dict[str, Any]], int, str]] = [
    ("not_dicom", {}, lambda s: _request(_parts([("a.dcm", b"hello, world" * 50)])), 400,
     "not_dicom"),
    ("truncated", {}, lambda s: _request(_truncate(s)), 400, "truncated_dicom"),
    ("corrupt", {}, lambda s: _request(_edited(s, lambda ds: delattr(ds, "Rows"), only=3)), 400,
     "corrupt_dicom"),
    ("empty_study", {}, lambda s: _request(
        content=_zip({"__MACOSX/._a.dcm": b"x", ".DS_Store": b"y"}), ctype="application/zip"),
     400, "empty_study"),
    ("transfer_syntax", {}, lambda s: _request(_edited(s, _mpeg2)), 400,
     "unsupported_transfer_syntax"),
    ("no_boundary", {}, lambda s: _request(content=b"--x\r\n", ctype="multipart/form-data"), 400,
     "malformed_upload"),
    ("broken_multipart", {}, lambda s: _request(
        content=b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a\"\r\n\r\nab",
        ctype="multipart/form-data; boundary=b"), 400, "malformed_upload"),
    ("wrong_field", {}, lambda s: _request(
        [("study", (p.name, p.read_bytes(), "application/dicom")) for p in s]), 400,
     "malformed_upload"),
    ("empty_body", {}, lambda s: _request(content=b"", ctype="application/zip"), 400,
     "empty_upload"),
    ("dotdot_entry", {}, lambda s: _request(
        content=_zip({"study/../../evil.dcm": s[0].read_bytes()}), ctype="application/zip"),
     400, "unsafe_zip_entry"),
    ("absolute_entry", {}, lambda s: _request(
        content=_zip({"/etc/evil.dcm": s[0].read_bytes()}), ctype="application/zip"),
     400, "unsafe_zip_entry"),
    ("too_large", {"max_upload_bytes": 50_000}, lambda s: _request(_edited(s, lambda ds: None)),
     413, "upload_too_large"),
    ("too_large_chunked", {"max_upload_bytes": 50_000}, lambda s: _request(
        content=iter([p.read_bytes() for p in s]), ctype="application/zip"), 413,
     "upload_too_large"),
    ("too_many_files", {"max_files": 5}, lambda s: _request(_edited(s, lambda ds: None)), 413,
     "too_many_files"),
    ("too_many_zip_entries", {"max_files": 5}, lambda s: _request(
        content=_zip({p.name: p.read_bytes() for p in s}), ctype="application/zip"), 413,
     "too_many_files"),
    ("zip_too_large", {"max_zip_uncompressed_bytes": 100_000}, lambda s: _request(
        content=_zip({p.name: p.read_bytes() for p in s}), ctype="application/zip"), 413,
     "zip_too_large"),
    ("zip_bomb", {}, lambda s: _request(
        content=_zip({"bomb.dcm": bytes(20_000_000)}), ctype="application/zip"), 413,
     "zip_ratio_exceeded"),
    ("text_plain", {}, lambda s: _request(content=b"hello", ctype="text/plain"), 415,
     "unsupported_media_type"),
    ("no_content_type", {}, lambda s: _request(content=b"hello"), 415, "unsupported_media_type"),
    ("no_pixel_data", {}, lambda s: _request(_edited(s, _strip_pixels)), 422, "no_pixel_data"),
    ("not_ct", {}, lambda s: _request(_edited(s, _set("Modality", "MR"))), 422, "not_ct"),
    ("sagittal", {}, lambda s: _request(_edited(s, _sagittal)), 422, "no_axial_series"),
    ("too_few_slices", {}, lambda s: _request(_edited(s[:3], lambda ds: None)), 422,
     "too_few_slices"),
    ("inconsistent", {}, lambda s: _request(
        _edited(s, _set("PixelSpacing", [0.3, 0.3]), only=5)), 422, "inconsistent_geometry"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "build", "status", "code"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_error_codes(
    make_client: Callable[..., TestClient],
    study: list[Path],
    upload_dir: Path,
    overrides: dict[str, Any],
    build: Callable[[list[Path]], dict[str, Any]],
    status: int,
    code: str,
) -> None:
    client = make_client(**overrides)
    response = client.post("/v1/triage", **build(study))
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code
    assert body["status"] == status
    assert body["title"] and body["detail"]
    assert body["type"] == f"urn:headct:problem:{code}"
    assert body["request_id"] == response.headers["x-request-id"]
    if status == 422 and code != "inconsistent_geometry":  # that one concerns the chosen series
        assert body["series"], "a 422 from series selection says why each series was not usable"
    assert list(upload_dir.iterdir()) == [], "the upload was not cleaned up"


def test_success_leaves_no_files(client: TestClient, study: list[Path], upload_dir: Path) -> None:
    response = client.post("/v1/triage", files=_edited(study, lambda ds: None))
    assert response.status_code == 200
    assert list(upload_dir.iterdir()) == []


class _FailingBackend:
    kind = "onnx"

    def __init__(self, card: ModelCard, *, delay_s: float = 0.0, down: bool = False) -> None:
        self._card, self.delay_s, self.down = card, delay_s, down

    @property
    def card(self) -> ModelCard:
        return self._card

    def ready(self) -> bool:
        return not self.down

    def infer(self, volumes: np.ndarray) -> ModelOutputs:
        if self.down:
            raise BackendUnavailableError("Triton at triton:8000 refused the connection.")
        time.sleep(self.delay_s)
        raise AssertionError("a timed-out call's result must not be used")

    def close(self) -> None:
        pass


def test_backend_unavailable_is_503(
    client: TestClient, study: list[Path], upload_dir: Path
) -> None:
    card = client.get("/v1/model").json()
    backend = _FailingBackend(ModelCard.model_validate(card), down=True)
    client.app.dependency_overrides[get_backend] = lambda: backend  # type: ignore[attr-defined]
    response = client.post("/v1/triage", files=_edited(study, lambda ds: None))
    assert response.status_code == 503
    assert response.json()["code"] == "backend_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert list(upload_dir.iterdir()) == []


def test_backend_timeout_is_504(
    make_client: Callable[..., TestClient], study: list[Path], upload_dir: Path
) -> None:
    client = make_client(inference_timeout_s=0.2)
    card = ModelCard.model_validate(client.get("/v1/model").json())
    client.app.dependency_overrides[get_backend] = lambda: _FailingBackend(  # type: ignore[attr-defined]
        card, delay_s=1.0
    )
    started = time.perf_counter()
    response = client.post("/v1/triage", files=_edited(study, lambda ds: None))
    assert response.status_code == 504
    assert response.json()["code"] == "backend_timeout"
    assert time.perf_counter() - started < 0.9
    assert list(upload_dir.iterdir()) == []


def test_readyz_is_503_when_the_backend_is_down(client: TestClient) -> None:
    card = ModelCard.model_validate(client.get("/v1/model").json())
    client.app.state.backend = _FailingBackend(card, down=True)  # type: ignore[attr-defined]
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["ready"] is False


def test_api_keys(make_client: Callable[..., TestClient]) -> None:
    client = make_client(api_keys=("k-one", "k-two"))
    missing = client.get("/v1/model")
    assert missing.status_code == 401
    assert missing.json()["code"] == "unauthorized"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/v1/model", headers={"X-API-Key": "nope"}).status_code == 401
    assert client.post("/v1/triage", content=b"x", headers={"X-API-Key": "nope"}).status_code == 401
    assert client.get("/v1/model", headers={"X-API-Key": "k-two"}).status_code == 200
    assert client.get("/v1/model", headers={"Authorization": "Bearer k-one"}).status_code == 200
    assert client.get("/healthz").status_code == 200
    assert client.get("/metrics").status_code == 200


def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    missing = client.get("/v1/nothing")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["code"] == "not_found"
    wrong = client.get("/v1/triage")
    assert wrong.status_code == 405
    assert wrong.json()["code"] == "method_not_allowed"


def _subclasses(cls: type[HeadCTError]) -> list[type[HeadCTError]]:
    return [c for sub in cls.__subclasses__() for c in (sub, *_subclasses(sub))]


def test_every_service_error_lives_in_service_errors() -> None:
    for module in pkgutil.walk_packages(service.__path__, "service."):
        importlib.import_module(module.name)
    elsewhere = [
        f"{c.__module__}.{c.__name__}"
        for c in _subclasses(HeadCTError)
        if c.__module__.startswith("service.") and c.__module__ != "service.errors"
    ]
    assert elsewhere == []


# The table as the OpenAPI description shows it; derived from the classes, pinned here so that a
# new or moved error changes it on purpose.
DOCUMENTED_TABLE = """\
| status | code |
|---|---|
| 400 | not_dicom, truncated_dicom, corrupt_dicom, empty_study, unsupported_transfer_syntax, \
malformed_upload, empty_upload, unsafe_zip_entry, invalid_cursor, invalid_request, malformed_http |
| 401 | unauthorized (only when HEADCT_API_KEYS is set) |
| 404 | study_images_not_found, unknown_window, study_not_found |
| 404, 405 | not_found, method_not_allowed |
| 408 | upload_timeout |
| 409 | unsupported_sop_class (per instance), unsupported_instance_transfer_syntax (per instance), \
invalid_instance (per instance), study_uid_mismatch (per instance) |
| 413 | upload_too_large, too_many_files, zip_too_large, zip_ratio_exceeded |
| 415 | unsupported_media_type (the request's Content-Type) |
| 422 | no_pixel_data, not_ct, no_axial_series, too_few_slices, inconsistent_geometry, \
ingest_timeout |
| 429 | over_capacity (with Retry-After), too_many_uploads (with Retry-After) |
| 499 | client_disconnected (logged only: no one is left to answer) |
| 500 | model_contract, internal_error |
| 503 | store_unavailable (with Retry-After), backend_unavailable (with Retry-After), \
shutting_down |
| 504 | backend_timeout |
"""


def test_the_documented_table_is_derived_from_the_classes() -> None:
    assert ERROR_CODES == DOCUMENTED_TABLE
    table: dict[str, int] = {}
    for row in ERROR_CODES.splitlines()[2:]:
        statuses, codes = row.strip("|").split("|")
        for code in codes.split(","):
            table[code.split("(")[0].strip()] = int(statuses.split(",")[0])
    leaves = error_classes()
    assert len(leaves) > 20
    assert {c.code for c in leaves} <= set(table)
    for cls in leaves:
        assert cls.status == table[cls.code], cls.code


@pytest.mark.parametrize("error", error_classes(), ids=lambda c: c.code)
def test_the_handler_answers_each_error_with_its_class_status(error: type[HeadCTError]) -> None:
    app = FastAPI()
    install_problem_handlers(app)

    @app.get("/v1/fail")
    async def fail() -> None:
        raise error("It failed.", retry_after=7)

    response = TestClient(app).get("/v1/fail")
    body = response.json()
    assert response.status_code == body["status"] == error.status
    assert (body["code"], body["title"]) == (error.code, error.title)
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers.get("retry-after") == ("7" if error.retry_after else None)
    hidden = error.status in (500, 503)  # server-side messages can name internal hosts
    assert (body["detail"] == "It failed.") is not hidden
