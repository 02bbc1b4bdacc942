"""A study from the PACS and its results back into it, for real: dcmtk's storescu (or a
dicomweb-client STOW-RS) sends a synthetic study to ``headct listen`` (or the gateway) configured
with a real Orthanc as its destination, and after the quiet period the SR and the key image are in
Orthanc, in the study, seen by its REST API and by QIDO-RS, the SR referencing the key slice; the
store says delivered and the metrics count each outcome. A PACS that is down gets the results once
it is back, after retries and a restart of the listener, with no second SR."""

from __future__ import annotations

import io
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import httpx2
import pydicom
import pytest
from dicomweb_client import DICOMwebClient
from pydicom.dataset import Dataset

from service.pacs.store import StudyStore
from service.pacs.tables import DeliveryState, StudyRecord, StudyState
from service.schemas import TriageResult
from testing.gateway_process import free_port, gateway_process
from testing.listener_process import ListenerProcess, listener_process
from testing.onnx_fixture import FixtureModel
from testing.orthanc import OrthancServer, orthanc_server, storescu
from testing.studies import Patient, write_synthetic_study
from tests.pacs.conftest import AE_TITLE, ROOT, pacs_env, wait_for

PATIENT = Patient(name="Zqwv^Endtoend", patient_id="PID-E2E-4417", birth_date="19010203")
LISTEN = [sys.executable, "-m", "service.cli", "listen"]
SERVE = [sys.executable, "-m", "service.cli", "serve"]
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
DELIVERED = {StudyState.DELIVERED, StudyState.DEAD_LETTER}


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    with orthanc_server(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


def _dimse(pacs: OrthancServer) -> str:
    return f"dimse:{pacs.aet}@127.0.0.1:{pacs.dicom_port}"


def _dicomweb(pacs: OrthancServer) -> str:
    return f"dicomweb:{pacs.dicomweb_url}"


@contextmanager
def _store(data_dir: Path) -> Iterator[StudyStore]:
    """The store the listener or gateway in ``data_dir`` writes, read by the test."""
    store = StudyStore(data_dir, f"sqlite:///{data_dir / 'store.sqlite3'}")
    try:
        yield store
    finally:
        store.close()


def _listening(env: dict[str, str], log: Path) -> AbstractContextManager[ListenerProcess]:
    return listener_process(
        LISTEN, log=log, env=env, cwd=ROOT, ae_title=AE_TITLE, calling_ae="STORESCU"
    )


def _delivered(store: StudyStore, study_uid: str) -> StudyRecord:
    record = wait_for(store, study_uid, lambda r: r.state in DELIVERED, timeout_s=90)
    assert record.state is StudyState.DELIVERED, record.deliveries
    return record


def _count(metrics_text: str, kind: str, outcome: str) -> float:
    prefix = f'headct_pacs_deliveries_total{{destination_kind="{kind}",outcome="{outcome}"}} '
    (line,) = [line for line in metrics_text.splitlines() if line.startswith(prefix)]
    return float(line.removeprefix(prefix))


def _image_references(item: Dataset) -> set[str]:
    """SOP Instance UIDs of every IMAGE content item under ``item``."""
    found = set()
    for child in item.get("ContentSequence", []):
        if child.ValueType == "IMAGE":
            found |= {ref.ReferencedSOPInstanceUID for ref in child.ReferencedSOPSequence}
        found |= _image_references(child)
    return found


def assert_results_in_orthanc(pacs: OrthancServer, result: TriageResult) -> None:
    """One SR and one key image in the study's own Study Instance UID, by REST and QIDO-RS; the SR
    names the model and references the key slice."""
    study_uid = result.study_uid
    found = httpx2.post(f"{pacs.rest_url}/tools/lookup", content=study_uid).json()
    (study_id,) = [entry["ID"] for entry in found if entry["Type"] == "Study"]
    instances = httpx2.get(f"{pacs.rest_url}/studies/{study_id}/instances").json()
    assert len(instances) == 2, "the SR and the key image, each once"
    files = [_orthanc_file(pacs, instance["ID"]) for instance in instances]
    by_class = {ds.SOPClassUID: ds for ds in files}
    sr, key_image = by_class[COMPREHENSIVE_3D_SR], by_class[SECONDARY_CAPTURE]
    for ds in (sr, key_image):
        assert ds.StudyInstanceUID == study_uid
    assert result.slices.key_sop_instance_uid in _image_references(sr)
    assert key_image.SourceImageSequence[0].ReferencedSOPInstanceUID == (
        result.slices.key_sop_instance_uid
    )
    assert result.model.name in sr.SeriesDescription

    qido = httpx2.get(
        f"{pacs.dicomweb_url}/studies/{study_uid}/instances",
        headers={"Accept": "application/dicom+json"},
    ).json()
    listed = {i["00080018"]["Value"][0]: i["00080016"]["Value"][0] for i in qido}
    assert listed == {
        sr.SOPInstanceUID: COMPREHENSIVE_3D_SR,
        key_image.SOPInstanceUID: SECONDARY_CAPTURE,
    }


def _orthanc_file(pacs: OrthancServer, orthanc_id: str) -> Dataset:
    response = httpx2.get(f"{pacs.rest_url}/instances/{orthanc_id}/file")
    response.raise_for_status()
    return pydicom.dcmread(io.BytesIO(response.content))


def _listener(
    fixture_model: FixtureModel, data_dir: Path, destinations: str, **settings: str
) -> tuple[dict[str, str], int]:
    """A listener's environment sending to ``destinations``, and its metrics port."""
    metrics_port = free_port()
    env = pacs_env(
        fixture_model,
        data_dir,
        pacs_destinations=destinations,
        pacs_delivery_timeout_s="5",
        listen_metrics_port=str(metrics_port),
        **settings,
    )
    return env, metrics_port


def _metrics(port: int) -> str:
    return httpx2.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text


def test_a_study_pushed_to_the_listener_comes_back_to_the_pacs_as_sr_and_key_image(
    pacs: OrthancServer, fixture_model: FixtureModel, tmp_path: Path
) -> None:
    """Both kinds of destination at once, to one Orthanc (by DIMSE and by DICOMweb): the same SR
    and key image land once, and each delivery is counted."""
    data_dir = tmp_path / "data"
    env, metrics_port = _listener(fixture_model, data_dir, f"{_dimse(pacs)},{_dicomweb(pacs)}")
    files = write_synthetic_study(tmp_path / "study", seed=41, slices=20, patient=PATIENT)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    with _listening(env, tmp_path / "listener.log") as listener, _store(data_dir) as store:
        storescu(files, port=listener.port, called_aet=AE_TITLE)
        record = _delivered(store, uid)
        metrics = _metrics(metrics_port)
    assert {d.destination: (d.state, d.attempts) for d in record.deliveries} == {
        _dimse(pacs): (DeliveryState.DELIVERED, 1),
        _dicomweb(pacs): (DeliveryState.DELIVERED, 1),
    }
    assert record.result_json is not None and record.triage_runs == 1
    assert_results_in_orthanc(pacs, TriageResult.model_validate_json(record.result_json))
    for kind in ("dimse", "dicomweb"):
        assert _count(metrics, kind, "delivered") == 1
        assert _count(metrics, kind, "retry") == _count(metrics, kind, "dead_letter") == 0
    logs = listener.log.read_text()
    for secret in (PATIENT.name, PATIENT.patient_id, PATIENT.birth_date, uid):
        assert secret not in logs and secret not in metrics


def test_a_pacs_that_is_down_gets_the_results_after_retries_and_a_restart(
    fixture_model: FixtureModel, tmp_path: Path
) -> None:
    """Orthanc not running: the delivery is retried (counted) and stays pending; the listener is
    stopped, Orthanc comes up, and the listener started again on the same data folder delivers
    the stored outputs once, without triaging the study again."""
    ports = (free_port(), free_port())
    while ports[1] == ports[0]:
        ports = (ports[0], free_port())
    destination = f"dicomweb:http://127.0.0.1:{ports[0]}/dicom-web"
    data_dir = tmp_path / "data"
    retries = {"pacs_retry_base_s": "0.3", "pacs_retry_factor": "1", "pacs_retry_cap_s": "0.3"}
    files = write_synthetic_study(tmp_path / "study", seed=42, slices=20)
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    log = tmp_path / "listener.log"

    env, metrics_port = _listener(fixture_model, data_dir, destination, **retries)
    with _listening(env, log) as listener, _store(data_dir) as store:
        storescu(files, port=listener.port, called_aet=AE_TITLE)
        pending = wait_for(
            store, uid, lambda r: bool(r.deliveries) and r.deliveries[0].attempts >= 2
        )
        metrics = _metrics(metrics_port)
    (delivery,) = pending.deliveries
    assert delivery.state is DeliveryState.PENDING and delivery.last_error
    assert pending.state is StudyState.TRIAGED
    assert _count(metrics, "dicomweb", "retry") >= 2
    assert _count(metrics, "dicomweb", "delivered") == 0

    env, metrics_port = _listener(fixture_model, data_dir, destination, **retries)
    with (
        orthanc_server(tmp_path / "orthanc", ports=ports) as pacs,
        _listening(env, log),
        _store(data_dir) as store,
    ):
        record = _delivered(store, uid)
        metrics = _metrics(metrics_port)
        assert record.result_json is not None and record.triage_runs == 1
        assert_results_in_orthanc(pacs, TriageResult.model_validate_json(record.result_json))
    assert record.deliveries[0].attempts > delivery.attempts
    assert _count(metrics, "dicomweb", "delivered") == 1


def test_a_study_stored_by_stow_rs_comes_back_to_the_pacs(
    pacs: OrthancServer, fixture_model: FixtureModel, tmp_path: Path
) -> None:
    """A DICOMweb client stores a study to the gateway, says it is complete, and the gateway
    answers its state as delivered once the SR and key image are in Orthanc."""
    env = pacs_env(
        fixture_model, tmp_path / "data", pacs_destinations=_dimse(pacs), study_quiet_s="600"
    )
    files = write_synthetic_study(tmp_path / "study", seed=43, slices=20)
    datasets = [pydicom.dcmread(path) for path in files]
    uid = str(datasets[0].StudyInstanceUID)
    with gateway_process(SERVE, log=tmp_path / "gateway.log", env=env, cwd=ROOT) as gateway:
        DICOMwebClient(url=f"{gateway.url}/dicomweb").store_instances(datasets)
        complete = httpx2.post(f"{gateway.url}/v1/studies/{uid}/complete", timeout=10)
        assert complete.status_code == 202, complete.text
        deadline = time.monotonic() + 90
        while (body := httpx2.get(f"{gateway.url}/v1/studies/{uid}", timeout=10).json())[
            "state"
        ] not in DELIVERED:
            assert time.monotonic() < deadline, body
            time.sleep(0.2)
        metrics = httpx2.get(f"{gateway.url}/metrics", timeout=10).text
    assert body["state"] == "delivered", body["deliveries"]
    (delivery,) = body["deliveries"]
    assert (delivery["destination"], delivery["state"]) == (_dimse(pacs), "delivered")
    assert_results_in_orthanc(pacs, TriageResult.model_validate(body["result"]))
    assert _count(metrics, "dimse", "delivered") == 1
