"""The study worker: takes complete studies from the store, triages each with the one pipeline, and
records the result (or the error's code) in the store.

It runs in ``headct listen``'s process and in the gateway when the store is on; several may share
one store (the store's leases let exactly one triage each study). Studies that cannot be triaged
now through no fault of their own (the backend down or late, the store failing) go back to the
queue rather than failing. After a study is triaged, and its result is still the study's current
one, ``on_triaged(study_uid, result, instance_paths)`` is called in a worker thread: the hook that
builds the outputs (SR, key image) and schedules their delivery. Its failures are logged; they do
not change the triage.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Callable, Collection
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from service.backends.base import InferenceBackend
from service.errors import (
    BackendTimeoutError,
    BackendUnavailableError,
    HeadCTError,
    StoreUnavailableError,
)
from service.log_config import log_unexpected
from service.metrics import StoreMetrics
from service.pacs.store import StudyStore
from service.pacs.tables import StudyClaim
from service.pipeline import Deadlines, TriagePipeline
from service.schemas import TriageResult
from service.settings import Settings

log = logging.getLogger(__name__)

TriagedHook = Callable[[str, TriageResult, list[Path]], None]
"""``on_triaged(study_uid, result, instance_paths)``: blocking, called in a worker thread."""

# Failures of the server, not of the study: the study is triaged again later.
_TRANSIENT = (BackendUnavailableError, BackendTimeoutError, StoreUnavailableError)


def worker_name() -> str:
    """Who holds a lease: host, process and a random part (two workers in one process differ)."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class StudyWorker:
    """Triage the store's complete studies, one at a time, until cancelled (``run``)."""

    def __init__(
        self,
        store: StudyStore,
        backend: InferenceBackend,
        settings: Settings,
        metrics: StoreMetrics,
        *,
        on_triaged: TriagedHook | None = None,
        slot: Callable[[], AbstractAsyncContextManager[Any]] | None = None,
        deliver_to: Collection[str] = (),
        deliver_after_s: float = 0.0,
    ) -> None:
        """``deliver_to``: destinations each result is scheduled to with the result itself
        (``StudyStore.finish_study``), due ``deliver_after_s`` later unless ``on_triaged``
        makes them due sooner."""
        self.store = store
        self.deliver_to = tuple(deliver_to)
        self.deliver_after_s = deliver_after_s
        self.pipeline = TriagePipeline(backend)
        self.settings = settings
        self.metrics = metrics
        self.on_triaged = on_triaged
        self.slot = slot  # the gateway's capacity limiter: stored studies queue with uploads
        self.owner = worker_name()

    async def run(self) -> None:
        log.info("study worker started", extra={"owner": self.owner})
        while True:
            try:
                worked = await self.triage_next()
            except _TRANSIENT as exc:
                log.warning("study worker waiting", extra={"code": exc.code})
                worked = False
            except Exception as exc:  # a bug must not stop the worker, nor the gateway with it
                log_unexpected("study worker failed unexpectedly", exc)
                worked = False
            if not worked:
                await anyio.sleep(self.settings.worker_poll_s)

    async def triage_next(self) -> bool:
        """Triage one complete study if there is one; False when there was none (or the backend
        is not ready: studies wait in the store rather than fail)."""
        backend = self.pipeline.backend
        if not await anyio.to_thread.run_sync(backend.ready):
            return False
        card = await anyio.to_thread.run_sync(lambda: backend.card)
        model = (card.name, card.version)
        claim = await anyio.to_thread.run_sync(self._claim, model)
        if claim is None:
            return False
        log.info("triaging stored study", extra={"instances": len(claim.paths)})
        try:
            result = await self.pipeline.run_async(
                claim.paths,
                slot=self.slot() if self.slot else None,
                deadlines=Deadlines.from_settings(self.settings),
            )
        except _TRANSIENT as exc:
            await anyio.to_thread.run_sync(self.store.release_study, claim)
            raise exc from None
        except anyio.get_cancelled_exc_class():  # shutting down: the next worker takes it at once
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self.store.release_study, claim)
            raise
        except HeadCTError as exc:
            await self._finish(claim, model, error=(exc.code, exc.message))
            return True
        except Exception as exc:
            log_unexpected("triage of a stored study failed unexpectedly", exc)
            await self._finish(claim, model, error=("internal_error", "The triage failed."))
            return True
        if await self._finish(claim, model, result=result) and self.on_triaged is not None:
            await anyio.to_thread.run_sync(self._call_hook, claim, result)
        return True

    def _claim(self, model: tuple[str, int]) -> StudyClaim | None:
        claim = self.store.claim_study(
            self.owner,
            model=model,
            quiet_s=self.settings.study_quiet_s,
            lease_s=self.settings.study_lease_s,
            max_attempts=self.settings.study_attempts,
        )
        for state, count in self.store.count_by_state().items():
            self.metrics.store_studies.labels(state=state.value).set(count)
        return claim

    async def _finish(
        self,
        claim: StudyClaim,
        model: tuple[str, int],
        *,
        result: TriageResult | None = None,
        error: tuple[str, str] | None = None,
    ) -> bool:
        current: bool = await anyio.to_thread.run_sync(
            lambda: self.store.finish_study(
                claim,
                model=model,
                result_json=result.model_dump_json() if result is not None else None,
                error=error,
                deliver_to=self.deliver_to,
                deliver_after_s=self.deliver_after_s,
            )
        )
        outcome = "triaged" if error is None else error[0]
        self.metrics.studies.labels(outcome=outcome).inc()
        log.info("stored study finished", extra={"outcome": outcome, "current": current})
        return current

    def _call_hook(self, claim: StudyClaim, result: TriageResult) -> None:
        assert self.on_triaged is not None
        try:
            self.on_triaged(claim.study_uid, result, claim.paths)
        except Exception as exc:
            log_unexpected("the on_triaged hook failed", exc)
