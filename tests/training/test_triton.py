"""The exported model on a real Triton server: the one bundled in the nvidia-pytriton wheel, python
backend on CPU (``headct_molre_cpu``), over Triton's HTTP protocol with binary INT16 tensors.

Triton's outputs must equal onnxruntime's in-process ones within 1e-5 for single studies, batches
and concurrent requests (which the dynamic batcher joins); malformed requests get clean errors and
the server stays up; and the python model answers every request of a batch on its own.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import types
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from service.backends.triton import TritonBackend
from service.contract import INPUT_DTYPE, INPUT_NAME, output_names
from service.preprocess import ModelGrid
from testing.tiny_run import GRID, make_tiny_run
from testing.triton_local import triton_server
from training.export import export_run, synthetic_volumes
from training.repository import CPU_MODEL_SOURCE

MODEL = "headct_molre_cpu"
NAMES = output_names(slice_head=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("triton")
    # With a slice head: the sixth output (SLICE_SCORES) travels through Triton too. (The
    # gateway's Triton tests serve a model without one: tests/service/conftest.py.)
    run = make_tiny_run(root / "run", slice_head=True)
    # The default EXECUTION_ENV_PATH does not lead to the venv from a temporary repository: the
    # launcher serves an overlay with the venv's absolute path instead.
    result = export_run(run, root / "repository")
    session = ort.InferenceSession(result.version.model, providers=["CPUExecutionProvider"])
    with triton_server(root / "repository", [MODEL], log_dir=root) as server:
        yield server, session, result


def _infer(url: str, volumes: np.ndarray) -> dict[str, np.ndarray]:
    client = triton_http.InferenceServerClient(url)
    try:
        tensor = triton_http.InferInput(INPUT_NAME, list(volumes.shape), "INT16")
        tensor.set_data_from_numpy(volumes, binary_data=True)
        wanted = [triton_http.InferRequestedOutput(n, binary_data=True) for n in NAMES]
        result = client.infer(MODEL, [tensor], outputs=wanted)
        return {name: result.as_numpy(name) for name in NAMES}
    finally:
        client.close()


def _expected(session: ort.InferenceSession, volumes: np.ndarray) -> dict[str, np.ndarray]:
    return dict(zip(NAMES, session.run(list(NAMES), {INPUT_NAME: volumes}), strict=True))


def _assert_same(got: dict[str, np.ndarray], expected: dict[str, np.ndarray], log: str) -> None:
    for name in NAMES:
        assert got[name].shape == expected[name].shape, f"{name}\n{log}"
        np.testing.assert_allclose(got[name], expected[name], atol=1e-5, rtol=0, err_msg=name)


@pytest.mark.parametrize("batch", [1, 3])
def test_triton_matches_onnxruntime(served, batch: int) -> None:
    server, session, _ = served
    volumes = synthetic_volumes(ModelGrid(*GRID), batch, seed=20 + batch)
    _assert_same(_infer(server.http_url, volumes), _expected(session, volumes), server.log_tail())


def _concurrently(url: str, volumes: list[np.ndarray]) -> dict[int, dict[str, np.ndarray]]:
    """Send each volume as its own request, all released at once from their own threads."""
    results: dict[int, dict[str, np.ndarray]] = {}
    start = threading.Barrier(len(volumes))

    def send(i: int) -> None:
        start.wait()
        results[i] = _infer(url, volumes[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(volumes))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    return results


def test_concurrent_requests_are_batched_and_each_gets_its_own_result(served) -> None:
    server, session, _ = served
    client = triton_http.InferenceServerClient(server.http_url)
    volumes = [synthetic_volumes(ModelGrid(*GRID), 1, seed=40 + i) for i in range(4)]
    batched = False
    # Four studies at once: the dynamic batcher joins some of them into one execution. Timing on
    # a busy machine may keep them apart in one round, hardly in three.
    for _ in range(3):
        before = client.get_inference_statistics(MODEL)["model_stats"][0]
        results = _concurrently(server.http_url, volumes)
        assert sorted(results) == list(range(len(volumes))), server.log_tail()
        for i, volume in enumerate(volumes):
            _assert_same(results[i], _expected(session, volume), server.log_tail())
        after = client.get_inference_statistics(MODEL)["model_stats"][0]
        assert after["inference_count"] - before["inference_count"] == len(volumes)
        if after["execution_count"] - before["execution_count"] < len(volumes):
            batched = True
            break
    client.close()
    assert batched, "no two concurrent requests ran as one batch in three rounds"


def test_malformed_requests_get_clean_errors_and_the_server_stays_up(served) -> None:
    server, session, _ = served
    client = triton_http.InferenceServerClient(server.http_url)
    depth, height, width = GRID
    bad = {
        "FP32": np.zeros((1, depth, height, width), np.float32),
        "INT16": np.zeros((1, depth, height // 2, width), np.int16),
    }
    for dtype, volume in bad.items():
        tensor = triton_http.InferInput(INPUT_NAME, list(volume.shape), dtype)
        tensor.set_data_from_numpy(volume, binary_data=True)
        with pytest.raises(InferenceServerException) as error:
            client.infer(MODEL, [tensor])
        message = str(error.value.message())
        assert INPUT_NAME in message or "CT_VOLUME" in message or "shape" in message, message
    client.close()
    assert server.running() and server.ready(), server.log_tail()
    volumes = synthetic_volumes(ModelGrid(*GRID), 1, seed=60)
    _assert_same(_infer(server.http_url, volumes), _expected(session, volumes), server.log_tail())


def test_the_gateway_triton_backend_reads_the_card_and_infers(served) -> None:
    server, session, result = served
    backend = TritonBackend(server.http_url, MODEL)
    try:
        assert backend.ready()
        assert backend.card == result.card
        volumes = synthetic_volumes(ModelGrid(*GRID), 2, seed=70)
        outputs = backend.infer(volumes)
        expected = _expected(session, volumes)
        np.testing.assert_allclose(outputs.probabilities, expected["PROBABILITIES"], atol=1e-5)
        np.testing.assert_allclose(outputs.slice_attention, expected["SLICE_ATTENTION"], atol=1e-5)
        assert backend.card.adapter.slice_head and outputs.slice_scores is not None
        np.testing.assert_allclose(outputs.slice_scores, expected["SLICE_SCORES"], atol=1e-5)
    finally:
        backend.close()


# The python model without a server: a stand-in for triton_python_backend_utils.


class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _Request:
    def __init__(self, *tensors: _Tensor) -> None:
        self._tensors = tensors

    def inputs(self) -> tuple[_Tensor, ...]:
        return self._tensors


class _Response:
    def __init__(self, output_tensors=(), error=None) -> None:
        self.outputs = {t.name(): t.as_numpy() for t in output_tensors}
        self.error = error


def _fake_backend_utils() -> types.ModuleType:
    module = types.ModuleType("triton_python_backend_utils")
    module.Tensor = _Tensor
    module.InferenceResponse = _Response
    module.TritonError = type("TritonError", (Exception,), {})
    module.TritonModelException = type("TritonModelException", (Exception,), {})
    module.Logger = types.SimpleNamespace(
        log_info=lambda m: None, log_warn=lambda m: None, log_error=lambda m: None
    )
    module.triton_string_to_numpy = lambda t: {"TYPE_FP32": np.float32}[t]

    def get_input_tensor_by_name(request: _Request, name: str) -> _Tensor | None:
        return next((t for t in request.inputs() if t.name() == name), None)

    module.get_input_tensor_by_name = get_input_tensor_by_name
    return module


@pytest.fixture()
def python_model_module(monkeypatch) -> types.ModuleType:
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_backend_utils())
    spec = importlib.util.spec_from_file_location("headct_molre_cpu_model", CPU_MODEL_SOURCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_python_model_spells_the_contracts_input(python_model_module) -> None:
    """Triton loads the python model alone, so it keeps its own copy of the input's contract."""
    assert python_model_module.INPUT_NAME == INPUT_NAME
    assert np.dtype(python_model_module.INPUT_DTYPE) == INPUT_DTYPE


