"""Fixtures of the image tests: podman, the gateway images built once per session under the
compose file's names, a synthetic study and its in-process triage (the result every image must
give).

These tests build and run real images, so they need podman (``bash .ci/run`` installs it with
runc, debootstrap and podman-compose, and makes the base images with
``docker/build-local-base.sh`` where no image registry is reachable). A missing podman fails the
tests with that advice; a developer without podman may set ``HEADCT_SKIP_IMAGES=1`` to skip them.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from testing.studies import multipart_files, write_synthetic_study
from tests.images.podman import REPO_ROOT, Podman

OPT_OUT = "HEADCT_SKIP_IMAGES"
MODEL_REPOSITORY = REPO_ROOT / "model_repository"
GATEWAY_DOCKERFILE = "docker/gateway.Dockerfile"
# Probabilities, router and attention weights from onnxruntime in the image against the venv's.
TOLERANCE = 1e-5


@pytest.fixture(scope="session")
def podman() -> Podman:
    if os.environ.get(OPT_OUT) == "1":
        pytest.skip(f"{OPT_OUT}=1: the image tests are skipped")
    binary = shutil.which("podman")
    if binary is None:
        pytest.fail(
            "podman is not installed: run `bash .ci/run` (it installs podman, runc, debootstrap "
            f"and podman-compose), or set {OPT_OUT}=1 to skip the image tests"
        )
    engine = Podman(binary)
    engine("info", timeout=60)
    return engine


@pytest.fixture(scope="session")
def compose_services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())[
        "services"
    ]
    return services


def _gateway_image(podman: Podman, service: dict[str, Any]) -> str:
    """The compose service's image, built from its Dockerfile target as the README says."""
    build = service["build"]
    assert build["dockerfile"] == GATEWAY_DOCKERFILE
    return podman.build(service["image"], build["dockerfile"], target=build["target"])


@pytest.fixture(scope="session")
def embedded_image(podman: Podman, compose_services: dict[str, Any]) -> str:
    return _gateway_image(podman, compose_services["gateway-cpu"])


@pytest.fixture(scope="session")
def runtime_image(podman: Podman, compose_services: dict[str, Any]) -> str:
    return _gateway_image(podman, compose_services["gateway"])


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return write_synthetic_study(tmp_path_factory.mktemp("study"), seed=5, slices=24)


@pytest.fixture(scope="session")
def in_process_result(study: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The study triaged in this process on the repository's model (embedded onnxruntime)."""
    settings = Settings(
        backend="onnx",
        model_repository=MODEL_REPOSITORY,
        upload_dir=tmp_path_factory.mktemp("uploads"),
    )
    with TestClient(create_app(settings, configure_logs=False)) as client:
        response = client.post("/v1/triage", files=multipart_files(study))
    assert response.status_code == 200, response.text
    return response.json()


def assert_same_triage(got: dict[str, Any], want: dict[str, Any]) -> None:
    """Two results for one study agree: model, study, every finding, triage, router, slices."""
    assert got["model"] == want["model"]
    assert (got["study_uid"], got["series_uid"]) == (want["study_uid"], want["series_uid"])
    assert [f["code"] for f in got["findings"]] == [f["code"] for f in want["findings"]]
    np.testing.assert_allclose(
        [f["probability"] for f in got["findings"]],
        [f["probability"] for f in want["findings"]],
        atol=TOLERANCE,
        rtol=0,
    )
    assert [f["positive"] for f in got["findings"]] == [f["positive"] for f in want["findings"]]
    assert got["triage"] == want["triage"]
    for key in ("study_weights", "slice_weights"):
        np.testing.assert_allclose(
            got["router"][key], want["router"][key], atol=TOLERANCE, rtol=0, err_msg=key
        )
    np.testing.assert_allclose(
        got["slices"]["attention"], want["slices"]["attention"], atol=TOLERANCE, rtol=0
    )
    assert got["slices"]["key_slice"] == want["slices"]["key_slice"]
