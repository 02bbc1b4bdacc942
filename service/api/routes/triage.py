"""``POST /v1/triage``: a study in, the triage result out.

admit (or 429) -> receive the upload (deadline) -> take a slot (queue) -> decode and preprocess
(worker thread) -> infer (worker thread, deadline) -> release the slot -> postprocess.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect

from service.api.capacity import StudyLimiter
from service.api.deps import (
    ApiKeyDep,
    BackendDep,
    LimiterDep,
    MetricsDep,
    SettingsDep,
    read_card,
)
from service.api.problems import log_unexpected
from service.backends.base import BackendTimeoutError, InferenceBackend
from service.contract import ModelOutputs
from service.errors import CorruptDicomError, HeadCTError
from service.ingest import IngestResult, ingest_study
from service.metrics import GatewayMetrics
from service.postprocess import timed_result
from service.preprocess import ModelGrid
from service.schemas import PROBLEM_MEDIA_TYPE, Problem, TriageResult
from service.settings import Settings
from service.uploads import (
    MalformedUploadError,
    Upload,
    UploadLimits,
    UploadTimeoutError,
    check_declared_length,
    check_media_type,
    receive_upload,
)

router = APIRouter(tags=["triage"], dependencies=[ApiKeyDep])

_BINARY = {"type": "string", "format": "binary"}
REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The study: DICOM files or one zip of them as multipart 'files' parts, "
        "or a raw zip or DICOM body.",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": _BINARY, "minItems": 1}},
                    "required": ["files"],
                }
            },
            "application/zip": {"schema": _BINARY},
            "application/dicom": {"schema": _BINARY},
        },
    }
}

_PROBLEMS = {
    400: "Not DICOM, corrupt or truncated, or a malformed upload.",
    401: "API keys are configured and none (or a wrong one) was sent.",
    408: "The upload was not received within the upload deadline.",
    413: "Over the size, file-count or zip limits.",
    415: "The Content-Type is not multipart/form-data, application/zip or application/dicom.",
    422: "DICOM, but not a usable head CT; 'series' says why for each series.",
    429: "Over capacity; retry after Retry-After seconds.",
    503: "The inference backend is unavailable.",
    504: "The inference backend did not answer in time.",
}
PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "description": description,
        "model": Problem,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }
    for status, description in _PROBLEMS.items()
}


def upload_limits(settings: Settings) -> UploadLimits:
    return UploadLimits(
        max_bytes=settings.max_upload_bytes,
        max_files=settings.max_files,
        max_zip_uncompressed_bytes=settings.max_zip_uncompressed_bytes,
        max_zip_ratio=settings.max_zip_ratio,
    )


def ingest_upload(upload: Upload, grid: ModelGrid) -> IngestResult:
    """Read, select, decode and resample, in a worker thread. A library failing on odd input is
    still bad input: it becomes ``corrupt_dicom``, and its traceback is logged for us."""
    try:
        return ingest_study(upload.sources(), grid=grid)
    except HeadCTError:
        raise
    except Exception as exc:
        log_unexpected("ingest failed unexpectedly", exc)
        raise CorruptDicomError("The study could not be decoded.") from None


async def run_inference(backend: InferenceBackend, volumes: Any, timeout_s: float) -> ModelOutputs:
    try:
        with anyio.fail_after(timeout_s):
            outputs: ModelOutputs = await anyio.to_thread.run_sync(
                backend.infer, volumes, abandon_on_cancel=True
            )
            return outputs
    except TimeoutError:
        raise BackendTimeoutError(
            f"The {backend.kind} backend did not answer within {timeout_s:g} s."
        ) from None


async def _chunks(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise MalformedUploadError("The client disconnected during the upload.") from None


@router.post(
    "/v1/triage",
    response_model=TriageResult,
    responses=PROBLEM_RESPONSES,
    openapi_extra=REQUEST_BODY,
    summary="Triage a head CT study",
)
async def triage(
    request: Request,
    settings: SettingsDep,
    backend: BackendDep,
    metrics: MetricsDep,
    limiter: LimiterDep,
) -> TriageResult:
    """Upload one study (a folder's DICOM files, or a zip); get the probability of each of the 75
    findings, the triage priority, the router weights and the key slice. Not for clinical use."""
    started = time.perf_counter()
    content_type = request.headers.get("content-type")
    limits = upload_limits(settings)
    check_media_type(content_type)
    check_declared_length(request.headers.get("content-length"), limits)
    async with limiter.admit():
        metrics.inflight.inc()
        try:
            return await _triage_admitted(
                request, content_type, limits, settings, backend, metrics, limiter, started
            )
        finally:
            metrics.inflight.dec()


async def _triage_admitted(
    request: Request,
    content_type: str | None,
    limits: UploadLimits,
    settings: Settings,
    backend: InferenceBackend,
    metrics: GatewayMetrics,
    limiter: StudyLimiter,
    started: float,
) -> TriageResult:
    try:
        with anyio.fail_after(settings.upload_timeout_s):
            upload = await receive_upload(
                content_type,
                _chunks(request),
                limits,
                spool_dir=settings.upload_dir,
                memory_bytes=settings.spool_memory_bytes,
            )
    except TimeoutError:
        raise UploadTimeoutError(
            f"The upload took longer than {settings.upload_timeout_s:g} s; send it faster or "
            "in a zip."
        ) from None
    uploaded = time.perf_counter()
    card = await anyio.to_thread.run_sync(read_card, backend)  # triton: may be a network call
    async with limiter.slot():
        dequeued = time.perf_counter()
        with upload:
            ingest = await anyio.to_thread.run_sync(
                ingest_upload, upload, card.grid.to_model_grid()
            )
        inferring = time.perf_counter()
        outputs = await run_inference(backend, ingest.volume.hu[None], settings.inference_timeout_s)
        inferred = time.perf_counter()
    result = timed_result(
        card,
        ingest,
        outputs,
        started=started,
        inferring=inferring,
        inferred=inferred,
        upload_ms=(uploaded - started) * 1e3,
        queue_ms=(dequeued - uploaded) * 1e3,
    )
    metrics.observe_result(result, outputs)
    return result
