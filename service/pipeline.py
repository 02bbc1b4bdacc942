"""One study from received input to its triage result: the pipeline every entry point calls.

    sources -> ingest -> infer -> postprocess -> TriageResult

- ingest (``service.ingest``): read the files, group the series, select the axial CT, order the
  slices, HU on the model card's grid; files that are not DICOM are left out with a warning;
- infer: the backend (embedded onnxruntime or Triton) on the INT16 HU volume;
- postprocess (``service.postprocess``): findings against the card's thresholds, the priority,
  the key slice, the router weights, and the time each stage took.

The HTTP route (``POST /v1/triage``), ``headct triage``, the benchmarks, and the PACS listener
and batch scorer to come hand it a study as sources (``service.dicom_io.StudySource``:
files, folders or zips on disk, bytes in memory, or datasets already parsed) and get the
``TriageResult`` the API returns, or a ``HeadCTError`` with a stable code. The gateway's pipeline
also keeps each triaged study's model-grid volume for the viewer's images (``volumes``). What comes
before (admitting a request, receiving an upload, storing instances) belongs to the caller, which
says when it began (``started``) so that ``timing_ms`` covers the whole request.

``run`` blocks: for the CLI and the benchmarks. The batch scorer (``service.batch``) splits it:
``read_study`` in worker processes, then ``run_batch`` on many ingested studies in one backend
call, each study's result built exactly as ``run`` builds it. ``run_async`` runs the blocking
stages in worker threads, so an event loop stays free, and is where a caller's limits attach:
``slot`` (a capacity limiter's slot, held around ingest and inference; the wait for it is the
``queue`` stage), ``Deadlines`` (one per stage, counted from the slot), and cancellation: ingest
checks before each file and stage whether the caller's scope was cancelled (its deadline, a
client gone), so it stops its work rather than leaving a thread reading on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import numpy as np

from service.backends.base import InferenceBackend
from service.contract import ModelOutputs
from service.dicom_io import StudySource
from service.errors import (
    BackendTimeoutError,
    CorruptDicomError,
    HeadCTError,
    IngestTimeoutError,
)
from service.ingest import IngestResult, ingest_study
from service.log_config import log_unexpected
from service.model_card import ModelCard
from service.postprocess import build_result
from service.preprocess import ModelGrid
from service.schemas import TriageResult
from service.settings import Settings
from service.viewer.volumes import RecentVolumes


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How long a stage of ``run_async`` may take, in seconds; None: no limit."""

    ingest_s: float | None = None
    inference_s: float | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> Deadlines:
        return cls(ingest_s=settings.ingest_timeout_s, inference_s=settings.inference_timeout_s)


@dataclass
class _Marks:
    """``time.perf_counter()`` marks of one study's way through the pipeline."""

    started: float | None  # the caller began receiving the study; None: when the pipeline got it
    received: float = field(default_factory=time.perf_counter)
    dequeued: float = 0.0
    inferring: float = 0.0
    inferred: float = 0.0

    def result(
        self, card: ModelCard, ingest: IngestResult, outputs: ModelOutputs, index: int = 0
    ) -> TriageResult:
        """The result of study ``index`` of the batch, with every stage's time; postprocess and
        total end now."""
        started = self.received if self.started is None else self.started
        timing = {
            "upload": (self.received - started) * 1e3,
            "queue": (self.dequeued - self.received) * 1e3,
            **{k: ingest.timing_ms.get(k, 0.0) for k in ("read", "select", "resample")},
            "inference": (self.inferred - self.inferring) * 1e3,
            "postprocess": 0.0,
            "total": 0.0,
        }
        result = build_result(card, ingest, outputs, timing, index)
        finished = time.perf_counter()
        result.timing_ms.postprocess = round((finished - self.inferred) * 1e3, 3)
        result.timing_ms.total = round((finished - started) * 1e3, 3)
        return result


def read_study(
    sources: Iterable[StudySource],
    grid: ModelGrid,
    checkpoint: Callable[[], None] | None = None,
) -> IngestResult:
    """The study on the model grid. Blocks; ``checkpoint`` as in ``ingest_study``. A library
    failing on odd input is still bad input: it becomes ``corrupt_dicom``, and its traceback is
    logged for us. Needs no backend, so worker processes (the batch scorer's) call it alone."""
    try:
        return ingest_study(sources, grid=grid, checkpoint=checkpoint)
    except HeadCTError:
        raise
    except Exception as exc:
        log_unexpected("ingest failed unexpectedly", exc)
        raise CorruptDicomError("The study could not be decoded.") from None


