"""Score a source's studies: ingest in worker processes, infer in batches, journal every study.

    scan (workers) -> studies -> shard, skip journaled -> ingest (workers, read_study)
                   -> batches of ingested studies -> TriagePipeline.run_batch (this process)
                   -> rows -> journal

The workers decode the next studies while this process waits on the backend, so decode and
inference overlap; at most ``workers * 2 + batch_size`` studies are in flight, which bounds memory
whatever the archive's size.

On a CPU-only embedded backend the model runs in the workers instead (``worker_settings``): each
worker reads a study and infers it with its own onnxruntime session, one thread each, so one
worker decodes while another infers and the cores never wait on each other. Batching studies
does not pay on a CPU (onnxruntime's time per study grows with the batch: measured in
``bench/batch.py``), and a single session fed by decode workers left a core idle whenever it
waited on a decode, or made both fight when it had two threads.

A study that cannot be triaged becomes a failed row with its error code and the run goes on; a
backend that fails stops the run (every later study would fail the same way): what is journaled
stays, and running again continues from there.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.backends.base import InferenceBackend
from service.batch.results import (
    FAILED,
    ResultsFolder,
    Row,
    failed_row,
    manifest,
    triaged_row,
)
from service.batch.sources import (
    Locator,
    ScanReport,
    Shard,
    StudyJob,
    chunks,
    dicomweb_studies,
    group_studies,
    list_locators,
    study_uids_of,
)
from service.errors import HeadCTError, IngestTimeoutError
from service.ingest import IngestResult
from service.pipeline import TriagePipeline, read_study
from service.preprocess import ModelGrid
from service.schemas import TriageResult
from service.settings import Settings

# Error codes of batch rows that no HTTP request can produce (the others are service.errors').
RETRIEVE_FAILED = "retrieve_failed"  # the study's instances could not be fetched or opened
INGEST_CRASHED = "ingest_crashed"  # its worker process died twice while reading it
SCAN_CHUNK = 256  # files per scan task


def _failure(exc: HeadCTError) -> str:
    """How a backend's failure is told: its code and message."""
    return f"{exc.code}: {exc.message}"


class BatchAbortedError(RuntimeError):
    """The run cannot go on (the backend failed, the source cannot be listed); what is
    journaled stays."""


@dataclass
class Ingested:
    """A worker's answer: the study on the grid (pixels dropped), or why not."""

    job: StudyJob
    ingest: IngestResult | None = None
    error: tuple[str, str] | None = None
    timing_ms: dict[str, float] = field(default_factory=dict)
    result: TriageResult | None = None  # inferred in the worker (``worker_settings``)
    backend_error: str | None = None  # the worker's backend failed: the run stops


# A worker's own pipeline when the model runs in the workers, or why it could not be made.
_worker_pipeline: TriagePipeline | None = None
_worker_backend_error: str | None = None


def _init_worker(settings: Settings | None) -> None:
    """Workers leave Ctrl-C to the parent, which stops them in order; with ``settings``, each
    loads its own backend (a failure is kept and answered, so the run stops saying why)."""
    global _worker_pipeline, _worker_backend_error
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if settings is None:
        return
    from service.backends import create_backend

    try:
        _worker_pipeline = TriagePipeline(create_backend(settings))
    except HeadCTError as exc:
        _worker_backend_error = _failure(exc)


def _worker_pool(workers: int, settings: Settings | None = None) -> ProcessPoolExecutor:
    # spawn: no fork of a process that runs onnxruntime's threads
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, context, initializer=_init_worker, initargs=(settings,))


