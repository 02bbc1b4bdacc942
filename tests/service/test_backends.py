"""Settings, model loading (versions, card sources, contract checks), upload name checks, and the
Triton backend's protocol handling against a stand-in client."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.app import create_app
from service.backends.onnx import OnnxBackend
from service.backends.triton import TritonBackend
from service.errors import BackendUnavailableError, ModelContractError
from service.model_card import CARD_FILENAME, CARD_METADATA_KEY
from service.settings import BackendKind, Settings
from service.uploads import unsafe_entry_name
from testing.onnx_fixture import (
    FixtureModel,
    build_graph,
    fixture_card,
    write_fixture_repository,
)
from testing.studies import multipart_files


def test_settings_from_environment(
    monkeypatch: pytest.MonkeyPatch, fixture_model: FixtureModel
) -> None:
    monkeypatch.setenv("HEADCT_MODEL_REPOSITORY", str(fixture_model.repository))
    monkeypatch.setenv("HEADCT_API_KEYS", " one, two ,,")
    monkeypatch.setenv("HEADCT_LOG_LEVEL", "debug")
    monkeypatch.setenv("HEADCT_MAX_QUEUED_JOBS", "3")
    settings = Settings()
    assert settings.api_keys == ("one", "two")
    assert settings.log_level.value == "DEBUG"
    assert settings.max_queued_jobs == 3
    assert settings.backend is BackendKind.ONNX


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("HEADCT_BACKEND", "tensorflow", "backend"),
        ("HEADCT_MODEL_REPOSITORY", "/nonexistent/repo", "HEADCT_MODEL_REPOSITORY"),
        ("HEADCT_MAX_CONCURRENT_JOBS", "0", "max_concurrent_jobs"),
        ("HEADCT_TRITON_URL", "http://host:8000/v2/models", "HEADCT_TRITON_URL"),
        ("HEADCT_MAX_ZIP_RATIO", "1", "max_zip_ratio"),
    ],
)
def test_bad_settings_fail_with_the_variable_named(
    monkeypatch: pytest.MonkeyPatch,
    fixture_model: FixtureModel,
    variable: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv("HEADCT_MODEL_REPOSITORY", str(fixture_model.repository))
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_newest_numeric_version_is_loaded(tmp_path: Path) -> None:
    for version in (2, 10, 9):
        write_fixture_repository(tmp_path, version=version)
    (tmp_path / "headct_molre" / "latest").mkdir()
    (tmp_path / "headct_molre" / "11").mkdir()  # no model.onnx: skipped
    backend = OnnxBackend(tmp_path / "headct_molre")
    assert backend.card.version == 10
    assert backend.path.parent.name == "10"
    assert OnnxBackend(tmp_path / "headct_molre", version=2).card.version == 2


def test_card_falls_back_to_onnx_metadata(tmp_path: Path) -> None:
    model = write_fixture_repository(tmp_path, card_file=False)
    assert not (model.model_path.parent / CARD_FILENAME).exists()
    backend = OnnxBackend(tmp_path / "headct_molre")
    assert backend.card == model.card
    assert CARD_METADATA_KEY in backend._session.get_modelmeta().custom_metadata_map


def test_a_card_that_disagrees_with_the_graph_is_refused(tmp_path: Path) -> None:
    model = write_fixture_repository(tmp_path)
    wrong = fixture_card(depth=16, height=64, width=64, experts=4)
    (model.model_path.parent / CARD_FILENAME).write_text(wrong.to_json())
    with pytest.raises(ModelContractError, match="CT_VOLUME has shape"):
        OnnxBackend(tmp_path / "headct_molre")


def test_missing_model_stops_start_up_with_a_clear_message(tmp_path: Path) -> None:
    app = create_app(Settings(model_repository=tmp_path), configure_logs=False)
    with pytest.raises(BackendUnavailableError, match="no model folder"), TestClient(app):
        pass


def test_outputs_that_disagree_with_the_card_are_refused_at_load(tmp_path: Path) -> None:
    model = write_fixture_repository(tmp_path)
    graph = build_graph(fixture_card(depth=8, height=64, width=64, experts=3))
    onnx.save(graph, model.model_path)  # card file still says 4 experts
    with pytest.raises(ModelContractError, match="ROUTER_WEIGHTS has shape"):
        OnnxBackend(tmp_path / "headct_molre")


@pytest.mark.parametrize(
    ("name", "unsafe"),
    [
        ("study/0001.dcm", False),
        ("a/b/c.dcm", False),
        ("..hidden.dcm", False),
        ("../evil.dcm", True),
        ("study/../../evil.dcm", True),
        ("/etc/passwd", True),
        ("C:\\Windows\\evil.dcm", True),
        ("study\\..\\evil.dcm", True),
    ],
)
def test_unsafe_zip_entry_names(name: str, unsafe: bool) -> None:
    assert unsafe_entry_name(name) is unsafe


class _FakeResult:
    def __init__(self, outputs: dict[str, np.ndarray]) -> None:
        self.outputs = outputs

    def as_numpy(self, name: str) -> np.ndarray | None:
        return self.outputs.get(name)


class _FakeTritonClient:
    """Stands in for tritonclient.http.InferenceServerClient: the same calls, answered from the
    embedded model, so the Triton backend's wiring is checked without a server."""

    def __init__(self, model: FixtureModel, ready: bool = True) -> None:
        self.embedded = OnnxBackend(model.repository / "headct_molre")
        self.card = model.card
        self.is_ready = ready
        self.sent: list[Any] = []

    def is_model_ready(self, name: str, version: str = "") -> bool:
        return self.is_ready

    def get_model_config(self, name: str, version: str = "") -> dict[str, Any]:
        return {"parameters": {CARD_METADATA_KEY: {"string_value": self.card.to_json()}}}

    def infer(self, name: str, inputs: list[Any], **kwargs: Any) -> _FakeResult:
        from tritonclient.utils import InferenceServerException

        if not self.is_ready:
            raise InferenceServerException("model not ready")
        (tensor,) = inputs
        self.sent.append(tensor)
        assert tensor.name() == "CT_VOLUME" and tensor.datatype() == "INT16"
        volumes = np.frombuffer(tensor._get_binary_data(), dtype=np.int16)
        outputs = self.embedded.infer(volumes.reshape(tensor.shape()))
        return _FakeResult(
            {
                "PROBABILITIES": outputs.probabilities,
                "ROUTER_WEIGHTS": outputs.router_weights,
                "SLICE_ROUTER_WEIGHTS": outputs.slice_router_weights,
                "SLICE_ATTENTION": outputs.slice_attention,
                "SLICE_EVIDENCE": outputs.slice_evidence,
            }
        )

    def close(self) -> None:
        pass