class TriagePipeline:
    """Triage studies with one backend. Cheap to make; holds nothing between studies itself.
    With ``volumes`` (the gateway's), each triaged study's model-grid volume is kept there for
    the viewer's images."""

    def __init__(self, backend: InferenceBackend, volumes: RecentVolumes | None = None) -> None:
        self.backend = backend
        self.volumes = volumes

    def ingest(
        self,
        sources: Iterable[StudySource],
        card: ModelCard,
        checkpoint: Callable[[], None] | None = None,
    ) -> IngestResult:
        """The study on the card's grid (``read_study``)."""
        return read_study(sources, card.grid.to_model_grid(), checkpoint)

    def infer(self, ingest: IngestResult) -> ModelOutputs:
        """The model's outputs for one study. Blocks (onnxruntime computing, Triton answering)."""
        return self.infer_batch([ingest])

    def infer_batch(self, ingests: Sequence[IngestResult]) -> ModelOutputs:
        """The model's outputs for studies stacked into one batch, in one backend call."""
        return self.backend.infer(np.stack([ingest.volume.hu for ingest in ingests]))

    def run_batch(self, ingests: Sequence[IngestResult]) -> list[TriageResult]:
        """Triage studies already ingested (``read_study``), in one backend call, in this thread:
        each study's result as ``run`` builds it. Its ``timing_ms`` counts the study's own read,
        select and resample, the batch's inference and its postprocess (no upload, no queue)."""
        card = self.backend.card
        inferring = time.perf_counter()
        outputs = self.infer_batch(ingests)
        inferred = time.perf_counter()
        results = []
        for index, ingest in enumerate(ingests):
            began = inferring - sum(ingest.timing_ms.values()) / 1e3
            marks = _Marks(began, received=began, dequeued=began)
            marks.inferring, marks.inferred = inferring, inferred
            results.append(marks.result(card, ingest, outputs, index))
        return results

    def run(self, sources: Iterable[StudySource], *, started: float | None = None) -> TriageResult:
        """Triage one study in this thread. ``started``: ``time.perf_counter()`` when the caller
        began receiving it (the time until this call is the ``upload`` stage); default now."""
        marks = _Marks(started)
        card = self.backend.card
        marks.dequeued = time.perf_counter()
        ingest = self.ingest(sources, card)
        marks.inferring = time.perf_counter()
        outputs = self.infer(ingest)
        marks.inferred = time.perf_counter()
        return self._triaged(marks.result(card, ingest, outputs), ingest)

    async def run_async(
        self,
        sources: Iterable[StudySource],
        *,
        started: float | None = None,
        slot: AbstractAsyncContextManager[Any] | None = None,
        deadlines: Deadlines = Deadlines(),  # frozen: one shared default is safe
    ) -> TriageResult:
        """Triage one study, its blocking stages in worker threads; ``started`` as in ``run``.

        Raises ``IngestTimeoutError`` past ``deadlines.ingest_s`` and ``BackendTimeoutError``
        past ``deadlines.inference_s``."""
        marks = _Marks(started)
        card = await anyio.to_thread.run_sync(lambda: self.backend.card)  # triton: a network call
        async with slot or nullcontext():
            marks.dequeued = time.perf_counter()
            ingest = await self._ingest_within(sources, card, deadlines.ingest_s)
            marks.inferring = time.perf_counter()
            outputs = await self._infer_within(ingest, deadlines.inference_s)
            marks.inferred = time.perf_counter()
        return self._triaged(marks.result(card, ingest, outputs), ingest)

    def _triaged(self, result: TriageResult, ingest: IngestResult) -> TriageResult:
        """``result``, its volume kept for the viewer once the study is triaged."""
        if self.volumes is not None:
            self.volumes.keep(ingest.study_uid, ingest.volume)
        return result

    async def _ingest_within(
        self, sources: Iterable[StudySource], card: ModelCard, timeout_s: float | None
    ) -> IngestResult:
        """Ingest in a worker thread that checks, before each file and stage, whether this task
        was cancelled (the deadline, or the caller's scope: a client gone), and stops there."""
        try:
            with anyio.fail_after(timeout_s):
                return await anyio.to_thread.run_sync(
                    self.ingest, sources, card, anyio.from_thread.check_cancelled
                )
        except TimeoutError:
            raise IngestTimeoutError(
                f"Reading the study took longer than {timeout_s:g} s; it was stopped."
            ) from None

    async def _infer_within(self, ingest: IngestResult, timeout_s: float | None) -> ModelOutputs:
        """Past the deadline the call is abandoned (a backend call cannot be interrupted)."""
        try:
            with anyio.fail_after(timeout_s):
                outputs: ModelOutputs = await anyio.to_thread.run_sync(
                    self.infer, ingest, abandon_on_cancel=True
                )
                return outputs
        except TimeoutError:
            raise BackendTimeoutError(
                f"The {self.backend.kind} backend did not answer within {timeout_s:g} s."
            ) from None
