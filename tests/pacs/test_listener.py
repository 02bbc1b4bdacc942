"""Studies in by DIMSE and DICOMweb, for real: a ``headct listen`` process and a ``headct serve``
gateway share one study store (SQLite in a temporary data folder; both run a study worker). dcmtk's
storescu, pynetdicom, Orthanc and dicomweb-client send to them; the gateway answers what became of
each study."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from service.backends import create_backend
from service.pacs.store import StudyStore
from service.pacs.tables import StudyState
from service.pipeline import TriagePipeline
from service.settings import Settings
from testing.gateway_process import GatewayProcess, free_port, gateway_process
from testing.listener_process import ListenerProcess, listener_process
from testing.onnx_fixture import FixtureModel
from testing.orthanc import StoreSCUError, orthanc_server, storescu
from testing.studies import Patient, multipart_related, write_synthetic_study
from tests.conftest import real_dicom_file
from tests.pacs.conftest import AE_TITLE, QUIET_S, ROOT, pacs_env, wait_for

PATIENT = Patient(name="Qvxlz^Listener", patient_id="PID-LSTN-7731", birth_date="19020304")
LISTEN = [sys.executable, "-m", "service.cli", "listen"]
SERVE = [sys.executable, "-m", "service.cli", "serve"]
FINISHED = {StudyState.TRIAGED, StudyState.FAILED}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pacs") / "data"


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def listener(
    fixture_model: FixtureModel, data_dir: Path, metrics_port: int, tmp_path: Path
) -> Iterator[ListenerProcess]:
    env = pacs_env(fixture_model, data_dir, listen_metrics_port=str(metrics_port))
    log = data_dir.parent / "listener.log"
    with listener_process(
        LISTEN, log=log, env=env, cwd=ROOT, ae_title=AE_TITLE, calling_ae="STORESCU"
    ) as process:
        yield process


@pytest.fixture(scope="module")
def gateway(
    fixture_model: FixtureModel, data_dir: Path, listener: ListenerProcess
) -> Iterator[GatewayProcess]:
    env = pacs_env(fixture_model, data_dir)
    with gateway_process(SERVE, log=data_dir.parent / "gateway.log", env=env, cwd=ROOT) as server:
        yield server


@pytest.fixture(scope="module")
def store(data_dir: Path, listener: ListenerProcess) -> Iterator[StudyStore]:
    store = StudyStore(data_dir, f"sqlite:///{data_dir / 'store.sqlite3'}")
    yield store
    store.close()


@pytest.fixture(scope="module")
def tmp_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("listener-tests")


def study_uid(files: list[Path]) -> str:
    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def in_process_probabilities(files: list[Path], fixture_model: FixtureModel) -> list[float]:
    backend = create_backend(Settings(model_repository=fixture_model.repository))
    try:
        result = TriagePipeline(backend).run(files)
    finally:
        backend.close()
    return [f.probability for f in result.findings]


def test_storescu_study_is_triaged_once_and_answered_by_the_gateway(
    listener: ListenerProcess,
    gateway: GatewayProcess,
    store: StudyStore,
    metrics_port: int,
    fixture_model: FixtureModel,
    tmp_path: Path,
) -> None:
    files = write_synthetic_study(tmp_path / "phi", seed=1, slices=20, patient=PATIENT)
    uid = study_uid(files)
    storescu(files, port=listener.port, called_aet=AE_TITLE)
    record = wait_for(store, uid, lambda r: r.state in FINISHED)
    assert record.state is StudyState.TRIAGED, record.error_message

    response = httpx2.get(f"{gateway.url}/v1/studies/{uid}", timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["state"], body["instances"], body["triage_runs"]) == ("triaged", 20, 1)
    assert body["result"]["study_uid"] == uid
    assert body["model"] == body["result"]["model"]
    assert body["error"] is None and body["deliveries"] == []
    np.testing.assert_allclose(
        [f["probability"] for f in body["result"]["findings"]],
        in_process_probabilities(files, fixture_model),
        atol=1e-6,
    )

    storescu(files, port=listener.port, called_aet=AE_TITLE)  # the PACS sends it again
    time.sleep(QUIET_S * 2.5)
    record = wait_for(store, uid, lambda r: r.state in FINISHED)
    assert (record.state, record.instances, record.triage_runs) == (StudyState.TRIAGED, 20, 1)

    metrics = httpx2.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert 'headct_instances_received_total{outcome="stored",route="dimse"} 20.0' in metrics
    assert 'headct_instances_received_total{outcome="duplicate",route="dimse"} 20.0' in metrics
    logs = listener.log.read_text() + gateway.log.read_text()
    for secret in (PATIENT.name, PATIENT.patient_id, PATIENT.birth_date, uid):
        assert secret not in logs and secret not in metrics


def test_a_new_instance_reopens_a_triaged_study(
    listener: ListenerProcess, store: StudyStore, tmp_path: Path
) -> None:
    files = write_synthetic_study(tmp_path / "growing", seed=2, slices=21)
    uid = study_uid(files)
    storescu(files[:20], port=listener.port, called_aet=AE_TITLE)
    first = wait_for(store, uid, lambda r: r.state in FINISHED)
    assert (first.state, first.triage_runs, first.instances) == (StudyState.TRIAGED, 1, 20)
    storescu(files[20:], port=listener.port, called_aet=AE_TITLE)
    again = wait_for(store, uid, lambda r: r.triage_runs == 2 and r.state in FINISHED)
    assert (again.state, again.instances) == (StudyState.TRIAGED, 21)
    assert again.result_json is not None and '"source_count":21' in again.result_json


def test_an_unknown_calling_ae_is_rejected_at_association(
    listener: ListenerProcess, gateway: GatewayProcess, tmp_path: Path
) -> None:
    files = write_synthetic_study(tmp_path / "intruder", seed=3, slices=4)
    with pytest.raises(StoreSCUError, match=r"(?i)reject"):
        storescu(files, port=listener.port, called_aet=AE_TITLE, calling_aet="INTRUDER")
    missing = httpx2.get(f"{gateway.url}/v1/studies/{study_uid(files)}", timeout=10)
    assert missing.status_code == 404
    assert missing.json()["code"] == "study_not_found"


def _send(port: int, datasets: list[Dataset], contexts: list[str]) -> list[int]:
    ae = AE(ae_title="STORESCU")
    for context in contexts:
        ae.add_requested_context(context)
    association = ae.associate("127.0.0.1", port, ae_title=AE_TITLE)
    assert association.is_established
    try:
        return [int(association.send_c_store(ds).Status) for ds in datasets]
    finally:
        association.release()


def test_c_store_statuses_say_why(
    listener: ListenerProcess, store: StudyStore, tmp_path: Path
) -> None:
    files = write_synthetic_study(tmp_path / "statuses", seed=4, slices=4)
    no_study = pydicom.dcmread(files[0])
    del no_study.StudyInstanceUID
    mr_in_ct = pydicom.dcmread(files[1])
    mr_in_ct.Modality = "MR"
    statuses = _send(listener.port, [no_study, mr_in_ct], [CTImageStorage])
    assert statuses == [0xC000, 0xB007], "cannot understand; stored with a warning"
    failed = wait_for(store, mr_in_ct.StudyInstanceUID, lambda r: r.state in FINISHED)
    assert failed.state is StudyState.FAILED and failed.instances == 1
    assert failed.error_code in {"not_ct", "too_few_slices"}

    ae = AE(ae_title="STORESCU")
    ae.add_requested_context(MRImageStorage)
    association = ae.associate("127.0.0.1", listener.port, ae_title=AE_TITLE)
    try:  # an MR is refused at negotiation: no presentation context to send it on
        assert not association.is_established or association.accepted_contexts == []
    finally:
        if association.is_established:
            association.release()


def _stow(url: str, parts: list[bytes], **kwargs: Any) -> httpx2.Response:
    body, content_type = multipart_related(parts)
    headers = {"Content-Type": kwargs.pop("content_type", content_type)}
    return httpx2.post(url, content=body, headers=headers, timeout=30, **kwargs)


def _encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _items(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(body.get(tag, {}).get("Value", []))


def test_stow_rs_stores_a_study_that_is_then_triaged(
    gateway: GatewayProcess, store: StudyStore, tmp_path: Path
) -> None:
    files = write_synthetic_study(tmp_path / "stow", seed=5, slices=20)
    datasets = [pydicom.dcmread(f) for f in files]
    client = DICOMwebClient(url=f"{gateway.url}/dicomweb")
    response = client.store_instances(datasets)
    stored = {item.ReferencedSOPInstanceUID for item in response.ReferencedSOPSequence}
    assert stored == {ds.SOPInstanceUID for ds in datasets}
    assert "FailedSOPSequence" not in response and response.RetrieveURL in (None, "")
    record = wait_for(store, study_uid(files), lambda r: r.state in FINISHED)
    assert (record.state, record.instances) == (StudyState.TRIAGED, 20)

    again = _stow(f"{gateway.url}/dicomweb/studies/{study_uid(files)}", [_encoded(datasets[0])])
    assert again.status_code == 200, "a stored instance again is accepted"
    assert again.headers["content-type"] == "application/dicom+json"


def test_stow_rs_statuses_follow_ps3_18(gateway: GatewayProcess, tmp_path: Path) -> None:
    files = write_synthetic_study(tmp_path / "mixed", seed=6, slices=4)
    other = write_synthetic_study(tmp_path / "other", seed=7, slices=4)
    good = pydicom.dcmread(files[0])
    warned = pydicom.dcmread(files[1])
    warned.Modality = "MR"
    secondary_capture = real_dicom_file("SC_rgb.dcm").read_bytes()
    garbage = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage"
    url = f"{gateway.url}/dicomweb/studies/{good.StudyInstanceUID}"

    partly = _stow(url, [_encoded(good), other[0].read_bytes(), secondary_capture, garbage])
    assert partly.status_code == 202, partly.text
    body = partly.json()
    (stored,) = _items(body, "00081199")
    assert stored["00081155"]["Value"] == [good.SOPInstanceUID]
    reasons = [item["00081197"]["Value"][0] for item in _items(body, "00081198")]
    assert reasons == [0xC409, 0x0122, 0xC000], "study mismatch, SOP class, cannot understand"
    assert body["00081190"] == {"vr": "UR"}

    with_warning = _stow(url, [_encoded(warned)])
    assert with_warning.status_code == 202
    (item,) = _items(with_warning.json(), "00081199")
    assert item["00081196"]["Value"] == [0xB007]

    none = _stow(url, [secondary_capture, garbage])
    assert none.status_code == 409
    assert len(_items(none.json(), "00081198")) == 2

    wrong_type = _stow(url, [_encoded(good)], content_type="multipart/form-data; boundary=x")
    assert wrong_type.status_code == 415
    assert wrong_type.json()["code"] == "unsupported_media_type"
    json_parts = _stow(url, [b"{}"], content_type="multipart/related; type=application/dicom+json")
    assert json_parts.status_code == 415

    no_boundary = _stow(url, [_encoded(good)], content_type="multipart/related")
    assert no_boundary.status_code == 400
    assert no_boundary.json()["code"] == "malformed_upload"
    no_parts = httpx2.post(
        url,
        content=b"--b--\r\n",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
    )
    assert no_parts.status_code == 400


def test_orthanc_pushes_a_study_to_the_listener(
    listener: ListenerProcess, store: StudyStore, tmp_path: Path
) -> None:
    files = write_synthetic_study(tmp_path / "from-orthanc", seed=8, slices=20)
    modalities = {"HEADCT": (AE_TITLE, "127.0.0.1", listener.port)}
    with orthanc_server(tmp_path / "orthanc", modalities=modalities) as pacs:
        storescu(files, port=pacs.dicom_port, called_aet=pacs.aet)
        (orthanc_id,) = httpx2.get(pacs.rest_url + "/studies", timeout=10).json()
        pushed = httpx2.post(
            f"{pacs.rest_url}/modalities/HEADCT/store", content=orthanc_id, timeout=60
        )
        assert pushed.status_code == 200, pushed.text
    record = wait_for(store, study_uid(files), lambda r: r.state in FINISHED)
    assert (record.state, record.instances) == (StudyState.TRIAGED, 20)


def test_listen_needs_a_data_folder(fixture_model: FixtureModel) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    result = CliRunner().invoke(
        app, ["listen", "--model-repository", str(fixture_model.repository)], env={}
    )
    assert result.exit_code == 2
    assert "HEADCT_DATA_DIR" in result.output
