"""The gateway's two images, built from docker/gateway.Dockerfile and run as a user runs them.

``embedded``: read-only root file system, ``/tmp`` on a tmpfs, the image's non-root user, the
port published on loopback; ready, the same triage as in-process, problem+json for bad input, the
image's HEALTHCHECK passing, and a clean exit on SIGTERM within the compose file's grace period.

``runtime`` with ``HEADCT_BACKEND=triton``: against the Triton server of the nvidia-pytriton
wheel started on the host (``testing/triton_local.py``) serving ``headct_molre_cpu``, the CPU
python-backend model over the repository's ONNX file. The container shares the host's network:
that Triton listens on loopback only.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
import tritonclient.http as triton_http

from testing.studies import multipart_files
from testing.triton_local import triton_server
from tests.images.conftest import MODEL_REPOSITORY, assert_same_triage
from tests.images.podman import Container, Podman, free_port

USER = "10001:10001"  # the Dockerfile's USER, and the Kubernetes manifests' runAsUser
TRITON_MODEL = "headct_molre_cpu"
# A user's `docker run` of the embedded image, as the compose file runs it (read_only, tmpfs).
READ_ONLY = ["--read-only", "--tmpfs", "/tmp:size=1g,mode=1777"]
# 450 MB until the PACS and viewer work (issues 12 and 15) added highdicom (27 MB), Pillow
# (23 MB), SQLAlchemy, pynetdicom and dicomweb-client: 500 MB measured before SQLAlchemy.
EMBEDDED_SIZE_BUDGET = 560 * 10**6


@dataclass(frozen=True)
class Gateway:
    container: Container
    url: str
    port: int


@contextmanager
def published(podman: Podman, image: str) -> Iterator[Gateway]:
    """The image run read-only with its port published on loopback, once it is ready."""
    port = free_port()
    run_args = [*READ_ONLY, "--publish", f"127.0.0.1:{port}:8080"]
    with podman.container(image, run_args) as container:
        url = f"http://127.0.0.1:{port}"
        container.wait_ready(url + "/readyz")
        yield Gateway(container, url, port)


@pytest.fixture(scope="module")
def embedded(podman: Podman, embedded_image: str) -> Iterator[Gateway]:
    with published(podman, embedded_image) as gateway:
        yield gateway


def test_embedded_runs_read_only_as_the_non_root_user(podman: Podman, embedded: Gateway) -> None:
    config = podman.inspect(embedded.container.name)
    assert config["HostConfig"]["ReadonlyRootfs"] is True
    assert config["Config"]["User"] == USER
    assert config["NetworkSettings"]["Ports"]["8080/tcp"] == [
        {"HostIp": "127.0.0.1", "HostPort": str(embedded.port)}
    ]
    server = podman("top", embedded.container.name, "user", "args").stdout
    assert "headct serve" in server and "root" not in server, server
    assert embedded.container.exec("id", "-u").stdout.strip() == USER.split(":")[0]
    refused = embedded.container.exec("touch", "/opt/headct/model_repository/x")
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr
    assert embedded.container.exec("touch", "/tmp/spool-check").returncode == 0


def test_embedded_is_ready_and_triages_as_in_process(
    embedded: Gateway, study: list[Path], in_process_result: dict[str, Any]
) -> None:
    ready = httpx2.get(embedded.url + "/readyz", timeout=10).json()
    assert ready["backend"] == "onnx"
    assert ready["model"] == in_process_result["model"]
    response = httpx2.post(embedded.url + "/v1/triage", files=multipart_files(study), timeout=120)
    assert response.status_code == 200, response.text
    assert_same_triage(response.json(), in_process_result)
    # the viewer ships in the image: its page, and the study's slices
    assert httpx2.get(embedded.url + "/viewer/", timeout=10).status_code == 200
    uid = response.json()["study_uid"]
    sheet = httpx2.get(f"{embedded.url}/v1/studies/{uid}/slices/bone.png", timeout=30)
    assert sheet.status_code == 200 and sheet.headers["content-type"] == "image/png"


def test_embedded_answers_bad_input_with_problem_json(embedded: Gateway) -> None:
    files = [("files", ("a.dcm", b"hello, world" * 50, "application/dicom"))]
    response = httpx2.post(embedded.url + "/v1/triage", files=files, timeout=30)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["code"] == "not_dicom" and problem["status"] == 400 and problem["detail"]


def test_embedded_healthcheck_passes(podman: Podman, embedded: Gateway) -> None:
    healthcheck = podman.inspect(embedded.container.name)["Config"]["Healthcheck"]
    assert any("/healthz" in word for word in healthcheck["Test"])
    result = podman("healthcheck", "run", embedded.container.name, check=False)
    assert result.returncode == 0, f"{result.stdout}{result.stderr}\n{embedded.container.logs()}"


def test_embedded_stops_cleanly_on_sigterm_within_the_grace_period(
    podman: Podman, embedded_image: str, compose_services: dict[str, Any]
) -> None:
    grace_s = float(compose_services["gateway-cpu"]["stop_grace_period"].removesuffix("s"))
    with published(podman, embedded_image) as gateway:
        before = time.monotonic()
        # podman stop sends the image's stop signal (SIGTERM), and SIGKILL after the timeout.
        podman("stop", "--time", f"{grace_s:g}", gateway.container.name, timeout=grace_s + 30)
        took = time.monotonic() - before
        state = gateway.container.state()
        assert state["Status"] == "exited"
        assert state["ExitCode"] == 0, gateway.container.logs()
        assert took < grace_s, f"stopped after {took:.1f} s: SIGKILLed, not a clean stop"


def test_embedded_image_size_within_budget(podman: Podman, embedded_image: str) -> None:
    size = podman.image_size(embedded_image)
    assert size <= EMBEDDED_SIZE_BUDGET, f"{embedded_image}: {size / 1e6:.0f} MB"


def _inference_count(url: str) -> int:
    client = triton_http.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(TRITON_MODEL)["model_stats"]
        return sum(int(s["inference_count"]) for s in stats)
    finally:
        client.close()


def test_runtime_on_the_host_triton_is_ready_and_triages_as_in_process(
    podman: Podman,
    runtime_image: str,
    study: list[Path],
    in_process_result: dict[str, Any],
    tmp_path: Path,
) -> None:
    with triton_server(
        MODEL_REPOSITORY, [TRITON_MODEL], startup_timeout_s=180, log_dir=tmp_path
    ) as triton:
        port = free_port()
        run_args = [
            *READ_ONLY,
            "--network=host",
            "--env=HEADCT_BACKEND=triton",
            f"--env=HEADCT_TRITON_URL={triton.http_url}",
            f"--env=HEADCT_MODEL_NAME={TRITON_MODEL}",
        ]
        command = ["headct", "serve", "--host", "127.0.0.1", "--port", str(port)]
        with podman.container(runtime_image, run_args, command) as container:
            url = f"http://127.0.0.1:{port}"
            ready = container.wait_ready(url + "/readyz").json()
            assert ready["backend"] == "triton"
            assert ready["model"] == in_process_result["model"]
            before = _inference_count(triton.http_url)
            response = httpx2.post(url + "/v1/triage", files=multipart_files(study), timeout=120)
            assert response.status_code == 200, f"{response.text}\n{triton.log_tail()}"
            assert _inference_count(triton.http_url) == before + 1  # it ran on Triton
            assert_same_triage(response.json(), in_process_result)
