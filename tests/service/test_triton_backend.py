"""The gateway on the real Triton server (the one bundled in the nvidia-pytriton wheel, python
backend model ``headct_molre_cpu``) against the embedded onnxruntime backend on the same exported
model: the same result for the same study over HTTP; readiness and the model card following the
Triton model (unloaded, reloaded with a new card); a hung or too-slow Triton giving 504
``backend_timeout``; and Triton dying under a request giving 503 ``backend_unavailable``.

One export and one server for the whole session (conftest); tests that change the server's state
put it back. Pausing the server (SIGSTOP) is how a hung Triton looks from the network: the kernel
still accepts connections, nothing answers.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil
import pytest
import tritonclient.http as triton_http
from fastapi.testclient import TestClient
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from service.model_card import CARD_METADATA_KEY
from testing.studies import multipart_files
from testing.triton_local import TritonServer, triton_server
from tests.service.conftest import TRITON_MODEL

if TYPE_CHECKING:
    from training.export import ExportResult

TOLERANCE = 1e-5
Response = Any  # httpx's Response, as the TestClient returns it


@pytest.fixture
def make_triton_client(
    make_client: Callable[..., TestClient], triton: TritonServer, exported_repository: Path
) -> Callable[..., TestClient]:
    """A started gateway with ``HEADCT_BACKEND=triton`` on the session's server (or ``url``)."""

    def make(url: str | None = None, **overrides: Any) -> TestClient:
        values: dict[str, Any] = {
            "backend": "triton",
            "triton_url": url or triton.http_url,
            "model_name": TRITON_MODEL,
            "model_repository": exported_repository,
        }
        return make_client(**{**values, **overrides})

    return make


@pytest.fixture
def embedded_client(
    make_client: Callable[..., TestClient], exported_repository: Path
) -> TestClient:
    """A started gateway with the embedded onnxruntime backend on the same repository."""
    return make_client(model_repository=exported_repository)


def _control(server: TritonServer) -> triton_http.InferenceServerClient:
    return triton_http.InferenceServerClient(server.http_url)


def _inference_count(server: TritonServer) -> int:
    client = _control(server)
    try:
        stats = client.get_inference_statistics(TRITON_MODEL)["model_stats"]
        return sum(int(s["inference_count"]) for s in stats)
    finally:
        client.close()


def _wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _triton_model_ready(server: TritonServer) -> bool:
    client = _control(server)
    try:
        return bool(client.is_model_ready(TRITON_MODEL))
    finally:
        client.close()


