"""``POST /v1/triage``: a study in, the triage result out.

receive the upload (the client's allowance of uploads, or 429; its deadline and minimum rate, or
408; non-DICOM refused from its first bytes) -> admit (or 429) -> the triage pipeline
(``service.pipeline``: wait for a slot, then ingest and infer in worker threads, each under its
deadline) -> the result, observed in the metrics. A client that disconnects stops its study's
work; the answer it no longer waits for is logged as 499 ``client_disconnected``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import anyio
from fastapi import Request
from starlette.requests import ClientDisconnect

from service.api.capacity import UploadLimiter
from service.api.deps import LimiterDep, MetricsDep, PipelineDep, SettingsDep, UploadLimiterDep
from service.api.routes import versioned_router
from service.errors import ClientDisconnectedError
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
    408: "The upload was not received within its deadline, or arrived under the minimum rate.",
    413: "Over the size, file-count or zip limits.",
    415: "The Content-Type is not multipart/form-data, application/zip or application/dicom.",
    422: "DICOM, but not a usable head CT ('series' says why for each series), or too costly "
    "to read within the ingest deadline.",
    429: "Over capacity, or too many uploads from this client; retry after Retry-After seconds.",
    503: "The inference backend is unavailable.",
    504: "The inference backend did not answer in time.",
}


def problem_doc(description: str) -> dict[str, Any]:
    """The OpenAPI entry of a problem+json response."""
    return {
        "description": description,
        "model": Problem,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: problem_doc(description) for status, description in _PROBLEMS.items()
}


def upload_limits(settings: Settings) -> UploadLimits:
    return UploadLimits(
        max_bytes=settings.max_upload_bytes,
        max_files=settings.max_files,
        max_zip_uncompressed_bytes=settings.max_zip_uncompressed_bytes,
        max_zip_ratio=settings.max_zip_ratio,
        timeout_s=settings.upload_timeout_s,
        min_rate_bytes_s=settings.upload_min_rate_bytes_s,
        grace_s=settings.upload_rate_grace_s,
    )


async def receive_body(request: Request, settings: Settings, uploads: UploadLimiter) -> Upload:
    """The request's body, received under the upload limits (its declared length, the client's
    allowance of uploads at once, the deadline and the minimum rate) into memory or the spool.
    The caller checks the media type first and closes the upload when done."""
    limits = upload_limits(settings)
    check_declared_length(request.headers.get("content-length"), limits)
    client = request.client.host if request.client else "unknown"
    async with uploads.receiving_from(client):
        return await receive_upload(
            request.headers.get("content-type"),
            body_chunks(request),
            limits,
            spool_dir=settings.upload_dir,
            memory_bytes=settings.spool_memory_bytes,
        )


async def body_chunks(request: Request) -> AsyncIterator[bytes]:
    """The request's body as it arrives; a client gone is ``ClientDisconnectedError``."""
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise ClientDisconnectedError("The client disconnected during the upload.") from None


async def _until_disconnected(request: Request) -> None:
    """Returns when the client has gone (the body has been read: what comes next is that)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, work: Awaitable[TriageResult]) -> TriageResult:
    """``work``'s result (or its error); if the client goes first, the work is cancelled (ingest
    stops at its next file or stage) and ``ClientDisconnectedError`` raised."""
    outcome: list[TriageResult | Exception] = []
    async with anyio.create_task_group() as tasks:

        async def run() -> None:
            try:
                outcome.append(await work)
            except Exception as exc:  # raised below, as itself rather than in a group
                outcome.append(exc)
            tasks.cancel_scope.cancel()

        tasks.start_soon(run)
        await _until_disconnected(request)
        tasks.cancel_scope.cancel()
    if not outcome:
        raise ClientDisconnectedError("The client disconnected before its study was triaged.")
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


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
    uploads: UploadLimiterDep,
) -> TriageResult:
    """Upload one study (a folder's DICOM files, or a zip); get the probability of each of the 75
    findings, the triage priority, the router weights and the key slice. Not for clinical use."""
    started = time.perf_counter()
    check_media_type(request.headers.get("content-type"))
    upload = await receive_body(request, settings, uploads)
    with upload:
        async with limiter.admit():
            metrics.inflight.inc()
            try:
                result = await _unless_disconnected(
                    request,
                    pipeline.run_async(
                        upload.sources(),
                        started=started,
                        slot=limiter.slot(),
                        deadlines=Deadlines.from_settings(settings),
                    ),
                )
                metrics.observe_result(result)
                return result
            finally:
                metrics.inflight.dec()
