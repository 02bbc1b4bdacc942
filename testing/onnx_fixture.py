"""A small, real ONNX model honouring the gateway's tensor contract, built with ``onnx.helper``.

Input ``CT_VOLUME`` INT16 ``[B, D, H, W]`` (dynamic B); per slice, the mean of the HU volume under
three windows (brain, subdural, bone) is the slice's feature vector. A softmax over slices of a
linear score gives ``SLICE_ATTENTION``; a softmax over K experts of another linear map gives
``SLICE_ROUTER_WEIGHTS`` (and their mean over slices ``ROUTER_WEIGHTS``); the attention-pooled
features through a 75-way linear layer and a sigmoid give ``PROBABILITIES``, and each slice's
features through the same layer times its attention ``SLICE_EVIDENCE``. Every output depends
on the input, so different studies give different results. The card travels beside the model and
in its metadata, as the export step writes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.contract import (
    DEFAULT_WINDOWS,
    INPUT_NAME,
    OUTPUT_NAMES,
    SLICE_SCORES,
    input_shape,
    output_shapes,
)
from service.findings import FINDINGS
from service.model_card import (
    CARD_FILENAME,
    CARD_METADATA_KEY,
    NOT_FOR_CLINICAL_USE,
    CardAdapter,
    CardBackbone,
    CardFinding,
    CardGrid,
    CardProvenance,
    ModelCard,
)

MODEL_NAME = "headct_molre"


@dataclass(frozen=True)
class FixtureModel:
    repository: Path
    model_path: Path
    card: ModelCard


def fixture_card(depth: int, height: int, width: int, experts: int, version: int = 1) -> ModelCard:
    thresholds = np.random.default_rng(7).uniform(0.2, 0.8, len(FINDINGS))
    return ModelCard(
        name=MODEL_NAME,
        version=version,
        description="Test fixture: window means per slice through linear maps; no learning.",
        intended_use=NOT_FOR_CLINICAL_USE,
        backbone=CardBackbone(name="fixture-window-means"),
        adapter=CardAdapter(kind="molre", experts=experts, rank=4, targets=["fixture"]),
        grid=CardGrid(depth=depth, height=height, width=width),
        windows=list(DEFAULT_WINDOWS),
        findings=[
            CardFinding.of(f, round(float(t), 3)) for f, t in zip(FINDINGS, thresholds, strict=True)
        ],
        router_reference=[round(1.0 / experts, 4)] * experts,
        provenance=CardProvenance(
            training_data="none: a test fixture",
            synthetic=True,
            trained=date.today().isoformat(),
            exported=date.today().isoformat(),
        ),
    )


def _const(name: str, value: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)


def build_graph(card: ModelCard, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    d, k, f = card.grid.depth, card.adapter.experts, len(card.findings)
    probabilities, router, slice_router, attention, evidence = OUTPUT_NAMES
    n_feat = len(card.windows)
    lows = np.array([window.low for window in card.windows], dtype=np.float32)
    widths = np.array([window.width for window in card.windows], dtype=np.float32)
    init = [
        _const("lows", lows.reshape(n_feat, 1, 1, 1, 1)),  # broadcast over [B, D, H, W]
        _const("widths", widths.reshape(n_feat, 1, 1, 1, 1)),
        _const("zero", np.array(0.0)),
        _const("one", np.array(1.0)),
        _const("centre", np.full(n_feat, 0.3)),
        _const("scale", np.full(n_feat, 8.0)),
        _const("w_att", rng.normal(0, 2.0, (n_feat, 1))),
        _const("w_router", rng.normal(0, 2.0, (n_feat, k))),
        _const("b_router", rng.normal(0, 0.5, k)),
        _const("w_head", rng.normal(0, 1.5, (n_feat, f))),
        _const("b_head", rng.normal(-0.5, 1.0, f)),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "axis_last"),
        numpy_helper.from_array(np.array([3, 4], dtype=np.int64), "axes_hw"),
    ]
    n = helper.make_node
    nodes = [
        n("Cast", [INPUT_NAME], ["hu"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["hu", "axis0"], ["hu5"]),  # [1, B, D, H, W]
        n("Sub", ["hu5", "lows"], ["shifted"]),  # [F, B, D, H, W]
        n("Div", ["shifted", "widths"], ["scaled"]),
        n("Clip", ["scaled", "zero", "one"], ["windowed"]),
        n("ReduceMean", ["windowed", "axes_hw"], ["means"], keepdims=0),  # [F, B, D]
        n("Transpose", ["means"], ["feat_raw"], perm=[1, 2, 0]),  # [B, D, F]
        n("Sub", ["feat_raw", "centre"], ["feat_c"]),
        n("Mul", ["feat_c", "scale"], ["feat"]),
        n("MatMul", ["feat", "w_att"], ["att_logit3"]),  # [B, D, 1]
        n("Squeeze", ["att_logit3", "axis_last"], ["att_logit"]),  # [B, D]
        n("Softmax", ["att_logit"], [attention], axis=-1),
        n("MatMul", ["feat", "w_router"], ["router_mm"]),  # [B, D, K]
        n("Add", ["router_mm", "b_router"], ["router_logit"]),
        n("Softmax", ["router_logit"], [slice_router], axis=-1),
        n("ReduceMean", [slice_router, "axis1"], [router], keepdims=0),
        n("Unsqueeze", [attention, "axis1"], ["att_row"]),  # [B, 1, D]
        n("MatMul", ["att_row", "feat"], ["pooled3"]),  # [B, 1, F]
        n("Squeeze", ["pooled3", "axis1"], ["pooled"]),  # [B, F]
        n("MatMul", ["pooled", "w_head"], ["head_mm"]),
        n("Add", ["head_mm", "b_head"], ["logits"]),
        n("Sigmoid", ["logits"], [probabilities]),
        n("MatMul", ["feat", "w_head"], ["slice_head"]),  # [B, D, 75]
        n("Unsqueeze", [attention, "axis_last"], ["att_col"]),  # [B, D, 1]
        n("Mul", ["att_col", "slice_head"], [evidence]),
    ]
    slice_head = card.adapter.slice_head
    if slice_head:  # SLICE_SCORES: another linear map of each slice's features
        init += [
            _const("w_slice", rng.normal(0, 1.5, (n_feat, f))),
            _const("b_slice", rng.normal(-1.0, 0.5, f)),
        ]
        nodes += [
            n("MatMul", ["feat", "w_slice"], ["slice_mm"]),
            n("Add", ["slice_mm", "b_slice"], [SLICE_SCORES]),
        ]
    volume = ["batch", *input_shape(card.grid.to_model_grid())]
    graph = helper.make_graph(
        nodes,
        "headct_fixture",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.INT16, volume)],
        [
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *dims])
            for name, dims in output_shapes(d, k, slice_head).items()
        ],
        init,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    helper.set_model_props(model, {CARD_METADATA_KEY: card.to_json()})
    onnx.checker.check_model(model, full_check=True)
    return model


def write_fixture_repository(
    root: Path,
    *,
    depth: int = 8,
    height: int = 64,
    width: int = 64,
    experts: int = 4,
    version: int = 1,
    card_file: bool = True,
) -> FixtureModel:
    """``root/headct_molre/<version>/model.onnx`` (+ ``model_card.json`` unless ``card_file``
    is false, leaving the metadata as the only card)."""
    card = fixture_card(depth, height, width, experts, version)
    folder = root / MODEL_NAME / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save(build_graph(card), path)
    if card_file:
        (folder / CARD_FILENAME).write_text(card.to_json())
    return FixtureModel(repository=root, model_path=path, card=card)
