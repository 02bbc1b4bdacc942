"""One place that turns the service's exceptions into ``application/problem+json`` responses;
``ERROR_CODES`` is the table of statuses and codes (also shown in the OpenAPI description).

An unsupported transfer syntax is a 400, not a 415: 415 always means the request's own
Content-Type, which a client can fix by resending; a transfer syntax needs the file re-encoded.
"""

from __future__ import annotations

import logging
import traceback
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.capacity import OverCapacityError
from service.api.deps import UnauthorizedError
from service.backends.base import BackendTimeoutError, BackendUnavailableError
from service.errors import (
    CorruptDicomError,
    EmptyStudyError,
    HeadCTError,
    IngestError,
    ModelContractError,
    NotDicomError,
    TruncatedDicomError,
    UnsupportedTransferSyntaxError,
)
from service.log_config import request_id_var
from service.schemas import PROBLEM_MEDIA_TYPE
from service.uploads import (
    LIMIT_ERRORS,
    UnsupportedMediaTypeError,
    UploadError,
    UploadTimeoutError,
)

log = logging.getLogger(__name__)

ERROR_CODES = """\
| status | code |
|---|---|
| 400 | not_dicom, truncated_dicom, corrupt_dicom, empty_study, unsupported_transfer_syntax, \
malformed_upload, empty_upload, unsafe_zip_entry, invalid_request |
| 401 | unauthorized (only when HEADCT_API_KEYS is set) |
| 404, 405 | not_found, method_not_allowed |
| 408 | upload_timeout |
| 413 | upload_too_large, too_many_files, zip_too_large, zip_ratio_exceeded |
| 415 | unsupported_media_type (the request's Content-Type) |
| 422 | no_pixel_data, not_ct, no_axial_series, too_few_slices, inconsistent_geometry |
| 429 | over_capacity (with Retry-After) |
| 500 | model_contract, internal_error |
| 503 | backend_unavailable (with Retry-After) |
| 504 | backend_timeout |
"""

# Checked in order: the first class an exception is an instance of gives its status and title.
_STATUS: list[tuple[tuple[type[HeadCTError], ...], int, str]] = [
    ((UnauthorizedError,), 401, "Missing or invalid API key"),
    (LIMIT_ERRORS, 413, "Upload over a limit"),
    ((UploadTimeoutError,), 408, "Upload too slow"),
    ((UnsupportedMediaTypeError,), 415, "Unsupported media type"),
    ((UploadError,), 400, "Malformed upload"),
    (
        (
            NotDicomError,
            TruncatedDicomError,
            CorruptDicomError,
            EmptyStudyError,
            UnsupportedTransferSyntaxError,
        ),
        400,
        "Not readable DICOM",
    ),
    ((IngestError,), 422, "Not a usable head CT study"),
    ((OverCapacityError,), 429, "Over capacity"),
    ((BackendTimeoutError,), 504, "Inference timed out"),
    ((BackendUnavailableError,), 503, "Inference backend unavailable"),
    ((ModelContractError,), 500, "Model does not match its card"),
]


# Server-side messages can name internal hosts and paths: they are logged, and clients get these.
_SERVER_DETAIL = {
    500: "The model deployment is misconfigured; the gateway's log says how.",
    503: "The inference backend is unavailable; retry later.",
}


def status_of(exc: HeadCTError) -> tuple[int, str]:
    for classes, status, title in _STATUS:
        if isinstance(exc, classes):
            return status, title
    return 500, "Internal error"


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"urn:headct:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": request_id_var.get(),
        **{k: v for k, v in extra.items() if v is not None},
    }
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


async def handle_service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HeadCTError)
    status, title = status_of(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, OverCapacityError | BackendUnavailableError):
        headers["Retry-After"] = str(exc.details.get("retry_after", 5))
    if isinstance(exc, UnauthorizedError):
        headers["WWW-Authenticate"] = 'Bearer realm="headct"'
    extra = {"series": exc.details.get("series")}
    if status >= 500:
        log.error("request failed", extra={"code": exc.code, "reason": exc.message})
        detail = _SERVER_DETAIL.get(status, exc.message)
    else:
        log.info("request refused", extra={"code": exc.code, "status": status})
        detail = exc.message
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None and request.url.path.startswith("/v1/"):
        metrics.rejections.labels(reason=exc.code).inc()
    return problem_response(status, exc.code, title, detail, headers=headers, **extra)


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = ["/".join(str(p) for p in e.get("loc", ())) for e in exc.errors()]
    return problem_response(
        400, "invalid_request", "Invalid request", f"Invalid or missing: {', '.join(fields)}."
    )


async def handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    code = phrase.lower().replace(" ", "_").replace("-", "_")
    detail = exc.detail if isinstance(exc.detail, str) else phrase
    headers = dict(exc.headers) if exc.headers else None
    return problem_response(exc.status_code, code, phrase, detail, headers=headers)


def log_unexpected(message: str, exc: BaseException) -> None:
    """Log where an unexpected exception came from, without its message: a library's message can
    quote a header value, and a header value can be a patient's name."""
    log.error(
        message,
        extra={
            "error_type": type(exc).__name__,
            "traceback": "".join(traceback.format_tb(exc.__traceback__)),
        },
    )


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log_unexpected("unhandled error", exc)
    return problem_response(
        500, "internal_error", "Internal error", "An unexpected error occurred."
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HeadCTError, handle_service_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
    app.add_exception_handler(Exception, handle_unexpected)
