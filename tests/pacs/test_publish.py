"""The publisher in process, on a real store and a study the demo model triaged: after a triage it
keeps the SR and key image on disk and schedules a delivery per destination; a newer result
replaces the older one's files; deliveries to a destination that stays down are retried and then
dead-lettered, counted; outputs that cannot be built dead-letter with a reason instead of
stopping anything; a delivery to a destination a process is not configured with is left to one
that is.

The deliveries that succeed, against a real Orthanc and through real processes, are in
``tests/pacs/test_end_to_end.py``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from service.backends import create_backend
from service.backends.base import InferenceBackend
from service.metrics import GatewayMetrics
from service.pacs.instances import CT_STORAGE_SOP_CLASSES, InstanceRef
from service.pacs.publish import Publisher
from service.pacs.store import StudyStore
from service.pacs.tables import DeliveryState, StudyClaim, StudyState
from service.settings import Settings
from testing.gateway_process import free_port
from testing.triaged import TriagedStudy, triage_synthetic_study

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
MODEL = ("headct_molre", 2)


@pytest.fixture(scope="module")
def triaged(tmp_path_factory: pytest.TempPathFactory) -> TriagedStudy:
    return triage_synthetic_study(tmp_path_factory.mktemp("study"), seed=31)


@pytest.fixture(scope="module")
def backend() -> Iterator[InferenceBackend]:
    """The demo model's backend: the card the outputs name."""
    backend = create_backend(Settings(onnx_intra_op_threads=1))
    yield backend
    backend.close()


def _settings(tmp_path: Path, destinations: str) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        pacs_destinations=destinations,
        pacs_retry_max_attempts=2,
        pacs_retry_base_s=0.01,
        pacs_retry_cap_s=0.02,
        pacs_delivery_timeout_s=2,
    )


NOWHERE = f"dimse:NOBODY@127.0.0.1:{free_port()},dicomweb:http://127.0.0.1:{free_port()}/dicom-web"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return _settings(tmp_path, NOWHERE)


@pytest.fixture
def store(settings: Settings) -> Iterator[StudyStore]:
    store = StudyStore.from_settings(settings)
    yield store
    store.close()


def _triaged_in_store(store: StudyStore, triaged: TriagedStudy) -> StudyClaim:
    """The study stored, claimed and finished with the demo model's result, as the worker does."""
    for path in triaged.files:
        ds = triaged.evidence[triaged.files.index(path)]
        ref = InstanceRef(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, CT_STORAGE_SOP_CLASSES[0]
        )
        store.add_instance(ref, path.read_bytes(), route="dimse")
    store.mark_complete(triaged.result.study_uid)
    claim = store.claim_study("test", model=MODEL, quiet_s=600, lease_s=60, max_attempts=3)
    assert claim is not None
    assert store.finish_study(claim, model=MODEL, result_json=triaged.result.model_dump_json())
    return claim


def _deliveries(store: StudyStore, uid: str) -> dict[str, DeliveryState]:
    record = store.get_study(uid)
    assert record is not None
    return {d.destination: d.state for d in record.deliveries}


def test_outputs_are_kept_on_disk_and_a_newer_result_replaces_them(
    store: StudyStore,
    settings: Settings,
    backend: InferenceBackend,
    triaged: TriagedStudy,
) -> None:
    claim = _triaged_in_store(store, triaged)
    publisher = Publisher(store, backend, settings, GatewayMetrics().store)
    uid = triaged.result.study_uid
    publisher.on_triaged(uid, triaged.result, claim.paths)

    folder = settings.data_dir / "outputs" / uid  # type: ignore[operator]
    files = {pydicom.dcmread(p).SOPClassUID: p.stem for p in folder.glob("*.dcm")}
    assert set(files) == {COMPREHENSIVE_3D_SR, SecondaryCaptureImageStorage}
    assert _deliveries(store, uid) == dict.fromkeys(publisher.destinations, DeliveryState.PENDING)
    assert store.get_study(uid).state is StudyState.TRIAGED  # type: ignore[union-attr]

    # The study triaged again (a new instance, another model): another result, other outputs.
    findings = [f.model_copy() for f in triaged.result.findings]
    findings[0] = findings[0].model_copy(update={"probability": findings[0].probability / 2})
    other = triaged.result.model_copy(update={"findings": findings})
    publisher.on_triaged(uid, other, claim.paths)
    replaced = {pydicom.dcmread(p).SOPClassUID: p.stem for p in folder.glob("*.dcm")}
    assert set(replaced) == set(files)
    assert not set(replaced.values()) & set(files.values()), "the older result's files remain"


