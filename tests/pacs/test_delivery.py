"""Delivery of the SR and key image to a real Orthanc, by DICOMweb (STOW-RS) and by DIMSE
(C-STORE): they land in the study as new series, seen over Orthanc's REST API and QIDO-RS;
failures say whether a retry can help; attempts are counted; a PACS that comes back gets the
results once, not twice; no patient identifier reaches the logs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from service.metrics import GatewayMetrics
from service.pacs.delivery import (
    DeliveryError,
    DeliveryOutcome,
    RetryPolicy,
    attempt_delivery,
    send,
)
from service.pacs.destination import Destination, DicomwebDestination, DimseDestination
from service.pacs.outputs import build_outputs
from testing.gateway_process import free_port
from testing.orthanc import OrthancServer, orthanc_server, storescu
from testing.studies import Patient
from testing.triaged import TriagedStudy, triage_synthetic_study

PATIENT = Patient(name="Wqvx^Ermintrude", patient_id="PID-80817-DLV", birth_date="19030405")
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
QUICK = RetryPolicy(max_attempts=3, base_s=0.01, factor=2.0, cap_s=0.1)
TIMEOUT_S = 5.0
# The rejection tests wait longer: on a loaded machine (the whole suite, 2 cores) Orthanc once took
# over 5 s to answer, and an unanswered association is rightly a retry, not the rejection tested.
REJECTION_TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def triaged(tmp_path_factory: pytest.TempPathFactory) -> TriagedStudy:
    return triage_synthetic_study(tmp_path_factory.mktemp("study"), seed=8, patient=PATIENT)


@pytest.fixture(scope="module")
def outputs(triaged: TriagedStudy) -> list[Dataset]:
    return build_outputs(triaged.result, triaged.card, triaged.evidence)


@pytest.fixture(scope="module")
def pacs(
    tmp_path_factory: pytest.TempPathFactory, triaged: TriagedStudy
) -> Iterator[OrthancServer]:
    """Orthanc holding the triaged study, as a PACS that forwarded it to us would."""
    with orthanc_server(tmp_path_factory.mktemp("orthanc")) as server:
        storescu(triaged.files, port=server.dicom_port, called_aet=server.aet)
        yield server


def _orthanc_ids(pacs: OrthancServer, uids: list[str]) -> list[str]:
    ids = []
    for uid in uids:
        found = httpx2.post(f"{pacs.rest_url}/tools/lookup", content=uid).json()
        ids += [entry["ID"] for entry in found if entry["Type"] == "Instance"]
    return ids


@pytest.fixture
def delivered(pacs: OrthancServer, outputs: list[Dataset]) -> Iterator[None]:
    """Each delivery test starts and ends without the outputs in Orthanc."""
    uids = [ds.SOPInstanceUID for ds in outputs]
    yield
    for orthanc_id in _orthanc_ids(pacs, uids):
        httpx2.delete(f"{pacs.rest_url}/instances/{orthanc_id}").raise_for_status()


def _dimse(pacs: OrthancServer) -> DimseDestination:
    return DimseDestination(pacs.aet, "127.0.0.1", pacs.dicom_port)


def _assert_in_study(pacs: OrthancServer, triaged: TriagedStudy, outputs: list[Dataset]) -> None:
    study_uid = triaged.result.study_uid
    (study,) = [
        s
        for s in httpx2.get(f"{pacs.rest_url}/studies", params={"expand": "1"}).json()
        if s["MainDicomTags"]["StudyInstanceUID"] == study_uid
    ]
    series = httpx2.get(f"{pacs.rest_url}/studies/{study['ID']}/series").json()
    by_uid = {s["MainDicomTags"]["SeriesInstanceUID"]: s for s in series}
    sr, key_image = outputs
    assert by_uid[sr.SeriesInstanceUID]["MainDicomTags"]["Modality"] == "SR"
    assert by_uid[key_image.SeriesInstanceUID]["MainDicomTags"]["Modality"] == "OT"
    assert by_uid[triaged.result.series_uid]["MainDicomTags"]["Modality"] == "CT"
    assert len(by_uid[sr.SeriesInstanceUID]["Instances"]) == 1

    qido = httpx2.get(
        f"{pacs.dicomweb_url}/studies/{study_uid}/series",
        headers={"Accept": "application/dicom+json"},
    ).json()
    modality = {s["0020000E"]["Value"][0]: s["00080060"]["Value"][0] for s in qido}
    assert modality[sr.SeriesInstanceUID] == "SR"
    assert modality[key_image.SeriesInstanceUID] == "OT"
    instances = httpx2.get(
        f"{pacs.dicomweb_url}/studies/{study_uid}/instances",
        headers={"Accept": "application/dicom+json"},
    ).json()
    classes = {i["00080018"]["Value"][0]: i["00080016"]["Value"][0] for i in instances}
    assert classes[sr.SOPInstanceUID] == COMPREHENSIVE_3D_SR
    assert classes[key_image.SOPInstanceUID] == SECONDARY_CAPTURE


@pytest.mark.usefixtures("delivered")
def test_dicomweb_delivery_puts_sr_and_key_image_in_the_study(
    pacs: OrthancServer,
    triaged: TriagedStudy,
    outputs: list[Dataset],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    send(outputs, DicomwebDestination(pacs.dicomweb_url), timeout_s=TIMEOUT_S)
    _assert_in_study(pacs, triaged, outputs)
    _assert_no_phi(caplog)


@pytest.mark.usefixtures("delivered")
def test_dimse_delivery_puts_sr_and_key_image_in_the_study(
    pacs: OrthancServer,
    triaged: TriagedStudy,
    outputs: list[Dataset],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    send(outputs, _dimse(pacs), timeout_s=TIMEOUT_S, calling_aet="HEADCT")
    _assert_in_study(pacs, triaged, outputs)
    _assert_no_phi(caplog)


def _assert_no_phi(caplog: pytest.LogCaptureFixture) -> None:
    assert caplog.records  # the libraries and we did log
    text = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
    for identifier in (PATIENT.name, "Wqvx", PATIENT.patient_id, PATIENT.birth_date):
        assert identifier not in text


@pytest.mark.parametrize(
    "destination",
    [
        DicomwebDestination(f"http://127.0.0.1:{free_port()}/dicom-web"),
        DimseDestination("NOBODY", "127.0.0.1", free_port()),
    ],
    ids=["dicomweb", "dimse"],
)
def test_an_unreachable_destination_is_retryable(
    destination: Destination, outputs: list[Dataset]
) -> None:
    with pytest.raises(DeliveryError) as raised:
        send(outputs, destination, timeout_s=TIMEOUT_S)
    assert raised.value.retryable


def test_a_wrong_called_ae_title_is_not_retryable(
    pacs: OrthancServer, outputs: list[Dataset]
) -> None:
    with pytest.raises(DeliveryError, match="rejected permanently") as raised:
        send(
            outputs,
            DimseDestination("NOT_ORTHANC", "127.0.0.1", pacs.dicom_port),
            timeout_s=REJECTION_TIMEOUT_S,
        )
    assert not raised.value.retryable


def test_a_wrong_dicomweb_root_is_not_retryable(
    pacs: OrthancServer, outputs: list[Dataset]
) -> None:
    with pytest.raises(DeliveryError, match="HTTP 404") as raised:
        send(outputs, DicomwebDestination(pacs.rest_url + "/no-dicom-web"), timeout_s=5)
    assert not raised.value.retryable


def test_an_instance_the_server_silently_drops_is_not_delivered(
    pacs: OrthancServer, outputs: list[Dataset]
) -> None:
    """Orthanc answers 200 to a STOW-RS request holding an instance without a SOP Instance UID,
    stores the others, and neither stores that one nor lists it as failed."""
    broken = Dataset()
    broken.file_meta = FileMetaDataset()
    broken.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    broken.SOPClassUID = outputs[1].SOPClassUID
    broken.SOPInstanceUID = ""
    broken.StudyInstanceUID = outputs[0].StudyInstanceUID
    broken.SeriesInstanceUID = generate_uid()
    with pytest.raises(DeliveryError, match="stored 1 of 2") as raised:
        send([outputs[0], broken], DicomwebDestination(pacs.dicomweb_url), timeout_s=TIMEOUT_S)
    assert not raised.value.retryable
    for orthanc_id in _orthanc_ids(pacs, [outputs[0].SOPInstanceUID]):
        httpx2.delete(f"{pacs.rest_url}/instances/{orthanc_id}").raise_for_status()


def _count(metrics: GatewayMetrics, kind: str, outcome: DeliveryOutcome) -> float:
    value = metrics.registry.get_sample_value(
        "headct_pacs_deliveries_total", {"destination_kind": kind, "outcome": outcome.value}
    )
    assert value is not None
    return value


def test_attempts_retry_then_dead_letter_and_are_counted(outputs: list[Dataset]) -> None:
    metrics = GatewayMetrics()
    nowhere = DimseDestination("NOBODY", "127.0.0.1", free_port())
    outcomes = [
        attempt_delivery(
            outputs, nowhere, attempt=n, policy=QUICK, metrics=metrics.store, timeout_s=TIMEOUT_S
        )
        for n in (1, 2, 3)
    ]
    assert [o.outcome for o in outcomes] == [
        DeliveryOutcome.RETRY,
        DeliveryOutcome.RETRY,
        DeliveryOutcome.DEAD_LETTER,
    ]
    assert outcomes[0].retry_in_s is not None and 0.005 <= outcomes[0].retry_in_s <= 0.01
    assert outcomes[2].retry_in_s is None and outcomes[2].reason
    assert _count(metrics, "dimse", DeliveryOutcome.RETRY) == 2
    assert _count(metrics, "dimse", DeliveryOutcome.DEAD_LETTER) == 1
    assert _count(metrics, "dicomweb", DeliveryOutcome.RETRY) == 0


def test_a_permanent_failure_is_dead_lettered_at_once(
    pacs: OrthancServer, outputs: list[Dataset]
) -> None:
    metrics = GatewayMetrics()
    wrong = DimseDestination("NOT_ORTHANC", "127.0.0.1", pacs.dicom_port)
    attempt = attempt_delivery(
        outputs,
        wrong,
        attempt=1,
        policy=QUICK,
        metrics=metrics.store,
        timeout_s=REJECTION_TIMEOUT_S,
    )
    assert attempt.outcome is DeliveryOutcome.DEAD_LETTER, attempt.reason
    assert _count(metrics, "dimse", DeliveryOutcome.DEAD_LETTER) == 1


def test_a_pacs_that_comes_back_gets_the_results_once(
    tmp_path: Path, triaged: TriagedStudy, outputs: list[Dataset]
) -> None:
    """Orthanc down: the attempt is a retry. Back on the same ports: delivered. Delivered again
    (a retry after a lost answer): still one SR and one key image, since the same result gives
    the same instances."""
    metrics = GatewayMetrics()
    ports = (free_port(), free_port())
    while ports[1] == ports[0]:
        ports = (ports[0], free_port())
    destination = DicomwebDestination(f"http://127.0.0.1:{ports[0]}/dicom-web")

    def attempt(n: int) -> DeliveryOutcome:
        return attempt_delivery(
            outputs,
            destination,
            attempt=n,
            policy=QUICK,
            metrics=metrics.store,
            timeout_s=TIMEOUT_S,
        ).outcome

    assert attempt(1) is DeliveryOutcome.RETRY
    with orthanc_server(tmp_path / "orthanc", ports=ports) as pacs:
        assert attempt(2) is DeliveryOutcome.DELIVERED
        assert attempt(1) is DeliveryOutcome.DELIVERED
        studies = httpx2.get(f"{pacs.rest_url}/studies", params={"expand": "1"}).json()
        (study,) = studies
        assert study["MainDicomTags"]["StudyInstanceUID"] == triaged.result.study_uid
        assert len(httpx2.get(f"{pacs.rest_url}/instances").json()) == 2
    assert _count(metrics, "dicomweb", DeliveryOutcome.DELIVERED) == 2
    assert _count(metrics, "dicomweb", DeliveryOutcome.RETRY) == 1