def test_triton_backend_wiring(fixture_model: FixtureModel) -> None:
    backend = TritonBackend("http://triton:8000", "headct_molre")
    fake = _FakeTritonClient(fixture_model)
    backend._local.client = fake
    assert backend.ready()
    assert backend.card == fixture_model.card
    volumes = np.random.default_rng(0).integers(-1024, 2000, (1, 8, 64, 64)).astype(np.int16)
    outputs = backend.infer(volumes)
    np.testing.assert_array_equal(outputs.probabilities, fake.embedded.infer(volumes).probabilities)
    fake.is_ready = False
    assert not backend.ready()
    with pytest.raises(BackendUnavailableError, match="model not ready"):
        backend.infer(volumes)


def test_triton_backend_down_means_not_ready(
    fixture_model: FixtureModel, study: list[Path], tmp_path: Path
) -> None:
    """A real tritonclient against a closed port: the gateway starts, is not ready, answers 503."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = Settings(
        backend=BackendKind.TRITON, triton_url=f"127.0.0.1:{port}", upload_dir=tmp_path
    )
    with TestClient(create_app(settings, configure_logs=False)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["backend"] == "triton"
        response = client.post("/v1/triage", files=multipart_files(study))
        assert response.status_code == 503
        assert response.json()["code"] == "backend_unavailable"
        assert client.get("/v1/model").status_code == 503
    assert list(tmp_path.iterdir()) == []