@pytest.fixture()
def python_model(served, python_model_module):
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    _, _, result = served
    module = python_model_module
    config = text_format.Parse(
        result.version.cpu_config.read_text(), model_config_pb2.ModelConfig()
    )
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_config": json_format.MessageToJson(config, preserving_proto_field_name=True),
            "model_repository": str(Path(result.version.cpu_config).parent),
            "model_name": MODEL,
            "model_instance_name": f"{MODEL}_0",
        }
    )
    return model


def test_python_model_answers_each_request_of_a_batch_on_its_own(served, python_model) -> None:
    _, session, _ = served
    good = [synthetic_volumes(ModelGrid(*GRID), n, seed=80 + n) for n in (1, 2)]
    requests = [
        _Request(_Tensor(INPUT_NAME, good[0])),
        _Request(_Tensor(INPUT_NAME, good[0][:, :4])),  # wrong depth
        _Request(),  # no input
        _Request(_Tensor(INPUT_NAME, good[1].astype(np.float32))),  # wrong type
        _Request(_Tensor(INPUT_NAME, good[1])),
    ]
    responses = python_model.execute(requests)
    assert len(responses) == len(requests)
    assert [r.error is None for r in responses] == [True, False, False, False, True]
    assert "shape" in str(responses[1].error) and "INT16" in str(responses[3].error)
    for response, volume in zip((responses[0], responses[4]), good, strict=True):
        expected = _expected(session, volume)
        for name in NAMES:
            np.testing.assert_allclose(response.outputs[name], expected[name], atol=1e-6)

    # A joint batch that fails is retried request by request: only the failing one errs.
    real_run = python_model.session.run

    def run(names, feeds):
        if (feeds[INPUT_NAME] == 1234).any():
            raise RuntimeError("poisoned study")
        return real_run(names, feeds)

    python_model.session = types.SimpleNamespace(run=run)
    poisoned = np.full_like(good[0], 1234)
    responses = python_model.execute(
        [_Request(_Tensor(INPUT_NAME, v)) for v in (good[0], poisoned)]
    )
    assert responses[0].error is None and "poisoned" in str(responses[1].error)
