"""Gateway fixtures: a real ONNX model in a temporary repository, synthetic studies, and apps."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from service.app import create_app
from service.settings import Settings
from testing.onnx_fixture import FixtureModel, write_fixture_repository
from testing.studies import Patient, write_synthetic_study
from testing.triton_local import TritonServer

if TYPE_CHECKING:
    from training.export import ExportResult

SLICES = 20  # above the default 16-slice minimum
PATIENT = Patient(name="Zqxwv^Phiona", patient_id="PID-93517-QX", birth_date="19011231")
TRITON_MODEL = "headct_molre_cpu"


@pytest.fixture(scope="session")
def fixture_model(tmp_path_factory: pytest.TempPathFactory) -> FixtureModel:
    return write_fixture_repository(tmp_path_factory.mktemp("model_repository"))


@pytest.fixture(scope="session")
def study_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("studies")


@pytest.fixture(scope="session")
def study(study_root: Path) -> list[Path]:
    """A 20-slice 64x64 synthetic study, uncompressed, files in ascending order."""
    return write_synthetic_study(study_root / "plain", seed=0, slices=SLICES)


@pytest.fixture(scope="session")
def other_study(study_root: Path) -> list[Path]:
    return write_synthetic_study(study_root / "other", seed=11, slices=SLICES)


@pytest.fixture(scope="session")
def phi_study(study_root: Path) -> list[Path]:
    """The same anatomy as ``study`` with distinctive patient identifiers in every file."""
    return write_synthetic_study(study_root / "phi", seed=0, slices=SLICES, patient=PATIENT)


@pytest.fixture
def upload_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "uploads"
    folder.mkdir()
    return folder


@pytest.fixture
def make_settings(fixture_model: FixtureModel, upload_dir: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model_repository": fixture_model.repository,
            "upload_dir": upload_dir,
            "spool_memory_bytes": 0,  # every upload goes to disk, so cleanup is tested
            "onnx_intra_op_threads": 1,
            "log_json": True,
        }
        values.update(overrides)
        return Settings(**values)

    return make


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    """Start an app (lifespan included) with setting overrides; stopped after the test."""
    clients: list[TestClient] = []

    def make(app: FastAPI | None = None, **overrides: Any) -> TestClient:
        client = TestClient(app or create_app(make_settings(**overrides), configure_logs=False))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """A real export: a tiny DINOv2 MoLRE (8x64x64 grid, 3 experts, on a saved backbone so the
    export is deterministic) as ``headct_molre`` version 1 and ``headct_molre_cpu`` in a temporary
    repository; the python model runs in the Triton venv. Torch is imported here, not at
    collection, so the other gateway tests do not pay for it."""
    from testing.tiny_run import make_tiny_run
    from testing.triton_local import triton_venv
    from training.export import export_run

    root = tmp_path_factory.mktemp("exported")
    run = make_tiny_run(root / "run")
    return export_run(run, root / "repository", execution_env=str(triton_venv()), parity_studies=1)


@pytest.fixture(scope="session")
def exported_repository(exported_model: ExportResult) -> Path:
    return exported_model.version.folder.parent.parent


@pytest.fixture(scope="session")
def triton(
    exported_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TritonServer]:
    """The real Triton server of the nvidia-pytriton wheel serving ``headct_molre_cpu`` from
    ``exported_repository``, started once. Tests that unload, reconfigure or pause it restore it."""
    from testing.triton_local import triton_server

    log_dir = tmp_path_factory.mktemp("triton")
    with triton_server(exported_repository, [TRITON_MODEL], log_dir=log_dir) as server:
        yield server
