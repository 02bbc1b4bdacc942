"""The serving contract between an exported model and the gateway, in one module.

    CT_VOLUME             INT16 HU  [B, D, H, W]  on the card's grid (windowing is in the graph)
    PROBABILITIES         FP32      [B, 75]       the findings in ``service.findings`` order
    ROUTER_WEIGHTS        FP32      [B, K]        the router's expert weights, study mean
    SLICE_ROUTER_WEIGHTS  FP32      [B, D, K]     per slice
    SLICE_ATTENTION       FP32      [B, D]        the pooling's attention over slices
    SLICE_EVIDENCE        FP32      [B, D, 75]    each slice's share of each finding's logit
    SLICE_SCORES          FP32      [B, D, 75]    (slice-head models only) each slice's own logit

SLICE_EVIDENCE is the attention times the head applied to the slice's features (plus, in a model
with a slice head, the slice's softmax weight times that head's score of it): summed over the
slices, plus the heads' biases, it is the study's logit for that finding.

SLICE_SCORES is the sixth output of a model whose card says ``adapter.slice_head``: the slice
head's logit of each finding on each slice alone (``training.model``). The gateway's key slice is
the slice with the highest score for the finding behind the triage when the model has it, else the
slice with the most evidence (``service.postprocess``): a finding on two slices of 32 shows there
far more clearly than in the evidence, which the attention's share spreads over the study.

K is the card's expert count (1 for adapters without a router). The export step names the graph's
tensors from here and checks its graph with ``check_graph`` (training imports ``service``, never
the reverse); the gateway checks the graph it loads with the same function and every result with
``ModelOutputs.from_named``; the repository writer renders Triton's ``config.pbtxt`` from it. The
python-backend model in ``model_repository/headct_molre_cpu`` must stay self-contained and spells
the input's name and type again; a test holds them equal to these.

The model's own description that travels with it (adapter kind, HU windows) uses the types here
too: ``AdapterKind`` and ``HUWindow`` are what the model card records and what training builds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from service.errors import ModelContractError
from service.findings import NUM_FINDINGS

if TYPE_CHECKING:
    import onnxruntime as ort

    from service.model_card import ModelCard
    from service.preprocess import ModelGrid

INPUT_NAME = "CT_VOLUME"
OUTPUT_NAMES = (
    "PROBABILITIES",
    "ROUTER_WEIGHTS",
    "SLICE_ROUTER_WEIGHTS",
    "SLICE_ATTENTION",
    "SLICE_EVIDENCE",
)
SLICE_SCORES = "SLICE_SCORES"  # the sixth output, of models with a slice head only
INPUT_DTYPE = np.dtype(np.int16)  # Hounsfield units, as the scanner stores them
OUTPUT_DTYPE = np.dtype(np.float32)
# The element types as onnxruntime reports them and as Triton names them (config.pbtxt adds the
# prefix "TYPE_").
ONNX_TYPES: dict[np.dtype[Any], str] = {INPUT_DTYPE: "tensor(int16)", OUTPUT_DTYPE: "tensor(float)"}
TRITON_TYPES: dict[np.dtype[Any], str] = {INPUT_DTYPE: "INT16", OUTPUT_DTYPE: "FP32"}

AdapterKind = Literal["probe", "lora", "molre", "full"]
ADAPTER_KINDS: tuple[AdapterKind, ...] = get_args(AdapterKind)


class HUWindow(BaseModel):
    """A CT display window: HU in [center - width/2, center + width/2] maps to [0, 1]."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    center: float
    width: float = Field(gt=0)

    @property
    def low(self) -> float:
        """The HU that maps to 0."""
        return self.center - self.width / 2


# Brain for parenchyma and fresh blood, subdural for thin extra-axial collections against the
# skull, bone for fractures: the three windows a radiologist reads a head CT in.
DEFAULT_WINDOWS = (
    HUWindow(name="brain", center=40.0, width=80.0),
    HUWindow(name="subdural", center=80.0, width=200.0),
    HUWindow(name="bone", center=600.0, width=2800.0),
)


def input_shape(grid: ModelGrid) -> tuple[int, int, int]:
    """``CT_VOLUME``'s shape after the batch dimension."""
    return (grid.depth, grid.height, grid.width)


def output_names(slice_head: bool = False) -> tuple[str, ...]:
    """The outputs a model has: the five, and SLICE_SCORES for a model with a slice head."""
    return (*OUTPUT_NAMES, SLICE_SCORES) if slice_head else OUTPUT_NAMES