def _config(repository: Path) -> model_config_pb2.ModelConfig:
    text = (repository / TRITON_MODEL / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _load(server: TritonServer, config: model_config_pb2.ModelConfig) -> None:
    """(Re)load ``headct_molre_cpu`` with ``config`` through the repository API and wait until
    it is ready. (Loading without a config after an override would keep the override: the files
    did not change.)"""
    client = _control(server)
    try:
        client.load_model(TRITON_MODEL, config=json_format.MessageToJson(config))
    finally:
        client.close()
    _wait_until(lambda: _triton_model_ready(server))


@contextmanager
def reconfigured(
    server: TritonServer, repository: Path, edit: Callable[[model_config_pb2.ModelConfig], None]
) -> Iterator[None]:
    """``headct_molre_cpu`` (re)loaded with an edited config (the repository API's override; the
    files are untouched), and with its own config again on exit."""
    config = _config(repository)
    edit(config)
    try:
        _load(server, config)
        yield
    finally:
        _load(server, _config(repository))


@contextmanager
def paused(server: TritonServer) -> Iterator[None]:
    """The server and its python stub stopped (a hung Triton), continued on exit."""
    os.killpg(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(server.process.pid, signal.SIGCONT)


def _problem(response: Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


def _probabilities(body: dict[str, Any]) -> np.ndarray:
    return np.array([f["probability"] for f in body["findings"]])


def test_triton_and_embedded_gateways_give_the_same_result(
    make_triton_client: Callable[..., TestClient],
    embedded_client: TestClient,
    triton: TritonServer,
    exported_model: ExportResult,
    study: list[Path],
) -> None:
    via_triton = make_triton_client()
    card = exported_model.card
    ref = {"name": card.name, "version": card.version}
    for client, kind in ((via_triton, "triton"), (embedded_client, "onnx")):
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["backend"] == kind and ready.json()["model"] == ref
    # The card from the Triton config parameter is the card beside the ONNX file.
    assert via_triton.get("/v1/model").json() == embedded_client.get("/v1/model").json()
    assert via_triton.get("/v1/model").json()["name"] == card.name

    before = _inference_count(triton)
    parts = multipart_files(study)
    response = via_triton.post("/v1/triage", files=parts)
    assert response.status_code == 200, f"{response.text}\n{triton.log_tail()}"
    assert _inference_count(triton) == before + 1  # it really ran on Triton
    expected = embedded_client.post("/v1/triage", files=parts)
    assert expected.status_code == 200, expected.text
    got, want = response.json(), expected.json()

    assert got["model"] == want["model"] == ref
    assert (got["study_uid"], got["series_uid"]) == (want["study_uid"], want["series_uid"])
    np.testing.assert_allclose(_probabilities(got), _probabilities(want), atol=TOLERANCE, rtol=0)
    assert [f["code"] for f in got["findings"]] == [f["code"] for f in want["findings"]]
    assert [f["positive"] for f in got["findings"]] == [f["positive"] for f in want["findings"]]
    assert got["triage"] == want["triage"]
    assert got["router"]["experts"] == want["router"]["experts"] == card.adapter.experts
    for key in ("study_weights", "slice_weights"):
        np.testing.assert_allclose(
            got["router"][key], want["router"][key], atol=TOLERANCE, rtol=0, err_msg=key
        )
    np.testing.assert_allclose(
        got["slices"]["attention"], want["slices"]["attention"], atol=TOLERANCE, rtol=0
    )
    assert got["slices"]["key_slice"] == want["slices"]["key_slice"]
    assert got["slices"]["count"] == card.grid.depth
    # a study that differs gives a result that differs: the comparison is not vacuous
    assert np.ptp(_probabilities(got)) > 1e-3


def test_readiness_and_card_follow_the_triton_model(
    make_triton_client: Callable[..., TestClient],
    triton: TritonServer,
    exported_repository: Path,
    exported_model: ExportResult,
    study: list[Path],
) -> None:
    client = make_triton_client()
    card = exported_model.card
    assert client.get("/readyz").status_code == 200

    # Unloaded: not ready, and studies are refused with 503.
    control = _control(triton)
    try:
        control.unload_model(TRITON_MODEL)
    finally:
        control.close()
    try:
        _wait_until(lambda: not _triton_model_ready(triton))
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert ready.json()["ready"] is False and ready.json()["backend"] == "triton"
        refused = client.post("/v1/triage", files=multipart_files(study))
        _problem(refused, 503, "backend_unavailable")
        assert refused.headers["retry-after"]
    except BaseException:
        _load(triton, _config(exported_repository))
        raise

    # Loaded again with another card (a new version): the gateway serves the new card.
    newer = card.model_copy(update={"version": card.version + 1})

    def new_card(config: model_config_pb2.ModelConfig) -> None:
        config.parameters[CARD_METADATA_KEY].string_value = newer.to_json()

    with reconfigured(triton, exported_repository, new_card):
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["model"]["version"] == newer.version
        assert client.get("/v1/model").json()["version"] == newer.version
        response = client.post("/v1/triage", files=multipart_files(study))
        assert response.status_code == 200, response.text
        assert response.json()["model"]["version"] == newer.version
    assert client.get("/readyz").json()["model"]["version"] == card.version


def test_a_tiny_inference_timeout_gives_504(
    make_triton_client: Callable[..., TestClient], study: list[Path]
) -> None:
    # Triton cannot run the model in 0.1 ms (nor, mostly, answer the card or a readiness check
    # in that time): the gateway still starts, and answers 504 rather than crashing or 500.
    client = make_triton_client(inference_timeout_s=1e-4)
    assert client.get("/healthz").status_code == 200
    _problem(client.post("/v1/triage", files=multipart_files(study)), 504, "backend_timeout")


def test_a_hung_triton_gives_504_and_the_gateway_keeps_answering(
    make_triton_client: Callable[..., TestClient], triton: TritonServer, study: list[Path]
) -> None:
    client = make_triton_client(inference_timeout_s=1.0)
    assert client.get("/readyz").status_code == 200  # the card is read while Triton answers
    parts = multipart_files(study)
    with paused(triton):
        started = time.monotonic()
        _problem(client.post("/v1/triage", files=parts), 504, "backend_timeout")
        assert time.monotonic() - started < 10
        assert client.get("/readyz").status_code == 503
        # A gateway that starts now cannot read the card: it starts unready, and its first
        # request waits for the card off the event loop, so probes still answer at once.
        late = make_triton_client(inference_timeout_s=1.0)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(late.post, "/v1/triage", files=parts)
            time.sleep(0.2)
            asked = time.monotonic()
            assert late.get("/healthz").status_code == 200
            assert time.monotonic() - asked < 0.5
            _problem(pending.result(timeout=30), 504, "backend_timeout")
    _wait_until(lambda: late.get("/readyz").status_code == 200)
    assert late.post("/v1/triage", files=parts).status_code == 200
    assert client.post("/v1/triage", files=parts).status_code == 200


def test_triton_rejecting_an_expired_request_gives_504(
    make_triton_client: Callable[..., TestClient],
    triton: TritonServer,
    exported_repository: Path,
    study: list[Path],
) -> None:
    """Triton's queue policy rejects a request that waited too long ('Request timeout expired'):
    the backend was too slow, not down."""

    def expire_at_once(config: model_config_pb2.ModelConfig) -> None:
        config.dynamic_batching.default_queue_policy.default_timeout_microseconds = 1

    client = make_triton_client()
    with reconfigured(triton, exported_repository, expire_at_once):
        assert client.get("/readyz").status_code == 200
        _problem(client.post("/v1/triage", files=multipart_files(study)), 504, "backend_timeout")


def test_triton_dying_under_a_request_gives_503(
    make_triton_client: Callable[..., TestClient],
    exported_repository: Path,
    study: list[Path],
    tmp_path: Path,
) -> None:
    """A server of its own, killed (SIGKILL) while the gateway waits on it: the connection closes
    under the request; then it refuses connections. Both are 503, never 500."""
    with triton_server(exported_repository, [TRITON_MODEL], log_dir=tmp_path) as doomed:
        client = make_triton_client(url=doomed.http_url)
        assert client.get("/readyz").status_code == 200
        parts = multipart_files(study)
        os.killpg(doomed.process.pid, signal.SIGSTOP)
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.post, "/v1/triage", files=parts)
            time.sleep(0.5)  # upload and ingest done: the request waits on Triton
            os.killpg(doomed.process.pid, signal.SIGKILL)
            doomed.process.wait(timeout=10)
            _problem(pending.result(timeout=30), 503, "backend_unavailable")
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 503
    _problem(client.post("/v1/triage", files=parts), 503, "backend_unavailable")


def _connections(server: TritonServer) -> set[tuple[str, int]]:
    """This process's established connections to the server's HTTP port (by local address)."""
    return {
        (c.laddr.ip, c.laddr.port)
        for c in psutil.Process().net_connections("tcp")
        if c.raddr and c.raddr.port == server.http_port and c.status == psutil.CONN_ESTABLISHED
    }


def test_closing_the_backend_closes_the_connections_of_every_thread(triton: TritonServer) -> None:
    """Each worker thread has its own client; closing the backend (the gateway's shutdown, on
    another thread) closes them all, so no connection outlives the gateway."""
    from service.backends.triton import TritonBackend

    backend = TritonBackend(triton.http_url, TRITON_MODEL)
    before = _connections(triton)
    release = threading.Event()
    done = threading.Barrier(4)

    def worker() -> None:
        assert backend.ready()
        done.wait(10)
        release.wait(10)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        done.wait(10)
        opened = _connections(triton) - before
        assert len(opened) == 3
        backend.close()
        _wait_until(lambda: not opened & _connections(triton), timeout_s=5)
        assert backend.ready() is False
    finally:
        release.set()
        for thread in threads:
            thread.join()