def test_a_destination_that_stays_down_is_retried_then_dead_lettered(
    store: StudyStore,
    settings: Settings,
    backend: InferenceBackend,
    triaged: TriagedStudy,
) -> None:
    claim = _triaged_in_store(store, triaged)
    metrics = GatewayMetrics()
    publisher = Publisher(store, backend, settings, metrics.store)
    uid = triaged.result.study_uid
    publisher.on_triaged(uid, triaged.result, claim.paths)

    deadline = time.monotonic() + 30
    while set(_deliveries(store, uid).values()) != {DeliveryState.DEAD_LETTER}:
        assert time.monotonic() < deadline, _deliveries(store, uid)
        if not publisher.deliver_next("w1"):
            time.sleep(0.02)
    record = store.get_study(uid)
    assert record is not None and record.state is StudyState.DEAD_LETTER
    for delivery in record.deliveries:
        assert delivery.attempts == 2 and delivery.last_error
    for kind in ("dimse", "dicomweb"):
        for outcome, count in (("retry", 1), ("dead_letter", 1), ("delivered", 0)):
            value = metrics.registry.get_sample_value(
                "headct_pacs_deliveries_total", {"destination_kind": kind, "outcome": outcome}
            )
            assert value == count, (kind, outcome)
    assert not publisher.deliver_next("w1"), "nothing is due after a dead letter"


def test_outputs_that_cannot_be_built_dead_letter_with_the_reason(
    store: StudyStore,
    settings: Settings,
    backend: InferenceBackend,
    triaged: TriagedStudy,
) -> None:
    _triaged_in_store(store, triaged)
    publisher = Publisher(store, backend, settings, GatewayMetrics().store)
    uid = triaged.result.study_uid
    publisher.on_triaged(uid, triaged.result, [])  # no evidence: the SR cannot be built
    record = store.get_study(uid)
    assert record is not None and record.state is StudyState.DEAD_LETTER
    assert {d.last_error for d in record.deliveries} == {
        "the outputs could not be built (ValueError)"
    }
    assert not publisher.deliver_next("w1")


def test_a_delivery_to_a_destination_not_configured_here_waits_for_a_process_that_is(
    tmp_path: Path,
    store: StudyStore,
    backend: InferenceBackend,
    triaged: TriagedStudy,
) -> None:
    """A process configured with other destinations (a rolling update, a replica configured
    otherwise) leaves those deliveries to the processes that can make them."""
    claim = _triaged_in_store(store, triaged)
    uid = triaged.result.study_uid
    old = Publisher(store, backend, _settings(tmp_path, NOWHERE), GatewayMetrics().store)
    old.on_triaged(uid, triaged.result, claim.paths)
    moved = f"dimse:NEWPACS@127.0.0.1:{free_port()}"
    new = Publisher(store, backend, _settings(tmp_path, moved), GatewayMetrics().store)
    assert not new.deliver_next("w1")
    assert set(_deliveries(store, uid).values()) == {DeliveryState.PENDING}
    assert old.deliver_next("w2") and old.deliver_next("w2")
    record = store.get_study(uid)
    assert record is not None and {d.attempts for d in record.deliveries} == {1}


def test_a_process_that_dies_before_building_the_outputs_leaves_them_to_a_delivery_loop(
    store: StudyStore,
    settings: Settings,
    backend: InferenceBackend,
    triaged: TriagedStudy,
) -> None:
    """The deliveries are recorded with the result (one transaction); the hook that builds the
    outputs never ran (the process was killed), so the first delivery attempt builds them from
    the stored result and instances, and the study is not left triaged and never sent."""
    for path, ds in zip(triaged.files, triaged.evidence, strict=True):
        ref = InstanceRef(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, CT_STORAGE_SOP_CLASSES[0]
        )
        store.add_instance(ref, path.read_bytes(), route="dimse")
    uid = triaged.result.study_uid
    store.mark_complete(uid)
    claim = store.claim_study("test", model=MODEL, quiet_s=600, lease_s=60, max_attempts=3)
    assert claim is not None
    publisher = Publisher(store, backend, settings, GatewayMetrics().store)
    grace = 0.3
    assert store.finish_study(
        claim,
        model=MODEL,
        result_json=triaged.result.model_dump_json(),
        deliver_to=tuple(publisher.destinations),
        deliver_after_s=grace,
    )
    assert _deliveries(store, uid) == dict.fromkeys(publisher.destinations, DeliveryState.PENDING)
    assert not publisher.deliver_next("w1"), "due only after the hook's grace"
    time.sleep(grace)
    assert publisher.deliver_next("w1")

    folder = settings.data_dir / "outputs" / uid  # type: ignore[operator]
    classes = {pydicom.dcmread(p).SOPClassUID for p in folder.glob("*.dcm")}
    assert classes == {COMPREHENSIVE_3D_SR, SecondaryCaptureImageStorage}
    record = store.get_study(uid)
    assert record is not None and sorted(d.attempts for d in record.deliveries) == [0, 1]
