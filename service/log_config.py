"""JSON log lines carrying the request id; one handler on the root logger, installed once.

What the gateway logs is chosen so that it never holds patient identifiers: codes, counts,
durations, routes and statuses, never DICOM header values, file names or error sentences (those
can quote a file name, and file names can hold a patient's name).
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
import warnings
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

request_id_var: ContextVar[str | None] = ContextVar("headct_request_id", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "taskName",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, then the extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class RequestIdFilter(logging.Filter):
    """Adds the current request id to plain-text records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", None):
            record.request_id = request_id_var.get() or "-"
        return True


def silence_header_warnings() -> None:
    """pydicom warns about malformed values by quoting them (``Invalid value for VR DA:
    '19011231'``), and a malformed value can be a patient's name or birth date: its warnings are
    neither logged nor shown. Errors still are (they name elements, not values)."""
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?$")


def log_unexpected(message: str, exc: BaseException) -> None:
    """Log where an unexpected exception came from, without its message: a library's message can
    quote a header value, and a header value can be a patient's name."""
    logging.getLogger(__name__).error(
        message,
        extra={
            "error_type": type(exc).__name__,
            "traceback": "".join(traceback.format_tb(exc.__traceback__)),
        },
    )


class _GatewayHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler this module installed, so reconfiguring replaces only it."""


def configure_logging(
    level: str = "INFO", json_lines: bool = True, stream: IO[str] | None = None
) -> None:
    """Install the gateway's handler on the root logger (replacing a previous one of ours)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _GatewayHandler)]:
        root.removeHandler(handler)
    handler = _GatewayHandler(stream or sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.addFilter(RequestIdFilter())
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        named = logging.getLogger(name)
        named.handlers.clear()
        named.propagate = True
    # The gateway writes its own access line with the request id; uvicorn's would repeat it.
    logging.getLogger("uvicorn.access").disabled = True
    # The DICOM network libraries log study UIDs at INFO and, pynetdicom at DEBUG, whole data sets
    # (patient names): their warnings and errors only.
    for name in ("pynetdicom", "dicomweb_client"):
        logging.getLogger(name).setLevel(logging.WARNING)
