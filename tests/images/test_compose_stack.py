"""The real docker-compose.yml, brought up with podman-compose as the README's deploy section says:
the ``cpu`` profile's gateway answers a triage, its DICOM listener answers a C-ECHO on the
published port, Prometheus (its image from Debian's package where no registry is reachable:
docker/build-local-base.sh) scrapes the gateway and loads the alert rules, and ``down`` leaves no
container, network or volume behind.

Grafana is not started: no image of it can be made here (Debian does not package it).
The project runs under its own name, so a stack a developer runs is left alone; the gateway's
and DICOM ports are free ones on loopback (``HEADCT_PORT``, ``HEADCT_DICOM_PORT``), Prometheus's
is the compose file's 9090.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from testing.listener_process import echo
from testing.studies import multipart_files
from tests.images.conftest import assert_same_triage
from tests.images.podman import BUILD_ARGS, REPO_ROOT, Podman, free_port, podman_env

PROJECT = "headct-triage-test"
SERVICES = ["gateway-cpu", "listener-cpu", "prometheus"]
PROMETHEUS = "http://127.0.0.1:9090"
GATEWAY_JOB = "headct-gateway"


@pytest.fixture(scope="module")
def podman_compose(podman: Podman) -> str:
    beside_python = Path(sys.executable).parent / "podman-compose"
    found = str(beside_python) if beside_python.is_file() else shutil.which("podman-compose")
    if found is None:
        pytest.fail(
            "podman-compose is not installed: .venv/bin/pip install -c constraints.txt "
            "-e '.[dev]' (bash .ci/run does this)"
        )
    return found


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _until(what: str, check: Callable[[], bool], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s:g} s"
        time.sleep(1)


def _prometheus(path: str, **params: str) -> Any:
    response = httpx2.get(PROMETHEUS + path, params=params, timeout=10)
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]


def _gateway_target_up() -> bool:
    try:
        targets = _prometheus("/api/v1/targets", state="active")["activeTargets"]
    except httpx2.HTTPError:
        return False
    return any(t["labels"]["job"] == GATEWAY_JOB and t["health"] == "up" for t in targets)


def _project_resources(podman: Podman) -> set[str]:
    """The containers, networks and volumes podman-compose labelled as this project's."""
    label = f"label=io.podman.compose.project={PROJECT}"
    listings = {
        "container": ("ps", "--all", "--format", "{{.Names}}"),
        "network": ("network", "ls", "--format", "{{.Name}}"),
        "volume": ("volume", "ls", "--format", "{{.Name}}"),
    }
    return {
        f"{kind} {name}"
        for kind, listing in listings.items()
        for name in podman(*listing, "--filter", label).stdout.split()
    }


def test_compose_cpu_profile_serves_a_triage_that_prometheus_scrapes_and_down_removes_all(
    podman: Podman,
    podman_compose: str,
    study: list[Path],
    in_process_result: dict[str, Any],
) -> None:
    if _port_in_use(9090):
        pytest.fail("127.0.0.1:9090 (the compose file's Prometheus port) is in use: free it")
    port, dicom_port = free_port(), free_port()
    env = {
        **podman_env(),
        "HEADCT_PORT": f"127.0.0.1:{port}",
        "HEADCT_DICOM_PORT": f"127.0.0.1:{dicom_port}",
    }

    def compose(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
        command = [podman_compose, "--project-name", PROJECT, *args]
        return subprocess.run(
            command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )

    compose("--profile", "cpu", "down", "--volumes", timeout=120)  # an aborted earlier run
    try:
        up = compose(
            f"--podman-build-args={' '.join(BUILD_ARGS)}", "--profile", "cpu", "up", "--detach",
            "--build", *SERVICES,
        )  # fmt: skip
        assert up.returncode == 0, (
            f"podman-compose up:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}\n"
            "(no image registry here? bash docker/build-local-base.sh makes the base images)"
        )
        url = f"http://127.0.0.1:{port}"
        _until("gateway ready", lambda: _ready(url), 120)
        response = httpx2.post(url + "/v1/triage", files=multipart_files(study), timeout=120)
        assert response.status_code == 200, response.text
        assert_same_triage(response.json(), in_process_result)
        _until(
            "the listener answering C-ECHO",
            lambda: echo(dicom_port, called_ae="HEADCT", calling_ae="ECHOSCU"),
            120,
        )

        # Prometheus finds the gateway through the network alias and scrapes its /metrics.
        _until("Prometheus scraping the gateway", _gateway_target_up, 120)
        info = _prometheus("/api/v1/query", query=f'headct_model_info{{job="{GATEWAY_JOB}"}}')
        assert info["result"], "the gateway's metrics are not in Prometheus"
        labels = [(r["metric"]["name"], r["metric"]["backend"]) for r in info["result"]]
        assert labels == [(in_process_result["model"]["name"], "onnx")]
        groups = _prometheus("/api/v1/rules")["groups"]
        assert groups and all(g["rules"] for g in groups), "the alert rules did not load"
        running = _project_resources(podman)
        assert {r.split()[0] for r in running} == {"container", "network", "volume"}, running
    finally:
        down = compose("--profile", "cpu", "down", "--volumes", timeout=300)
    assert down.returncode == 0, down.stderr[-3000:]
    assert _project_resources(podman) == set()


def _ready(url: str) -> bool:
    try:
        return httpx2.get(url + "/readyz", timeout=2).status_code == 200
    except httpx2.HTTPError:
        return False