class _Deadline:
    """The pipeline's checkpoint for one study: past ``timeout_s`` of reading, stop it."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.until = time.monotonic() + timeout_s

    def __call__(self) -> None:
        if time.monotonic() > self.until:
            raise IngestTimeoutError(
                f"Reading the study took longer than {self.timeout_s:g} s; it was stopped."
            )


def ingest_job(job: StudyJob, grid: ModelGrid, timeout_s: float) -> Ingested:
    """One study through the pipeline's ingest, in a worker process, within ``timeout_s``
    (``HEADCT_INGEST_TIMEOUT_S``, counted once its instances are at hand)."""
    try:
        sources = job.sources()
    except Exception as exc:  # a server or archive failing: not the text, it may quote headers
        return Ingested(
            job, error=(RETRIEVE_FAILED, f"The study could not be read ({type(exc).__name__}).")
        )
    try:
        result = read_study(sources, grid, _Deadline(timeout_s))
    except HeadCTError as exc:
        return Ingested(job, error=(exc.code, exc.message))
    result.drop_pixel_data()
    return Ingested(job, ingest=result, timing_ms=dict(result.timing_ms))


def score_job(job: StudyJob, grid: ModelGrid, timeout_s: float) -> Ingested:
    """``ingest_job``, then the worker's own backend on the study: the answer carries the
    result, not the volume."""
    if _worker_pipeline is None:
        return Ingested(job, backend_error=_worker_backend_error or "no backend in the worker")
    answer = ingest_job(job, grid, timeout_s)
    if answer.ingest is None:
        return answer
    try:
        answer.result = _worker_pipeline.run_batch([answer.ingest])[0]
    except HeadCTError as exc:
        answer.backend_error = _failure(exc)
    answer.ingest = None
    return answer


@dataclass
class RunStats:
    """This run's work and where its time went (seconds)."""

    found: int = 0  # studies in the source (this shard)
    already_done: int = 0  # skipped: journaled by an earlier run
    scored: int = 0
    batches: int = 0  # backend calls
    scan_s: float = 0.0
    wall_s: float = 0.0
    stage_s: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(
            ("read", "select", "resample", "inference", "postprocess", "write"), 0.0
        )
    )
    waiting_for_ingest_s: float = 0.0  # this process idle, every worker still reading
    scan: ScanReport = field(default_factory=ScanReport)

    def to_dict(self, workers: int, batch_size: int) -> dict[str, Any]:
        rate = self.scored / self.wall_s if self.wall_s > 0 else None
        return {
            "found": self.found,
            "already_done": self.already_done,
            "scored": self.scored,
            "batches": self.batches,
            "workers": workers,
            "batch_size": batch_size,
            "scan_s": round(self.scan_s, 3),
            "wall_s": round(self.wall_s, 3),
            "studies_per_s": None if rate is None else round(rate, 4),
            "stage_s": {k: round(v, 3) for k, v in self.stage_s.items()},
            "waiting_for_ingest_s": round(self.waiting_for_ingest_s, 3),
            "scan": self.scan.to_dict(),
        }


# Progress callbacks: (total) when the studies are known, (n) as n more are journaled.
OnTotal = Callable[[int], None]
OnAdvance = Callable[[int], None]


