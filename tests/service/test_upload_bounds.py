"""Uploads are bounded on their own: admitted to a worker only once received, paced (deadline and
minimum rate), capped per client address, and refused from their first bytes when they cannot be
a study; ingest has a deadline; a request cancelled by the server's shutdown is a 503, not a 500."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import httpx2
import pytest
from starlette.types import Message, Receive, Scope, Send

from service.api.middleware import RequestContextMiddleware
from service.app import create_app
from service.metrics import GatewayMetrics
from service.settings import Settings
from testing.studies import multipart_files, zip_bytes


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _boundary_body(parts: list[tuple[str, bytes]], boundary: str = "b0und") -> bytes:
    out = b""
    for name, data in parts:
        out += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="files"; '
                f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    return out + f"--{boundary}--\r\n".encode()


class _Trickle:
    """A request body sent a few bytes at a time; counts what the server pulled."""

    def __init__(self, data: bytes, *, step: int = 100, pause_s: float = 0.05) -> None:
        self.data, self.step, self.pause_s = data, step, pause_s
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while self.sent < len(self.data):
            chunk = self.data[self.sent : self.sent + self.step]
            self.sent += len(chunk)
            yield chunk
            await anyio.sleep(self.pause_s)


async def _zeros(count: list[int], chunks: int, size: int = 1024 * 1024) -> AsyncIterator[bytes]:
    for _ in range(chunks):
        count[0] += 1
        yield bytes(size)


@pytest.mark.anyio
async def test_trickling_uploads_hold_no_worker_and_a_normal_study_gets_its_200(
    make_settings: Callable[..., Settings], study: list[Path], upload_dir: Path
) -> None:
    # one worker, no queue: before, one slow upload would have taken the only admission
    settings = make_settings(
        max_concurrent_jobs=1, max_queued_jobs=0, max_uploads_per_client=32, upload_timeout_s=60
    )
    app = create_app(settings, configure_logs=False)
    body = zip_bytes(study)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as client:
            trickles = [_Trickle(body, step=50, pause_s=0.05) for _ in range(16)]
            answers: list[httpx2.Response] = []

            async def slow(trickle: _Trickle) -> None:
                answers.append(
                    await client.post(
                        "/v1/triage",
                        content=trickle,
                        headers={"Content-Type": "application/zip"},
                        timeout=120,
                    )
                )

            async with anyio.create_task_group() as tasks:
                for trickle in trickles:
                    tasks.start_soon(slow, trickle)
                await anyio.sleep(0.3)
                assert app.state.limiter.admitted == 0  # receiving is not admission
                assert app.state.uploads.receiving == {"127.0.0.1": 16}
                ok = await client.post("/v1/triage", files=multipart_files(study), timeout=60)
                assert ok.status_code == 200, ok.text
                assert all(t.sent < len(body) for t in trickles)  # they were still trickling
                tasks.cancel_scope.cancel()
    assert list(upload_dir.iterdir()) == []


@pytest.mark.anyio
async def test_uploads_per_client_address_are_capped_with_retry_after(
    make_settings: Callable[..., Settings], study: list[Path]
) -> None:
    app = create_app(make_settings(max_uploads_per_client=2), configure_logs=False)
    body = zip_bytes(study)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as client:
            async with anyio.create_task_group() as tasks:
                for _ in range(2):
                    tasks.start_soon(
                        lambda: client.post(
                            "/v1/triage",
                            content=_Trickle(body, step=10, pause_s=0.1),
                            headers={"Content-Type": "application/zip"},
                            timeout=60,
                        )
                    )
                await anyio.sleep(0.3)
                refused = await client.post("/v1/triage", files=multipart_files(study))
                tasks.cancel_scope.cancel()
            assert refused.status_code == 429
            assert refused.headers["content-type"] == "application/problem+json"
            assert refused.json()["code"] == "too_many_uploads"
            assert int(refused.headers["retry-after"]) >= 1
            # once they are gone, the same client may upload again
            again = await client.post("/v1/triage", files=multipart_files(study), timeout=60)
            assert again.status_code == 200, again.text


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["application/dicom", "application/zip", "multipart"])
async def test_an_upload_under_the_minimum_rate_gets_408(
    make_settings: Callable[..., Settings], study: list[Path], upload_dir: Path, kind: str
) -> None:
    settings = make_settings(upload_min_rate_bytes_s=10_000, upload_rate_grace_s=0.3)
    app = create_app(settings, configure_logs=False)
    if kind == "multipart":
        data, content_type = _boundary_body([(study[0].name, study[0].read_bytes())]), None
        content_type = "multipart/form-data; boundary=b0und"
    else:
        data = study[0].read_bytes() if kind == "application/dicom" else zip_bytes(study)
        content_type = kind
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as client:
            started = time.monotonic()
            slow = await client.post(
                "/v1/triage",
                content=_Trickle(data, step=20, pause_s=0.05),  # 400 bytes/s
                headers={"Content-Type": content_type},
                timeout=30,
            )
            assert time.monotonic() - started < 3
    assert slow.status_code == 408
    assert slow.headers["content-type"] == "application/problem+json"
    assert slow.json()["code"] == "upload_timeout"
    assert "minimum" in slow.json()["detail"]
    assert list(upload_dir.iterdir()) == []


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["application/dicom", "application/zip"])
async def test_a_lone_body_that_is_not_dicom_is_refused_from_its_first_bytes(
    make_settings: Callable[..., Settings], upload_dir: Path, kind: str
) -> None:
    app = create_app(make_settings(max_upload_bytes=2**40), configure_logs=False)
    pulled = [0]
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as client:
            started = time.monotonic()
            refused = await client.post(
                "/v1/triage", content=_zeros(pulled, 600), headers={"Content-Type": kind}
            )
            elapsed = time.monotonic() - started
    assert refused.status_code == 400
    assert refused.json()["code"] == "not_dicom"
    assert "first bytes" in refused.json()["detail"]
    assert pulled[0] <= 2  # of 600 MB, the first megabyte or two
    assert elapsed < 1.0
    assert list(upload_dir.iterdir()) == []


@pytest.mark.anyio
async def test_multipart_strays_keep_their_head_and_too_many_stray_bytes_are_refused(
    make_settings: Callable[..., Settings], upload_dir: Path
) -> None:
    app = create_app(make_settings(max_upload_bytes=2**40), configure_logs=False)
    pulled = [0]

    async def body() -> AsyncIterator[bytes]:
        yield b'--b0und\r\nContent-Disposition: form-data; name="files"; filename="z"\r\n\r\n'
        async for chunk in _zeros(pulled, 600):
            yield chunk

    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as client:
            refused = await client.post(
                "/v1/triage",
                content=body(),
                headers={"Content-Type": "multipart/form-data; boundary=b0und"},
            )
    assert refused.status_code == 400
    assert refused.json()["code"] == "not_dicom"
    assert pulled[0] <= 66  # the stray allowance (64 MiB), not the 600 MB
    assert list(upload_dir.iterdir()) == []


@pytest.mark.anyio
async def test_a_dicom_body_without_its_preamble_is_still_taken_as_dicom(
    make_settings: Callable[..., Settings], study: list[Path]
) -> None:
    app = create_app(make_settings(), configure_logs=False)
    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as client:
            bare = await client.post(
                "/v1/triage",
                content=study[0].read_bytes()[132:],
                headers={"Content-Type": "application/dicom"},
            )
    # read as DICOM (one slice is not a study), not refused as something else
    assert bare.status_code == 422, bare.text
    assert bare.json()["code"] != "not_dicom"


def test_past_the_ingest_deadline_the_study_stops_with_422(
    make_client: Callable[..., object], study: list[Path]
) -> None:
    client = make_client(ingest_timeout_s=1e-6)
    response = client.post("/v1/triage", files=multipart_files(study))  # type: ignore[attr-defined]
    assert response.status_code == 422
    assert response.json()["code"] == "ingest_timeout"


@pytest.mark.anyio
async def test_a_request_cancelled_by_shutdown_is_a_logged_503_not_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def forever(scope: Scope, receive: Receive, send: Send) -> None:
        await anyio.sleep_forever()

    caplog.set_level(logging.INFO, logger="service.access")
    metrics = GatewayMetrics()
    app = RequestContextMiddleware(forever, metrics=metrics)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        await anyio.sleep_forever()
        return {}

    scope: Scope = {"type": "http", "method": "POST", "path": "/v1/triage", "headers": []}
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(app, scope, receive, send)
        await anyio.sleep(0.05)
        tasks.cancel_scope.cancel()  # as uvicorn does past its graceful-shutdown timeout
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 503
    assert b'"code":"shutting_down"' in sent[1]["body"]
    assert any(r.getMessage() == "request cancelled" for r in caplog.records)
    assert not any(r.levelname == "ERROR" for r in caplog.records)
