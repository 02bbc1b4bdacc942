"""A client that leaves stops its study's work, against a real ``headct serve`` process.

The request is sent whole over a raw socket, which is closed while the server reads the study;
the server must log the request as 499 ``client_disconnected`` (not a 500), stop reading (the
request ends well before a full triage of the same study would), release its slot and spool, and
answer the next client at once.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from testing.gateway_process import GatewayProcess, gateway_process
from testing.onnx_fixture import FixtureModel
from testing.studies import multipart_files, write_synthetic_study, zip_bytes

ROOT = Path(__file__).resolve().parents[2]
# Many small files: ingest checks for cancellation before each one, and reading them takes
# seconds, so a disconnect lands mid-read.
SLICES = 500


@pytest.fixture(scope="module")
def long_study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("long") / "study"
    return write_synthetic_study(folder, seed=5, slices=SLICES, matrix=64)


@pytest.fixture(scope="module")
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("spool")


@pytest.fixture(scope="module")
def server(
    fixture_model: FixtureModel, spool: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    env = {
        **os.environ,
        "HEADCT_ONNX_INTRA_OP_THREADS": "1",
        "HEADCT_LOG_JSON": "true",
        "HEADCT_UPLOAD_DIR": str(spool),
        "HEADCT_SPOOL_MEMORY_BYTES": "0",  # every upload on disk, so the cleanup shows
        "HEADCT_MAX_CONCURRENT_JOBS": "1",  # a study still running would hold the only slot
        "HEADCT_MAX_QUEUED_JOBS": "0",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "service.cli", "serve"]
    command += ["--model-repository", str(fixture_model.repository)]
    log = tmp_path_factory.mktemp("server") / "stderr.log"
    with gateway_process(command, log=log, env=env, cwd=ROOT) as server:
        yield server


def _request_records(server: GatewayProcess, request_id: str) -> list[dict[str, Any]]:
    records = [json.loads(line) for line in server.log.read_text().splitlines() if line.strip()]
    return [r for r in records if r.get("request_id") == request_id]


def _wait_for_record(server: GatewayProcess, request_id: str, timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for record in _request_records(server, request_id):
            if record["message"] in ("request", "request cancelled"):  # the access line
                return record
        time.sleep(0.05)
    raise AssertionError(f"no request record for {request_id}:\n{server.log.read_text()[-3000:]}")


def test_a_client_that_leaves_stops_its_study(
    server: GatewayProcess, long_study: list[Path], study: list[Path], spool: Path
) -> None:
    body = zip_bytes(long_study)
    # The same study triaged whole: how long its work takes on this machine, now.
    whole = httpx2.post(
        server.url + "/v1/triage",
        content=body,
        headers={"Content-Type": "application/zip", "X-Request-ID": "whole-1"},
        timeout=120,
    )
    assert whole.status_code == 200, whole.text
    full_ms = _wait_for_record(server, "whole-1", 10)["duration_ms"]

    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/triage HTTP/1.1\r\nHost: x\r\nContent-Type: application/zip\r\n"
            b"X-Request-ID: leaver-1\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        time.sleep(min(0.3, full_ms / 1e3 / 6))  # the server is reading the study now
    record = _wait_for_record(server, "leaver-1", 60)

    assert record["status"] == 499, record
    assert record["message"] == "request"  # an ordinary end, not a server-side cancellation
    # Work stopped mid-read instead of running the study to its end for no one.
    assert record["duration_ms"] < 0.6 * full_ms, (record, full_ms)
    records = _request_records(server, "leaver-1")
    assert not any(r.get("level") == "ERROR" for r in records), records
    assert any(r.get("code") == "client_disconnected" for r in records), records

    # The only slot and the spool are free again: the next client is served, not refused 429.
    after = httpx2.post(server.url + "/v1/triage", files=multipart_files(study), timeout=60)
    assert after.status_code == 200, after.text
    metrics = httpx2.get(server.url + "/metrics").text
    assert "headct_inflight_requests 0.0" in metrics
    assert 'headct_requests_total{route="/v1/triage",status="499"} 1.0' in metrics
    assert list(spool.iterdir()) == []
