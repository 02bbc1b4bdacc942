"""The serving contract (``service.contract``): the one graph check accepts the shipped model and
the test fixture and refuses graphs that break the contract in each way it can be broken; model
outputs are checked against the card at run time; the card's windows and adapter kinds are the
contract's types and its JSON is unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from pydantic import ValidationError

from service.contract import (
    ADAPTER_KINDS,
    DEFAULT_WINDOWS,
    INPUT_NAME,
    HUWindow,
    ModelOutputs,
    check_graph,
    output_shapes,
)
from service.errors import ModelContractError
from service.model_card import CARD_FILENAME, ModelCard
from service.preprocess import ModelGrid
from testing.onnx_fixture import build_graph, fixture_card

# The shipped demo model: the repository keeps one version of headct_molre, the newest.
SHIPPED = max(
    (Path(__file__).resolve().parents[2] / "model_repository" / "headct_molre").glob("[0-9]*"),
    key=lambda folder: int(folder.name),
)
GRID = ModelGrid(4, 8, 8)
EXPERTS = 3
FLOAT = TensorProto.FLOAT


def _session(path_or_bytes: Path | bytes) -> ort.InferenceSession:
    source = str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _contract_outputs() -> dict[str, tuple[int, list[Any]]]:
    return {
        name: (FLOAT, ["batch", *dims]) for name, dims in output_shapes(GRID.depth, EXPERTS).items()
    }


def _graph(
    *,
    input_name: str = INPUT_NAME,
    input_type: int = TensorProto.INT16,
    input_dims: list[Any] | None = None,
    outputs: dict[str, tuple[int, list[Any]]] | None = None,
    extra_input: bool = False,
) -> ort.InferenceSession:
    """A graph with the given input and outputs: each output is the study's mean HU broadcast to
    the output's shape, so onnxruntime infers exactly the declared shapes."""
    input_dims = input_dims or ["batch", GRID.depth, GRID.height, GRID.width]
    outputs = _contract_outputs() if outputs is None else outputs
    nodes = [
        helper.make_node("Cast", [input_name], ["hu"], to=FLOAT),
        helper.make_node("ReduceMean", ["hu", "study_axes"], ["mean"], keepdims=0),  # [B]
    ]
    init = [numpy_helper.from_array(np.arange(1, len(input_dims), dtype=np.int64), "study_axes")]
    for name, (elem_type, dims) in outputs.items():
        if len(dims) == 1:
            nodes.append(helper.make_node("Cast", ["mean"], [name], to=elem_type))
            continue
        axes, shape = f"{name}_axes", f"{name}_shape"
        init += [
            numpy_helper.from_array(np.arange(1, len(dims), dtype=np.int64), axes),
            numpy_helper.from_array(np.array([1, *dims[1:]], dtype=np.int64), shape),
        ]
        nodes += [
            helper.make_node("Unsqueeze", ["mean", axes], [f"{name}_1"]),  # [B, 1, ...]
            helper.make_node("Expand", [f"{name}_1", shape], [f"{name}_f"]),
            helper.make_node("Cast", [f"{name}_f"], [name], to=elem_type),
        ]
    inputs = [helper.make_tensor_value_info(input_name, input_type, input_dims)]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("SLICE_MASK", TensorProto.BOOL, ["batch"]))
    graph = helper.make_graph(
        nodes,
        "contract_case",
        inputs,
        [helper.make_tensor_value_info(n, t, dims) for n, (t, dims) in outputs.items()],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return _session(model.SerializeToString())


@pytest.mark.parametrize("filename", ["model.onnx", "model.int8.onnx"])
def test_the_shipped_model_honours_the_contract(filename: str) -> None:
    card = ModelCard.from_json((SHIPPED / CARD_FILENAME).read_bytes())
    session = _session(SHIPPED / filename)
    grid = card.grid.to_model_grid()
    slice_head = card.adapter.slice_head
    check_graph(session, grid, card.adapter.experts, slice_head)
    deeper = ModelGrid(grid.depth + 1, grid.height, grid.width)
    with pytest.raises(ModelContractError, match="CT_VOLUME has shape"):
        check_graph(session, deeper, card.adapter.experts, slice_head)
    with pytest.raises(ModelContractError, match="ROUTER_WEIGHTS has shape"):
        check_graph(session, grid, card.adapter.experts + 1, slice_head)
    if slice_head:  # the shipped model (v6 on) has the sixth output
        assert "SLICE_SCORES" in {o.name for o in session.get_outputs()}


def test_the_fixture_model_honours_the_contract() -> None:
    card = fixture_card(depth=8, height=64, width=64, experts=4)
    session = _session(build_graph(card).SerializeToString())
    check_graph(session, card.grid.to_model_grid(), card.adapter.experts)


def test_a_well_formed_graph_passes_with_symbolic_dimensions_and_extra_outputs() -> None:
    check_graph(_graph(), GRID, EXPERTS)
    outputs = _contract_outputs() | {"LOGITS": (FLOAT, ["batch", 75])}
    symbolic = ["batch", "depth", GRID.height, "width"]
    check_graph(_graph(input_dims=symbolic, outputs=outputs), GRID, EXPERTS)


def _without(name: str) -> dict[str, tuple[int, list[Any]]]:
    return {n: spec for n, spec in _contract_outputs().items() if n != name}


def _with(name: str, elem_type: int, dims: list[Any]) -> dict[str, tuple[int, list[Any]]]:
    return _contract_outputs() | {name: (elem_type, dims)}


@pytest.mark.parametrize(
    ("graph", "message"),
    [
        ({"input_name": "volume"}, "no input CT_VOLUME"),
        ({"extra_input": True}, r"inputs besides CT_VOLUME: \['SLICE_MASK'\]"),
        ({"input_type": FLOAT}, r"CT_VOLUME is tensor\(float\), not tensor\(int16\)"),
        ({"input_dims": ["batch", GRID.depth, GRID.height]}, "CT_VOLUME has shape"),
        ({"input_dims": ["batch", GRID.depth, GRID.height, 16]}, "CT_VOLUME has shape"),
        ({"outputs": _without("SLICE_ATTENTION")}, "no output SLICE_ATTENTION"),
        ({"outputs": _with("PROBABILITIES", FLOAT, ["batch", 74])}, "PROBABILITIES has shape"),
        ({"outputs": _with("ROUTER_WEIGHTS", FLOAT, ["batch", 4])}, "ROUTER_WEIGHTS has shape"),
        ({"outputs": _with("SLICE_ATTENTION", FLOAT, ["batch"])}, "SLICE_ATTENTION has shape"),
        (
            {"outputs": _with("SLICE_ROUTER_WEIGHTS", TensorProto.DOUBLE, ["batch", 4, 3])},
            r"SLICE_ROUTER_WEIGHTS is tensor\(double\), not tensor\(float\)",
        ),
    ],
    ids=[
        "input-name",
        "extra-input",
        "input-dtype",
        "input-rank",
        "input-width",
        "missing-output",
        "findings-width",
        "experts-width",
        "output-rank",
        "output-dtype",
    ],
)
def test_a_graph_that_breaks_the_contract_is_refused(graph: dict[str, Any], message: str) -> None:
    session = _graph(**graph)
    with pytest.raises(ModelContractError, match=message):
        check_graph(session, GRID, EXPERTS)


def _outputs(batch: int, depth: int, experts: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        name: rng.random((batch, *dims)).astype(np.float64)
        for name, dims in output_shapes(depth, experts).items()
    }


def test_a_slice_head_model_must_have_slice_scores() -> None:
    # Without a slice head SLICE_SCORES is an extra output (ignored); with one it is required,
    # with the evidence's shape.
    five = _contract_outputs()
    six = {
        name: (FLOAT, ["batch", *dims])
        for name, dims in output_shapes(GRID.depth, EXPERTS, slice_head=True).items()
    }
    assert list(six) == [*five, "SLICE_SCORES"]
    check_graph(_graph(outputs=six), GRID, EXPERTS, slice_head=True)
    check_graph(_graph(outputs=six), GRID, EXPERTS)
    with pytest.raises(ModelContractError, match="no output SLICE_SCORES"):
        check_graph(_graph(outputs=five), GRID, EXPERTS, slice_head=True)
    wrong = five | {"SLICE_SCORES": (FLOAT, ["batch", GRID.depth, 74])}
    with pytest.raises(ModelContractError, match="SLICE_SCORES has shape"):
        check_graph(_graph(outputs=wrong), GRID, EXPERTS, slice_head=True)

    base = fixture_card(depth=8, height=64, width=64, experts=4)
    card = ModelCard.model_validate(
        base.model_dump() | {"adapter": base.adapter.model_dump() | {"slice_head": True}}
    )
    tensors = _outputs(2, 8, 4)
    with pytest.raises(ModelContractError, match="returned no SLICE_SCORES"):
        ModelOutputs.from_named(tensors, card, batch=2)
    scores = np.random.default_rng(1).random((2, 8, 75))
    outputs = ModelOutputs.from_named(tensors | {"SLICE_SCORES": scores}, card, batch=2)
    assert outputs.slice_scores is not None
    np.testing.assert_allclose(outputs.slice_scores, scores, rtol=1e-6)
    assert ModelOutputs.from_named(tensors, base, batch=2).slice_scores is None
    with pytest.raises(ModelContractError, match=r"SLICE_SCORES has shape \[2, 8, 74\]"):
        ModelOutputs.from_named(tensors | {"SLICE_SCORES": scores[..., :74]}, card, batch=2)


def test_outputs_are_checked_against_the_card_at_run_time() -> None:
    card = fixture_card(depth=8, height=64, width=64, experts=4)
    tensors = _outputs(2, 8, 4)
    outputs = ModelOutputs.from_named(tensors, card, batch=2)
    assert outputs.slice_router_weights.shape == (2, 8, 4)
    assert outputs.probabilities.dtype == np.float32
    np.testing.assert_allclose(outputs.slice_attention, tensors["SLICE_ATTENTION"], rtol=1e-6)

    with pytest.raises(ModelContractError, match="returned no ROUTER_WEIGHTS"):
        ModelOutputs.from_named(
            {n: v for n, v in tensors.items() if n != "ROUTER_WEIGHTS"}, card, 2
        )
    with pytest.raises(ModelContractError, match=r"ROUTER_WEIGHTS has shape \[2, 3\]"):
        ModelOutputs.from_named(_outputs(2, 8, 3), card, 2)
    with pytest.raises(ModelContractError, match="the card implies"):
        ModelOutputs.from_named(tensors, card, 3)
    tensors["PROBABILITIES"][1, 5] = np.nan
    with pytest.raises(ModelContractError, match="PROBABILITIES holds NaN"):
        ModelOutputs.from_named(tensors, card, 2)


def test_the_card_records_the_contracts_window_and_adapter_types() -> None:
    shipped = json.loads((SHIPPED / CARD_FILENAME).read_text())
    card = ModelCard.from_json(json.dumps(shipped))
    assert card.windows == list(DEFAULT_WINDOWS)
    assert all(isinstance(window, HUWindow) for window in card.windows)
    # The card's JSON is what it was before the window type moved: same keys, same order.
    assert json.loads(card.to_json())["windows"] == shipped["windows"]
    assert list(shipped["windows"][0]) == ["name", "center", "width"]
    assert card.adapter.kind in ADAPTER_KINDS
    with pytest.raises(ValidationError, match="kind"):
        ModelCard.model_validate(shipped | {"adapter": shipped["adapter"] | {"kind": "prefix"}})


def test_a_window_has_a_positive_width_and_maps_its_low_end_to_zero() -> None:
    brain = HUWindow(name="brain", center=40.0, width=80.0)
    assert brain.low == 0.0
    with pytest.raises(ValidationError, match="greater than 0"):
        HUWindow(name="flat", center=40.0, width=0.0)
    with pytest.raises(ValidationError, match="level"):
        HUWindow.model_validate({"name": "brain", "level": 40.0, "width": 80.0})
