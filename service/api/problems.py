"""One place that turns the service's exceptions into ``application/problem+json`` responses.

Each error class carries its status, title and code (``service.errors``); ``ERROR_CODES``, the
table of statuses and codes shown in the OpenAPI description, is derived from those classes plus
the few codes this module answers itself.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api import API_PREFIX
from service.errors import HeadCTError, UnauthorizedError, error_classes
from service.log_config import log_unexpected, request_id_var
from service.schemas import PROBLEM_MEDIA_TYPE

log = logging.getLogger(__name__)

# Codes answered here rather than by a HeadCTError: (statuses, code, note).
_OWN_CODES = [
    ("400", "invalid_request", ""),
    ("400", "malformed_http", ""),
    ("503", "shutting_down", ""),
    ("404, 405", "not_found, method_not_allowed", ""),
    ("500", "internal_error", ""),
]


def _error_table() -> str:
    rows: dict[str, list[str]] = {}
    for cls in error_classes():
        notes = [n for n in (cls.note, "with Retry-After" if cls.retry_after else "") if n]
        rows.setdefault(str(cls.status), []).append(
            cls.code + (f" ({'; '.join(notes)})" if notes else "")
        )
    for statuses, code, note in _OWN_CODES:
        rows.setdefault(statuses, []).append(code + (f" ({note})" if note else ""))
    lines = ["| status | code |", "|---|---|"]
    for statuses in sorted(rows, key=lambda s: int(s.split(",")[0])):
        lines.append(f"| {statuses} | {', '.join(rows[statuses])} |")
    return "\n".join(lines) + "\n"


ERROR_CODES = _error_table()


# Server-side messages can name internal hosts and paths: they are logged, and clients get these.
_SERVER_DETAIL = {
    500: "The model deployment is misconfigured; the gateway's log says how.",
    503: "The inference backend is unavailable; retry later.",
}


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
    status, title = exc.status, exc.title
    headers: dict[str, str] = {}
    if exc.retry_after:
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
    if metrics is not None and request.url.path.startswith(API_PREFIX + "/"):
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
