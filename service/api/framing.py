"""Malformed HTTP framing (a negative ``Content-Length``, both ``Content-Length`` and
``Transfer-Encoding``, a garbage request line) answered as ``application/problem+json``.

uvicorn refuses such requests itself, before the app sees them, with a plain-text 400 written by
its protocol's ``send_400_response``. These subclasses of its two HTTP implementations (httptools,
the default where it is installed, and h11) write the problem instead; ``headct serve`` hands the
class to uvicorn (``http=``). The connection is closed afterwards, as uvicorn does.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.h11_impl import H11Protocol

from service.schemas import PROBLEM_MEDIA_TYPE

FRAMING_CODE = "malformed_http"


def framing_problem() -> bytes:
    """The whole response, status line to body (no request id: no request was parsed)."""
    body = json.dumps(
        {
            "type": f"urn:headct:problem:{FRAMING_CODE}",
            "title": "Malformed HTTP request",
            "status": 400,
            "detail": "The request's framing (request line, Content-Length or "
            "Transfer-Encoding) is not valid HTTP/1.1.",
            "code": FRAMING_CODE,
        }
    ).encode()
    head = (
        "HTTP/1.1 400 Bad Request\r\n"
        f"content-type: {PROBLEM_MEDIA_TYPE}\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    ).encode()
    return head + body


def _refuse(transport: asyncio.Transport) -> None:
    transport.write(framing_problem())
    transport.close()


class ProblemH11Protocol(H11Protocol):
    def send_400_response(self, msg: str) -> None:
        _refuse(self.transport)


try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # httptools is optional: h11 serves alone
    HTTP_PROTOCOL: type[asyncio.Protocol] = ProblemH11Protocol
else:

    class ProblemHttpToolsProtocol(HttpToolsProtocol):
        def send_400_response(self, msg: str) -> None:
            _refuse(self.transport)

    HTTP_PROTOCOL = ProblemHttpToolsProtocol
