"""A real ``headct serve`` (uvicorn) subprocess on a free port, and the ``headct triage`` CLI."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import numpy as np
import pytest
from typer.testing import CliRunner

from service.cli import app as cli
from testing.gateway_process import GatewayProcess, gateway_process
from testing.onnx_fixture import FixtureModel
from testing.studies import multipart_files
from tests.service.conftest import PATIENT

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def server(
    fixture_model: FixtureModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    env = {
        **os.environ,
        "HEADCT_ONNX_INTRA_OP_THREADS": "1",
        "HEADCT_LOG_LEVEL": "DEBUG",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "service.cli", "serve"]
    command += ["--model-repository", str(fixture_model.repository)]
    log = tmp_path_factory.mktemp("server") / "stderr.log"
    with gateway_process(command, log=log, env=env, cwd=ROOT) as server:
        yield server


def test_real_server_triage_and_logs(
    server: GatewayProcess, phi_study: list[Path], study: list[Path], fixture_model: FixtureModel
) -> None:
    response = httpx2.post(
        server.url + "/v1/triage",
        files=multipart_files(phi_study),
        headers={"X-Request-ID": "uvicorn-1"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "uvicorn-1"
    in_process = CliRunner().invoke(
        cli,
        [
            "triage",
            str(study[0].parent),
            "--json",
            "--model-repository",
            str(fixture_model.repository),
        ],
    )
    assert in_process.exit_code == 0, in_process.output
    expected = json.loads(in_process.stdout)
    np.testing.assert_allclose(
        [f["probability"] for f in response.json()["findings"]],
        [f["probability"] for f in expected["findings"]],
        atol=1e-6,
    )
    metrics = httpx2.get(server.url + "/metrics").text
    assert 'headct_requests_total{route="/v1/triage",status="200"} 1.0' in metrics

    time.sleep(0.2)  # let the access line reach the file
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.strip()]
    assert any(e.get("request_id") == "uvicorn-1" and e["message"] == "request" for e in lines)
    text = server.log.read_text()
    for secret in (PATIENT.name, PATIENT.patient_id, PATIENT.birth_date):
        assert secret not in text and secret not in metrics


def test_cli_triage_against_the_server(server: GatewayProcess, study: list[Path]) -> None:
    result = CliRunner().invoke(
        cli, ["triage", str(study[0].parent), "--url", server.url, "--json"]
    )
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert len(body["findings"]) == 75
    table = CliRunner().invoke(cli, ["triage", str(study[0].parent), "--url", server.url])
    assert table.exit_code == 0, table.output
    assert "Priority:" in table.stdout
    assert "Not a medical device" in table.stdout.replace("\n", " ")


def test_cli_triage_reports_a_problem(
    server: GatewayProcess, study: list[Path], fixture_model: FixtureModel
) -> None:
    remote = CliRunner().invoke(cli, ["triage", str(study[0]), "--url", server.url])
    assert remote.exit_code == 2
    assert json.loads(remote.stdout)["error"]["code"] == "too_few_slices"
    local = CliRunner().invoke(
        cli, ["triage", str(study[0]), "--model-repository", str(fixture_model.repository)]
    )
    assert local.exit_code == 2
    assert json.loads(local.stdout)["error"]["code"] == "too_few_slices"


def test_serve_refuses_bad_settings(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["serve", "--model-repository", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert "HEADCT_MODEL_REPOSITORY" in result.output


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /v1/triage HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/triage HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"\x16\x03\x01 garbage \xff\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n",
    ],
    ids=["negative-length", "length-and-chunked", "garbage-line", "two-lengths"],
)
def test_malformed_framing_gets_problem_json_from_the_real_server(
    server: GatewayProcess, request_bytes: bytes
) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request_bytes)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert b"content-type: application/problem+json" in head.lower()
    problem = json.loads(body)
    assert problem["code"] == "malformed_http"
    assert problem["status"] == 400


@pytest.mark.parametrize("protocol", ["h11", "httptools"])
def test_each_http_implementation_answers_bad_framing_with_problem_json(protocol: str) -> None:
    """Both of uvicorn's HTTP implementations (``headct serve`` picks httptools when installed,
    h11 otherwise) answer framing errors with problem+json; a real uvicorn server on a socket."""
    import threading

    import uvicorn

    from service.api import framing

    classes = {"h11": framing.ProblemH11Protocol, "httptools": framing.HTTP_PROTOCOL}
    cls = classes[protocol]
    assert protocol == "h11" or cls.__name__ == "ProblemHttpToolsProtocol"

    async def app(scope: dict, receive: object, send: object) -> None:  # never reached
        raise AssertionError("a malformed request reached the application")

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, http=cls, lifespan="off", log_level="error"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n")
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert b"content-type: application/problem+json" in head.lower()
    assert json.loads(body)["code"] == "malformed_http"
