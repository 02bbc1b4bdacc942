"""``POST /v1/triage``: a study in, the triage result out.

admit (or 429) -> receive the upload (deadline) -> the triage pipeline (``service.pipeline``:
wait for a slot, then ingest and infer in worker threads, inference under its deadline) ->
the result, observed in the metrics.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import Request
from starlette.requests import ClientDisconnect

from service.api.deps import LimiterDep, MetricsDep, PipelineDep, SettingsDep
from service.api.routes import versioned_router
from service.errors import MalformedUploadError, UploadTimeoutError
from service.pipeline import Deadlines
from service.schemas import PROBLEM_MEDIA_TYPE, Problem, TriageResult
from service.settings import Settings
from service.uploads import (
    Upload,
    UploadLimits,
    check_declared_length,
    check_media_type,
    receive_upload,
)

router = versioned_router(tags=["triage"])

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


async def _chunks(request: Request) -> AsyncIterator[bytes]:
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise MalformedUploadError("The client disconnected during the upload.") from None


async def _receive(request: Request, limits: UploadLimits, settings: Settings) -> Upload:
    """The upload, spooled, within the upload deadline."""
    try:
        with anyio.fail_after(settings.upload_timeout_s):
            return await receive_upload(
                request.headers.get("content-type"),
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


@router.post(
    "/triage",
    response_model=TriageResult,
    responses=PROBLEM_RESPONSES,
    openapi_extra=REQUEST_BODY,
    summary="Triage a head CT study",
)
async def triage(
    request: Request,
    settings: SettingsDep,
    pipeline: PipelineDep,
    metrics: MetricsDep,
    limiter: LimiterDep,
) -> TriageResult:
    """Upload one study (a folder's DICOM files, or a zip); get the probability of each of the 75
    findings, the triage priority, the router weights and the key slice. Not for clinical use."""
    started = time.perf_counter()
    limits = upload_limits(settings)
    check_media_type(request.headers.get("content-type"))
    check_declared_length(request.headers.get("content-length"), limits)
    async with limiter.admit():
        metrics.inflight.inc()
        try:
            with await _receive(request, limits, settings) as upload:
                result = await pipeline.run_async(
                    upload.sources(),
                    started=started,
                    slot=limiter.slot(),
                    deadlines=Deadlines(inference_s=settings.inference_timeout_s),
                )
            metrics.observe_result(result)
            return result
        finally:
            metrics.inflight.dec()
