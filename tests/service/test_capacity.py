"""Saturation: over the bound a triage request gets 429 at once, while the probes keep answering."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import httpx2
import numpy as np
import pytest

from service.api.deps import get_backend
from service.app import create_app
from service.backends.base import InferenceBackend
from service.contract import ModelOutputs
from service.model_card import ModelCard
from service.settings import Settings
from testing.studies import multipart_files


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _GatedBackend:
    """Wraps the real backend; ``infer`` blocks (in its worker thread) until the gate opens."""

    def __init__(self, inner: InferenceBackend) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.gate = threading.Event()
        self.entered = threading.Event()

    @property
    def card(self) -> ModelCard:
        return self.inner.card

    def ready(self) -> bool:
        return True

    def infer(self, volumes: np.ndarray) -> ModelOutputs:
        self.entered.set()
        self.gate.wait(timeout=10)
        return self.inner.infer(volumes)

    def close(self) -> None:
        pass


@pytest.mark.anyio
async def test_over_capacity_is_429_while_probes_answer(
    make_settings: Callable[..., Settings], study: list[Path], upload_dir: Path
) -> None:
    app = create_app(make_settings(max_concurrent_jobs=1, max_queued_jobs=1), configure_logs=False)
    files = multipart_files(study)
    async with app.router.lifespan_context(app):
        gated = _GatedBackend(app.state.backend)
        app.dependency_overrides[get_backend] = lambda: gated
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as client:
            results: dict[str, httpx2.Response] = {}

            async def post(name: str) -> None:
                results[name] = await client.post("/v1/triage", files=files, timeout=30)

            async with anyio.create_task_group() as tasks:
                tasks.start_soon(post, "first")
                tasks.start_soon(post, "second")
                with anyio.fail_after(10):
                    while not gated.entered.is_set() or app.state.limiter.admitted < 2:
                        await anyio.sleep(0.01)
                # both admitted (one in inference, one queued or running): the third is refused
                refused = await client.post("/v1/triage", files=files)
                assert refused.status_code == 429
                assert refused.json()["code"] == "over_capacity"
                assert "(1 study running, 1 waiting)" in refused.json()["detail"]
                assert int(refused.headers["retry-after"]) >= 1
                # the event loop is free: probes and metrics answer during saturation
                assert (await client.get("/healthz")).status_code == 200
                metrics = await client.get("/metrics")
                assert metrics.status_code == 200
                assert "headct_inflight_requests 2.0" in metrics.text
                assert 'headct_rejections_total{reason="over_capacity"} 1.0' in metrics.text
                gated.gate.set()
    assert results["first"].status_code == 200
    assert results["second"].status_code == 200
    assert list(upload_dir.iterdir()) == []


@pytest.mark.anyio
async def test_a_stalled_upload_times_out_and_frees_its_slot(
    make_settings: Callable[..., Settings], study: list[Path], upload_dir: Path
) -> None:
    app = create_app(
        make_settings(max_concurrent_jobs=1, max_queued_jobs=0, upload_timeout_s=0.3),
        configure_logs=False,
    )

    async def trickle() -> AsyncIterator[bytes]:
        yield study[0].read_bytes()[:1000]
        await anyio.sleep(5)
        yield b"never sent"

    async with app.router.lifespan_context(app):
        transport = httpx2.ASGITransport(app=app)
        async with httpx2.AsyncClient(transport=transport, base_url="http://gateway") as client:
            stalled = await client.post(
                "/v1/triage", content=trickle(), headers={"Content-Type": "application/dicom"}
            )
            assert stalled.status_code == 408
            assert stalled.json()["code"] == "upload_timeout"
            assert app.state.limiter.admitted == 0
            ok = await client.post("/v1/triage", files=multipart_files(study))
            assert ok.status_code == 200
    assert list(upload_dir.iterdir()) == []