def output_shapes(depth: int, experts: int, slice_head: bool = False) -> dict[str, tuple[int, ...]]:
    """Each output's shape after the batch dimension, in ``output_names`` order."""
    shapes: list[tuple[int, ...]] = [
        (NUM_FINDINGS,),
        (experts,),
        (depth, experts),
        (depth,),
        (depth, NUM_FINDINGS),
    ]
    if slice_head:
        shapes.append((depth, NUM_FINDINGS))
    return dict(zip(output_names(slice_head), shapes, strict=True))


def _check_tensor(
    name: str, onnx_type: str, shape: list[Any], dtype: np.dtype[Any], dims: tuple[int, ...]
) -> None:
    """One tensor's element type, rank, and static dimensions after the batch (a symbolic
    dimension, a name or None, passes: onnxruntime checks it when the model runs)."""
    if onnx_type != ONNX_TYPES[dtype]:
        raise ModelContractError(f"{name} is {onnx_type}, not {ONNX_TYPES[dtype]}")
    if len(shape) != 1 + len(dims) or any(
        isinstance(dim, int) and dim != want for dim, want in zip(shape[1:], dims, strict=True)
    ):
        raise ModelContractError(f"{name} has shape {shape}, not {['B', *dims]}")


def check_graph(
    session: ort.InferenceSession, grid: ModelGrid, experts: int, slice_head: bool = False
) -> None:
    """The graph's one input and five outputs (six with ``slice_head``) are the contract's on
    ``grid`` with ``experts`` experts: names, element types, ranks and static dimensions. Other
    outputs are ignored; an input beyond ``CT_VOLUME`` is refused (the gateway feeds only that
    one)."""
    inputs = {i.name: i for i in session.get_inputs()}
    if INPUT_NAME not in inputs:
        raise ModelContractError(f"the model has no input {INPUT_NAME} (has {sorted(inputs)})")
    if len(inputs) > 1:
        others = sorted(set(inputs) - {INPUT_NAME})
        raise ModelContractError(f"the model has inputs besides {INPUT_NAME}: {others}")
    volume = inputs[INPUT_NAME]
    _check_tensor(INPUT_NAME, volume.type, list(volume.shape), INPUT_DTYPE, input_shape(grid))
    outputs = {o.name: o for o in session.get_outputs()}
    missing = [n for n in output_names(slice_head) if n not in outputs]
    if missing:
        raise ModelContractError(f"the model has no output {', '.join(missing)}")
    for name, dims in output_shapes(grid.depth, experts, slice_head).items():
        _check_tensor(name, outputs[name].type, list(outputs[name].shape), OUTPUT_DTYPE, dims)


@dataclass(frozen=True, slots=True)
class ModelOutputs:
    """The model's outputs for a batch of B studies on a D-slice grid with K experts."""

    probabilities: np.ndarray  # float32 [B, 75]
    router_weights: np.ndarray  # float32 [B, K], study mean
    slice_router_weights: np.ndarray  # float32 [B, D, K]
    slice_attention: np.ndarray  # float32 [B, D]
    slice_evidence: np.ndarray  # float32 [B, D, 75]
    slice_scores: np.ndarray | None = None  # float32 [B, D, 75], models with a slice head

    @classmethod
    def from_named(
        cls, tensors: dict[str, np.ndarray], card: ModelCard, batch: int
    ) -> ModelOutputs:
        """Check names, shapes and finiteness against the card, so a wrong model fails loudly."""
        names = output_names(card.adapter.slice_head)
        missing = [n for n in names if n not in tensors]
        if missing:
            raise ModelContractError(f"the model returned no {', '.join(missing)}")
        expected = output_shapes(card.grid.depth, card.adapter.experts, card.adapter.slice_head)
        arrays = {n: np.asarray(tensors[n], dtype=OUTPUT_DTYPE) for n in names}
        for name, dims in expected.items():
            shape = (batch, *dims)
            if arrays[name].shape != shape:
                raise ModelContractError(
                    f"{name} has shape {list(arrays[name].shape)}; the card implies {list(shape)}"
                )
            if not np.all(np.isfinite(arrays[name])):
                raise ModelContractError(f"{name} holds NaN or infinite values")
        return cls(
            probabilities=arrays["PROBABILITIES"],
            router_weights=arrays["ROUTER_WEIGHTS"],
            slice_router_weights=arrays["SLICE_ROUTER_WEIGHTS"],
            slice_attention=arrays["SLICE_ATTENTION"],
            slice_evidence=arrays["SLICE_EVIDENCE"],
            slice_scores=arrays.get(SLICE_SCORES),
        )
