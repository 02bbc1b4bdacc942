"""The study routes of an in-process gateway on a study store (SQLite in a temporary folder):
STOW-RS then the explicit completion trigger, the list's stable pages, bad queries, and the
routes' absence when no store is configured."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.pacs.instances import InstanceRef
from service.pacs.store import StudyStore
from service.settings import Settings
from testing.onnx_fixture import FixtureModel
from testing.studies import multipart_related, write_synthetic_study

API_KEY = "k-studies"


def _settings(fixture_model: FixtureModel, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "model_repository": fixture_model.repository,
        "onnx_intra_op_threads": 1,
        "data_dir": tmp_path / "data",
        "study_quiet_s": 600.0,  # only the explicit trigger completes a study here
        "worker_poll_s": 0.1,
        "api_keys": (API_KEY,),
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def client(fixture_model: FixtureModel, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(_settings(fixture_model, tmp_path), configure_logs=False)
    with TestClient(app, headers={"X-API-Key": API_KEY}) as client:
        yield client


def test_the_complete_trigger_triages_a_study_at_once(client: TestClient, tmp_path: Path) -> None:
    files = write_synthetic_study(tmp_path / "study", seed=12, slices=20)
    study_uid = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    body, content_type = multipart_related([f.read_bytes() for f in files])
    url = f"/dicomweb/studies/{study_uid}"
    stored = client.post(url, content=body, headers={"Content-Type": content_type})
    assert stored.status_code == 200, stored.text
    assert len(stored.json()["00081199"]["Value"]) == 20
    unauthorised = client.post(
        url, content=body, headers={"Content-Type": content_type, "X-API-Key": "wrong"}
    )
    assert unauthorised.status_code == 401

    receiving = client.get(f"/v1/studies/{study_uid}").json()
    assert (receiving["state"], receiving["instances"], receiving["result"]) == (
        "receiving",
        20,
        None,
    )
    completed = client.post(f"/v1/studies/{study_uid}/complete")
    assert completed.status_code == 202
    assert completed.json()["state"] in ("pending", "triaging", "triaged")
    deadline = time.monotonic() + 30
    while (status := client.get(f"/v1/studies/{study_uid}").json())["state"] != "triaged":
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    assert status["result"]["study_uid"] == study_uid
    assert status["finished_at"] is not None and status["triage_runs"] == 1

    (listed,) = client.get("/v1/studies").json()["studies"]
    assert listed["study_uid"] == study_uid
    assert listed["priority"] == status["result"]["triage"]["priority"]
    assert listed["findings"] == status["result"]["triage"]["findings"]

    unknown = client.post("/v1/studies/1.2.3.4/complete")
    assert unknown.status_code == 404 and unknown.json()["code"] == "study_not_found"


def _finish_failed(store: StudyStore, study_uid: str) -> None:
    """A one-instance study whose bytes are not DICOM, completed: the app's worker fails it."""
    ref = InstanceRef(study_uid, study_uid + ".1", study_uid + ".1.1", "1.2.840.10008.5.1.4.1.1.2")
    store.add_instance(ref, b"not DICOM", route="stowrs")
    store.mark_complete(study_uid)
    deadline = time.monotonic() + 30
    while (record := store.get_study(study_uid)) is None or record.finished_at is None:
        assert time.monotonic() < deadline, record
        time.sleep(0.05)


def test_the_list_pages_are_stable(client: TestClient) -> None:
    store: StudyStore = client.app.state.store  # type: ignore[attr-defined]
    uids = [f"1.2.826.0.1.{n}" for n in range(5)]
    for uid in uids:
        _finish_failed(store, uid)
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(3):
        page = client.get(
            "/v1/studies", params={"limit": 2, "cursor": cursor} if cursor else {"limit": 2}
        )
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [s["study_uid"] for s in body["studies"]]
        cursor = body["next_cursor"]
    assert seen == uids, "in the order they finished, each once"
    listed = client.get("/v1/studies").json()["studies"]
    assert {(s["state"], s["error_code"], s["priority"]) for s in listed} == {
        ("failed", "not_dicom", None)
    }
    end = client.get("/v1/studies", params={"cursor": cursor}).json()
    assert end == {"studies": [], "next_cursor": cursor}, "at the end the cursor stays"

    _finish_failed(store, "1.2.826.0.1.9")  # a new result appears after the last page
    (new,) = client.get("/v1/studies", params={"cursor": cursor}).json()["studies"]
    assert new["study_uid"] == "1.2.826.0.1.9"

    assert (
        client.get("/v1/studies", params={"since": "2999-01-01T00:00:00Z"}).json()["studies"] == []
    )
    assert len(client.get("/v1/studies", params={"since": "2000-01-01"}).json()["studies"]) == 6

    for params, code in [
        ({"cursor": "not-a-cursor"}, "invalid_cursor"),
        ({"limit": 0}, "invalid_request"),
        ({"since": "yesterday"}, "invalid_request"),
    ]:
        refused = client.get("/v1/studies", params=params)
        assert refused.status_code == 400 and refused.json()["code"] == code, params
    bad_uid = client.get("/v1/studies/1.2.abc")
    assert bad_uid.status_code == 400 and bad_uid.json()["code"] == "invalid_request"
    assert client.get("/v1/studies/1.2.3.999").json()["code"] == "study_not_found"


def test_without_a_store_there_are_no_study_routes(
    fixture_model: FixtureModel, tmp_path: Path
) -> None:
    app = create_app(_settings(fixture_model, tmp_path, data_dir=None), configure_logs=False)
    with TestClient(app, headers={"X-API-Key": API_KEY}) as client:
        assert client.get("/v1/studies").status_code == 404
        assert client.post("/dicomweb/studies").status_code == 404
        assert not (tmp_path / "data").exists()
