"""Results back to the PACS, on by default wherever studies are stored and
``HEADCT_PACS_DESTINATIONS`` names somewhere to send them.

``run_study_workers`` is what ``headct listen`` and the gateway (with a store) run beside their
routes: the study worker, and with destinations a ``Publisher``:

- ``Publisher.on_triaged`` (the worker's hook, in a worker thread): reads the study's stored
  instances (headers only, the key slice with its pixels), builds the SR and the key image
  (``service.pacs.outputs``), writes them durably under ``<data dir>/outputs/<study uid>/``
  (replacing an earlier result's) and schedules one delivery per destination in the store. Outputs
  that cannot be built dead-letter the study's deliveries with the reason.
- ``Publisher.run``: ``DELIVERY_LOOPS`` loops, each claiming from the store one due delivery at a
  time, to a destination it is configured with (a lease, so several processes share the work; a
  delivery to a destination no process is configured with any more waits, pending), reading the
  outputs back from disk and making one attempt (``service.pacs.delivery.attempt_delivery``):
  delivered, retried later with backoff, or dead-lettered; the outcome is recorded in the store,
  whose study state follows (delivered, dead_letter). Pending deliveries survive a restart: they
  are rows and files, and the next process to start claims them, without rebuilding anything.

The deliveries are recorded in the same transaction as the result (``StudyStore.finish_study``),
due ``BUILD_GRACE_S`` later; the hook makes them due at once when it has built the outputs. A
process killed between the triage and the end of its hook (the seconds the SR takes) leaves them
to a delivery loop, which builds the outputs from the stored result and instances first.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pydicom
from pydicom import Dataset

from service.backends.base import InferenceBackend
from service.errors import StoreUnavailableError
from service.log_config import log_unexpected
from service.metrics import StoreMetrics
from service.pacs.delivery import DeliveryOutcome, RetryPolicy, attempt_delivery
from service.pacs.outputs import build_outputs
from service.pacs.store import StudyStore, write_durably
from service.pacs.tables import DeliveryRecord
from service.pacs.worker import StudyWorker, worker_name
from service.schemas import TriageResult
from service.settings import Settings

log = logging.getLogger(__name__)

OUTPUTS_FOLDER = "outputs"
DELIVERY_LOOPS = 4  # deliveries in flight per process: one slow destination does not stop others
# A lease outlives one attempt: each network step of it (connect, associate, one C-STORE per
# output, release; or the STOW-RS request) is bounded by the delivery timeout.
LEASE_STEPS = 8
# A result's deliveries are recorded with it, due this long after (the worker's hook builds the
# outputs and makes them due at once); if the process dies before, a delivery loop builds them.
BUILD_GRACE_S = 60.0


def read_evidence(paths: Sequence[Path], key_sop_instance_uid: str | None) -> list[Dataset]:
    """The stored instances as ``build_outputs`` needs them: headers only, but the key slice
    with its pixels (the key image shows them)."""
    evidence: list[Dataset] = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    for index, ds in enumerate(evidence):
        if key_sop_instance_uid is not None and ds.SOPInstanceUID == key_sop_instance_uid:
            evidence[index] = pydicom.dcmread(paths[index])
    return evidence


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class Publisher:
    """Builds each triaged study's outputs and delivers them to ``settings.pacs_destinations``."""

    def __init__(
        self,
        store: StudyStore,
        backend: InferenceBackend,
        settings: Settings,
        metrics: StoreMetrics,
    ) -> None:
        self.store = store
        self.backend = backend
        self.settings = settings
        self.metrics = metrics
        self.destinations = {str(d): d for d in settings.pacs_destinations}
        self.policy = RetryPolicy.from_settings(settings)
        self.lease_s = settings.pacs_delivery_timeout_s * LEASE_STEPS

    def outputs_folder(self, study_uid: str) -> Path:
        return self.store.data_dir / OUTPUTS_FOLDER / study_uid

    # ---- after a triage (the worker's hook) ----

    def on_triaged(self, study_uid: str, result: TriageResult, instance_paths: list[Path]) -> None:
        try:
            outputs = self._build(result, instance_paths)
        except Exception as exc:  # the study's deliveries say it; the worker goes on
            log_unexpected("the SR and key image could not be built", exc)
            self._keep_outputs(study_uid, [])
            self._give_up(study_uid, f"the outputs could not be built ({type(exc).__name__})")
            return
        self._keep_outputs(study_uid, outputs)
        for name in self.destinations:
            self.store.schedule_delivery(study_uid, name)
        log.info("deliveries scheduled", extra={"destinations": len(self.destinations)})

    def _build(self, result: TriageResult, paths: list[Path]) -> list[Dataset]:
        card = self.backend.card
        if (card.name, card.version) != (result.model.name, result.model.version):
            raise ValueError("the served model changed between the triage and its outputs")
        evidence = read_evidence(paths, result.slices.key_sop_instance_uid)
        return build_outputs(result, card, evidence)

    def _rebuild(self, record: DeliveryRecord) -> bool:
        """Build the outputs of a delivery whose process died between the triage and its hook,
        from the stored result and instances; False (the delivery dead-lettered) if impossible."""
        study = self.store.get_study(record.study_uid)
        reason = "the study's result is not in the store"
        if study is not None and study.result_json is not None:
            try:
                result = TriageResult.model_validate_json(study.result_json)
                outputs = self._build(result, self.store.study_paths(record.study_uid))
            except Exception as exc:
                log_unexpected("the SR and key image could not be rebuilt", exc)
                reason = f"the outputs could not be built ({type(exc).__name__})"
            else:
                self._keep_outputs(record.study_uid, outputs)
                return True
        self.store.mark_dead_letter(record.study_uid, record.destination, reason)
        return False

    def _keep_outputs(self, study_uid: str, outputs: Sequence[Dataset]) -> None:
        """``outputs`` on disk as the study's current ones; an earlier result's removed."""
        folder = self.outputs_folder(study_uid)
        names = set()
        for ds in outputs:
            name = f"{ds.SOPInstanceUID}.dcm"
            write_durably(folder / name, _part10(ds))
            names.add(name)
        if folder.is_dir():
            for stale in folder.glob("*.dcm"):
                if stale.name not in names:
                    stale.unlink(missing_ok=True)

    def _give_up(self, study_uid: str, reason: str) -> None:
        for name, destination in self.destinations.items():
            self.store.schedule_delivery(study_uid, name)
            self.store.mark_dead_letter(study_uid, name, reason)
            self.metrics.pacs_deliveries.labels(
                destination_kind=destination.kind.value, outcome=DeliveryOutcome.DEAD_LETTER.value
            ).inc()

    # ---- deliveries ----

    async def run(self) -> None:
        """Deliver due deliveries until cancelled."""
        async with anyio.create_task_group() as tasks:
            for _ in range(DELIVERY_LOOPS):
                tasks.start_soon(self._deliver_loop, worker_name())

    async def _deliver_loop(self, owner: str) -> None:
        while True:
            try:
                # An attempt in flight at shutdown is left to finish or die with the process; its
                # lease hands the delivery to the next worker.
                worked = await anyio.to_thread.run_sync(
                    self.deliver_next, owner, abandon_on_cancel=True
                )
            except StoreUnavailableError as exc:
                log.warning("delivery waiting", extra={"code": exc.code})
                worked = False
            except Exception as exc:  # a bug must not stop deliveries, nor the process
                log_unexpected("delivery failed unexpectedly", exc)
                worked = False
            if not worked:
                await anyio.sleep(self.settings.worker_poll_s)

    def deliver_next(self, owner: str) -> bool:
        """Claim one due delivery for ``owner`` and make one attempt; False when none was due."""
        claimed = self.store.claim_due_deliveries(
            owner, lease_s=self.lease_s, destinations=self.destinations, limit=1
        )
        if not claimed:
            return False
        self._attempt(claimed[0], owner)
        return True

    def _attempt(self, record: DeliveryRecord, owner: str) -> None:
        destination = self.destinations[record.destination]
        paths = sorted(self.outputs_folder(record.study_uid).glob("*.dcm"))
        if not paths and not self._rebuild(record):
            return
        paths = sorted(self.outputs_folder(record.study_uid).glob("*.dcm"))
        attempt = attempt_delivery(
            [pydicom.dcmread(path) for path in paths],
            destination,
            attempt=record.attempts + 1,
            policy=self.policy,
            metrics=self.metrics,
            timeout_s=self.settings.pacs_delivery_timeout_s,
            calling_aet=self.settings.pacs_calling_aet,
        )
        retry_at = None
        if attempt.outcome is DeliveryOutcome.RETRY:
            assert attempt.retry_in_s is not None
            retry_at = self.store.clock() + attempt.retry_in_s
        self.store.record_delivery_attempt(
            record.study_uid,
            record.destination,
            owner=owner,
            error=attempt.reason,
            retry_at=retry_at,
        )


async def run_study_workers(
    store: StudyStore,
    backend: InferenceBackend,
    settings: Settings,
    metrics: StoreMetrics,
    *,
    slot: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
) -> None:
    """The study worker and, with ``HEADCT_PACS_DESTINATIONS``, the publisher, until cancelled:
    what ``headct listen`` and a gateway with a store run."""
    publisher = Publisher(store, backend, settings, metrics) if settings.pacs_destinations else None
    worker = StudyWorker(
        store,
        backend,
        settings,
        metrics,
        on_triaged=publisher.on_triaged if publisher is not None else None,
        slot=slot,
        deliver_to=tuple(publisher.destinations) if publisher is not None else (),
        deliver_after_s=BUILD_GRACE_S,
    )
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker.run)
        if publisher is not None:
            tasks.start_soon(publisher.run)
