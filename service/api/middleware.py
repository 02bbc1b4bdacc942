"""Request context as plain ASGI: the request id (``X-Request-ID`` honoured or made, echoed back),
the request counter by route template and status, and one access log line per request.

A request cancelled from outside (the server's graceful shutdown running out of time) is
answered 503 ``shutting_down`` if nothing was sent yet, and logged as cancelled rather than
surfacing in uvicorn as an exception and a 500."""

from __future__ import annotations

import logging
import re
import time
import uuid
from contextlib import suppress

import anyio
from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import problem_response
from service.log_config import request_id_var
from service.metrics import GatewayMetrics

REQUEST_ID_HEADER = "X-Request-ID"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

# Probes and scrapes come every few seconds: their successes are logged at DEBUG.
_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})

log = logging.getLogger("service.access")


def request_id_from(headers: Headers) -> str:
    offered = headers.get(REQUEST_ID_HEADER, "")
    return offered if _VALID_REQUEST_ID.match(offered) else uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(Headers(scope=scope))
        token = request_id_var.set(request_id)
        status = 500
        status_sent: int | None = None
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, status_sent
            if message["type"] == "http.response.start":
                status = status_sent = int(message["status"])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        cancelled = False
        try:
            await self.app(scope, receive, send_with_id)
        except anyio.get_cancelled_exc_class():
            # Only the server cancels a request's task: the app's own deadlines end in their
            # scopes. The task is ending either way; answer if we still can, and end quietly.
            cancelled = True
            if status_sent is None:
                status = 503
                with anyio.CancelScope(shield=True), suppress(OSError, RuntimeError):
                    await _shutting_down(scope, receive, send_with_id)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            quiet = route in _PROBES and status < 400
            log.log(
                logging.DEBUG if quiet else logging.INFO,
                "request cancelled" if cancelled else "request",
                extra={
                    "method": scope.get("method"),
                    "route": route,
                    "status": status,
                    "duration_ms": round((time.perf_counter() - started) * 1e3, 2),
                },
            )
            request_id_var.reset(token)


async def _shutting_down(scope: Scope, receive: Receive, send: Send) -> None:
    response = problem_response(
        503,
        "shutting_down",
        "Shutting down",
        "The gateway is shutting down; retry on another replica or later.",
        headers={"Retry-After": "5"},
    )
    await response(scope, receive, send)