class BatchRunner:
    """One run over one source into one results folder."""

    def __init__(
        self,
        pipeline: TriagePipeline,
        folder: ResultsFolder,
        *,
        workers: int = 2,
        batch_size: int = 4,
        shard: Shard = Shard(),  # frozen: one shared default is safe
        retry_failed: bool = False,
        ingest_timeout_s: float = 30.0,
        worker_settings: Settings | None = None,
    ) -> None:
        """``worker_settings``: each worker loads the backend they name and infers its own
        studies (``batch_size`` then does not apply); ``pipeline``'s backend only gives the
        card, which the workers' must match (``embedded_worker_settings``)."""
        if workers < 1 or batch_size < 1:
            raise ValueError("workers and batch_size must be at least 1")
        self.pipeline = pipeline
        self.worker_settings = worker_settings
        self.card = pipeline.backend.card
        self.folder = folder
        self.workers = workers
        self.batch_size = batch_size
        self.shard = shard
        self.retry_failed = retry_failed
        self.ingest_timeout_s = ingest_timeout_s
        self.grid = self.card.grid.to_model_grid()
        self.stats = RunStats()
        self.rows: dict[str, Row] = {}

    def run(
        self,
        paths: Sequence[Path] = (),
        dicomweb_url: str | None = None,
        on_total: OnTotal | None = None,
        on_advance: OnAdvance | None = None,
    ) -> dict[str, Row]:
        """Score every study of the source not journaled yet; every study's row, this run's and
        earlier runs'. Raises ``BatchAbortedError`` when the backend fails, KeyboardInterrupt on
        Ctrl-C; the journal holds every study finished before either."""
        started = time.perf_counter()
        self.folder.claim(manifest(self.card, str(self.shard)))
        self.rows = self.folder.load_rows()
        self._pool = _worker_pool(self.workers, self.worker_settings)
        try:
            jobs = self._studies(paths, dicomweb_url)
            todo = [job for job in jobs if not self._done(job.study_uid)]
            self.stats.found, self.stats.already_done = len(jobs), len(jobs) - len(todo)
            if on_total:
                on_total(len(todo))
            self._score(todo, on_advance or (lambda n: None))
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self.stats.wall_s = time.perf_counter() - started
        return self.rows

    def _done(self, study_uid: str) -> bool:
        row = self.rows.get(study_uid)
        return row is not None and not (self.retry_failed and row["status"] == FAILED)

    def _studies(self, paths: Sequence[Path], dicomweb_url: str | None) -> list[StudyJob]:
        """The source's studies in this shard; folders and zips scanned by the workers."""
        began = time.perf_counter()
        if dicomweb_url:
            try:
                jobs = dicomweb_studies(dicomweb_url)
            except Exception as exc:  # the server's answer, not a header: safe to show
                raise BatchAbortedError(
                    f"cannot list the studies of {dicomweb_url}: {exc}"
                ) from None
        else:
            locators: list[Locator] = list_locators(paths)
            found: list[tuple[Locator, str]] = []
            for part, report in self._pool.map(study_uids_of, chunks(locators, SCAN_CHUNK)):
                found.extend(part)
                self.stats.scan.add(report)
            jobs = group_studies(found)
        self.stats.scan_s = time.perf_counter() - began
        return [job for job in jobs if self.shard.holds(job.study_uid)]

    def _score(self, todo: list[StudyJob], advance: OnAdvance) -> None:
        queue = list(reversed(todo))  # pop() takes them in order
        in_flight: dict[Future[Ingested], tuple[StudyJob, int]] = {}
        ready: list[Ingested] = []
        finished: list[Row] = []  # rows to journal now: failed studies, and those workers inferred
        depth = self.workers * 2 + self.batch_size
        while queue or in_flight or ready:
            while queue and len(in_flight) + len(ready) < depth:
                self._submit(in_flight, queue.pop(), 1)
            if in_flight and len(ready) < self.batch_size:
                waited = time.perf_counter()
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                self.stats.waiting_for_ingest_s += time.perf_counter() - waited
                for future in done:
                    if future in in_flight:  # not already resubmitted after a worker died
                        self._collect(future, in_flight, ready, finished)
            # A full batch, or the last studies; finished rows are journaled without waiting.
            full = len(ready) >= self.batch_size or not in_flight
            batch, ready = (
                (ready[: self.batch_size], ready[self.batch_size :]) if full else ([], ready)
            )
            rows, finished = finished + self._infer(batch), []
            if rows:
                began = time.perf_counter()
                self.folder.append(rows)
                self.stats.stage_s["write"] += time.perf_counter() - began
                self.rows.update((row["study_uid"], row) for row in rows)
                self.stats.scored += len(rows)
                advance(len(rows))

    def _submit(
        self, in_flight: dict[Future[Ingested], tuple[StudyJob, int]], job: StudyJob, attempt: int
    ) -> None:
        work = score_job if self.worker_settings is not None else ingest_job
        future = self._pool.submit(work, job, self.grid, self.ingest_timeout_s)
        in_flight[future] = (job, attempt)

    def _collect(
        self,
        future: Future[Ingested],
        in_flight: dict[Future[Ingested], tuple[StudyJob, int]],
        ready: list[Ingested],
        finished: list[Row],
    ) -> None:
        job, attempt = in_flight.pop(future)
        try:
            answer = future.result()
        except BrokenProcessPool:
            self._restart_workers(in_flight, [(job, attempt)], finished)
            return
        if answer.backend_error is not None:
            raise BatchAbortedError(f"the backend failed ({answer.backend_error})")
        self._count_ingest(answer)
        if answer.result is not None:
            self._count_inference([answer.result])
            inference_ms = answer.result.timing_ms.inference
            finished.append(triaged_row(answer.result, job.instances, inference_ms))
            return
        if answer.ingest is not None:
            ready.append(answer)
            return
        code, message = answer.error or (RETRIEVE_FAILED, "")
        finished.append(
            failed_row(job.study_uid, code, message, self.card, job.instances, answer.timing_ms)
        )

    def _restart_workers(
        self,
        in_flight: dict[Future[Ingested], tuple[StudyJob, int]],
        lost: list[tuple[StudyJob, int]],
        failed: list[Row],
    ) -> None:
        """A worker died (out of memory, a decoder crashing): every study in flight is lost with
        it. Start new workers and read them again; a study that was in flight at two deaths is
        recorded as ``ingest_crashed``."""
        lost = [*lost, *in_flight.values()]
        in_flight.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._pool = _worker_pool(self.workers, self.worker_settings)
        for job, attempt in lost:
            if attempt < 2:
                self._submit(in_flight, job, attempt + 1)
                continue
            failed.append(
                failed_row(
                    job.study_uid,
                    INGEST_CRASHED,
                    "The worker process reading the study died, twice.",
                    self.card,
                    job.instances,
                )
            )

    def _count_ingest(self, answer: Ingested) -> None:
        for stage in ("read", "select", "resample"):
            self.stats.stage_s[stage] += answer.timing_ms.get(stage, 0.0) / 1e3

    def _infer(self, batch: list[Ingested]) -> list[Row]:
        if not batch:
            return []
        ingests = [answer.ingest for answer in batch if answer.ingest is not None]
        try:
            results = self.pipeline.run_batch(ingests)
        except HeadCTError as exc:
            raise BatchAbortedError(f"the backend failed ({_failure(exc)})") from None
        self._count_inference(results)
        inference_ms = results[0].timing_ms.inference / len(results)
        return [
            triaged_row(result, answer.job.instances, inference_ms)
            for result, answer in zip(results, batch, strict=True)
        ]

    def _count_inference(self, results: list[TriageResult]) -> None:
        """One backend call's time (the batch's, counted once) and each study's postprocess."""
        self.stats.batches += 1
        self.stats.stage_s["inference"] += results[0].timing_ms.inference / 1e3
        self.stats.stage_s["postprocess"] += sum(r.timing_ms.postprocess for r in results) / 1e3


def embedded_worker_settings(
    settings: Settings, backend: InferenceBackend, workers: int
) -> Settings | None:
    """The settings for workers that each run the model (``BatchRunner``'s ``worker_settings``):
    for an embedded backend on the CPU only, pinned to the version ``backend`` loaded, with the
    cores shared among the workers (unless ``HEADCT_ONNX_INTRA_OP_THREADS`` says otherwise) and
    idle threads that sleep. None (one backend in this process, batched) for Triton and for an
    onnxruntime session on a GPU, where batching pays."""
    from service.backends.onnx import CPU_PROVIDER, OnnxBackend

    if not isinstance(backend, OnnxBackend) or backend.providers != [CPU_PROVIDER]:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = settings.onnx_intra_op_threads or max(1, (cores or 1) // workers)
    return settings.model_copy(
        update={
            "model_version": int(backend.path.parent.name),
            "onnx_intra_op_threads": threads,
            "onnx_spinning": False,
        }
    )
