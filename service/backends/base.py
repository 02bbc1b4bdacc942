"""What the gateway needs from an inference backend, whichever runs the model.

One ``Protocol``: the model card, readiness, and ``infer`` on a batch of INT16 HU volumes
returning the four output tensors of the model contract (ARCHITECTURE.md). Calls are synchronous
and may block (onnxruntime computing, tritonclient waiting on the network): the API layer runs
them in worker threads with a deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.errors import ModelContractError
from service.model_card import ModelCard

INPUT_NAME = "CT_VOLUME"
OUTPUT_NAMES = ("PROBABILITIES", "ROUTER_WEIGHTS", "SLICE_ROUTER_WEIGHTS", "SLICE_ATTENTION")


@dataclass(frozen=True, slots=True)
class ModelOutputs:
    """The model's outputs for a batch of B studies on a D-slice grid with K experts."""

    probabilities: np.ndarray  # float32 [B, 75]
    router_weights: np.ndarray  # float32 [B, K], study mean
    slice_router_weights: np.ndarray  # float32 [B, D, K]
    slice_attention: np.ndarray  # float32 [B, D]

    @classmethod
    def from_named(
        cls, tensors: dict[str, np.ndarray], card: ModelCard, batch: int
    ) -> ModelOutputs:
        """Check names, shapes and finiteness against the card, so a wrong model fails loudly."""
        missing = [n for n in OUTPUT_NAMES if n not in tensors]
        if missing:
            raise ModelContractError(f"the model returned no {', '.join(missing)}")
        d, k, f = card.grid.depth, card.adapter.experts, len(card.findings)
        expected = {
            "PROBABILITIES": (batch, f),
            "ROUTER_WEIGHTS": (batch, k),
            "SLICE_ROUTER_WEIGHTS": (batch, d, k),
            "SLICE_ATTENTION": (batch, d),
        }
        arrays = {n: np.asarray(tensors[n], dtype=np.float32) for n in OUTPUT_NAMES}
        for name, shape in expected.items():
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
        )


class InferenceBackend(Protocol):
    """A loaded model behind the gateway."""

    @property
    def kind(self) -> str:
        """``onnx`` or ``triton``: for logs and the model-info metric."""
        ...

    @property
    def card(self) -> ModelCard:
        """The model card of the model this backend runs."""
        ...

    def ready(self) -> bool:
        """Whether ``infer`` would be served now (cheap enough for a readiness probe)."""
        ...

    def infer(self, volumes: np.ndarray) -> ModelOutputs:
        """Run the model on INT16 HU volumes ``[B, D, H, W]`` on the card's grid.

        Raises ``BackendUnavailableError`` when the model cannot be reached.
        """
        ...

    def close(self) -> None:
        """Release sessions and connections."""
        ...
