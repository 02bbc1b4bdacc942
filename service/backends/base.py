"""What the gateway needs from an inference backend, whichever runs the model.

One ``Protocol``: the model card, readiness, and ``infer`` on a batch of INT16 HU volumes
returning the output tensors of the model contract (``service.contract``). Calls are
synchronous and may block (onnxruntime computing, tritonclient waiting on the network): the triage
pipeline (``service.pipeline``) runs them in worker threads with a deadline.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from service.contract import ModelOutputs
from service.model_card import ModelCard


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
