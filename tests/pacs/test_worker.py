"""The study worker on a real store and the real ONNX backend: it calls the ``on_triaged`` hook
with the stored files, gives a study back when the backend fails or the worker is stopped
mid-triage, and leaves studies alone while the backend is not ready."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pydicom
import pytest

from service.backends import create_backend
from service.backends.base import InferenceBackend
from service.contract import ModelOutputs
from service.errors import BackendUnavailableError
from service.metrics import GatewayMetrics
from service.pacs.instances import CT_STORAGE_SOP_CLASSES, InstanceRef
from service.pacs.store import StudyStore
from service.pacs.tables import StudyState
from service.pacs.worker import StudyWorker
from service.schemas import TriageResult
from service.settings import Settings
from testing.onnx_fixture import FixtureModel
from testing.studies import write_synthetic_study


class Wrapped:
    """The real backend, made slow, failing or not ready."""

    def __init__(self, backend: InferenceBackend, *, delay_s: float = 0.0) -> None:
        self.backend = backend
        self.delay_s = delay_s
        self.down = False
        self.is_ready = True
        self.card_bugs = 0  # this many reads of the card raise an unexpected error

    @property
    def kind(self) -> str:
        return self.backend.kind

    @property
    def card(self) -> Any:
        if self.card_bugs:
            self.card_bugs -= 1
            raise RuntimeError("a bug")
        return self.backend.card

    def ready(self) -> bool:
        return self.is_ready

    def infer(self, volumes: np.ndarray) -> ModelOutputs:
        time.sleep(self.delay_s)
        if self.down:
            raise BackendUnavailableError("Triton went away.")
        return self.backend.infer(volumes)

    def close(self) -> None:
        self.backend.close()


@pytest.fixture
def settings(fixture_model: FixtureModel, tmp_path: Path) -> Settings:
    return Settings(
        model_repository=fixture_model.repository,
        onnx_intra_op_threads=1,
        data_dir=tmp_path / "data",
        study_quiet_s=600,
        worker_poll_s=0.05,
    )


@pytest.fixture
def backend(settings: Settings) -> Iterator[Wrapped]:
    wrapped = Wrapped(create_backend(settings))
    yield wrapped
    wrapped.close()


@pytest.fixture
def store(settings: Settings) -> Iterator[StudyStore]:
    store = StudyStore.from_settings(settings)
    yield store
    store.close()


def _stored_study(store: StudyStore, folder: Path) -> str:
    for path in write_synthetic_study(folder, seed=21, slices=20):
        ds = pydicom.dcmread(path)
        ref = InstanceRef(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, CT_STORAGE_SOP_CLASSES[0]
        )
        store.add_instance(ref, path.read_bytes(), route="stowrs")
    store.mark_complete(ref.study_uid)
    return str(ref.study_uid)


def _run_until(worker: StudyWorker, done: Any, timeout_s: float = 30.0) -> None:
    """Run the worker until ``done()`` holds, then cancel it."""

    async def main() -> None:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(worker.run)
            with anyio.fail_after(timeout_s):
                while not done():
                    await anyio.sleep(0.02)
            tasks.cancel_scope.cancel()

    anyio.run(main)


def test_the_hook_gets_the_result_and_the_stored_files(
    store: StudyStore, backend: Wrapped, settings: Settings, tmp_path: Path
) -> None:
    uid = _stored_study(store, tmp_path / "study")
    calls: list[tuple[str, TriageResult, list[Path]]] = []
    metrics = GatewayMetrics()
    worker = StudyWorker(
        store, backend, settings, metrics.store, on_triaged=lambda *a: calls.append(a)
    )
    _run_until(worker, lambda: calls)
    ((study_uid, result, paths),) = calls
    assert study_uid == uid == result.study_uid
    assert len(paths) == 20 and all(p.is_file() and p.is_relative_to(store.data_dir) for p in paths)
    record = store.get_study(uid)
    assert record is not None and record.state is StudyState.TRIAGED
    assert TriageResult.model_validate_json(record.result_json or "") == result
    exposition = metrics.exposition().decode()
    assert 'headct_studies_triaged_total{outcome="triaged"} 1.0' in exposition
    by_state = re.findall(r'headct_store_studies\{state="(\w+)"\} (\S+)', exposition)
    assert len(by_state) == len(StudyState) and sum(float(n) for _, n in by_state) == 1


def test_a_failing_hook_or_a_bug_does_not_stop_the_worker(
    store: StudyStore, backend: Wrapped, settings: Settings, tmp_path: Path
) -> None:
    uid = _stored_study(store, tmp_path / "study")

    def broken(*_: Any) -> None:
        raise RuntimeError("the PACS is on fire")

    worker = StudyWorker(store, backend, settings, GatewayMetrics().store, on_triaged=broken)
    backend.card_bugs = 2  # and unexpected errors before it: the worker carries on
    _run_until(worker, lambda: store.get_study(uid).state is StudyState.TRIAGED)  # type: ignore[union-attr]


def test_backend_failures_and_shutdown_give_the_study_back(
    store: StudyStore, backend: Wrapped, settings: Settings, tmp_path: Path
) -> None:
    uid = _stored_study(store, tmp_path / "study")
    state = lambda: store.get_study(uid).state  # type: ignore[union-attr]  # noqa: E731
    worker = StudyWorker(store, backend, settings, GatewayMetrics().store)

    backend.is_ready = False
    _run_until(worker, lambda: True)
    time.sleep(0.2)
    assert state() is StudyState.PENDING, "not ready: not claimed"

    backend.is_ready, backend.down = True, True
    failures = GatewayMetrics()
    worker = StudyWorker(store, backend, settings, failures.store)
    started = time.monotonic()
    _run_until(worker, lambda: time.monotonic() - started > 1.0)
    assert state() is StudyState.PENDING, "the backend failed, not the study"
    assert "headct_studies_triaged_total{" not in failures.exposition().decode()

    backend.down, backend.delay_s = False, 5.0
    _run_until(worker, lambda: state() is StudyState.TRIAGING)  # stopped mid-inference
    assert state() is StudyState.PENDING, "given back at shutdown, not left leased"
    backend.delay_s = 0.0
    _run_until(worker, lambda: state() is StudyState.TRIAGED)
    record = store.get_study(uid)
    assert record is not None and record.triage_runs == 1
