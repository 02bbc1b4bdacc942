"""The Triton backend: tritonclient over HTTP with binary tensors.

The card comes from the model's config parameters (``parameters { key: "headct_model_card" }``,
written by the export step); readiness follows Triton's model readiness. The HTTP client is not
safe to share between OS threads (it runs on gevent), so each worker thread keeps its own.

Not yet exercised against a live server by the test suite: see issue 5's Triton half.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
from pydantic import ValidationError

from service.backends.base import (
    INPUT_NAME,
    OUTPUT_NAMES,
    BackendTimeoutError,
    BackendUnavailableError,
    ModelContractError,
    ModelOutputs,
)
from service.model_card import CARD_METADATA_KEY, ModelCard


class TritonBackend:
    """A model served by a Triton Inference Server."""

    kind = "triton"

    def __init__(
        self, url: str, model_name: str, *, version: int | None = None, timeout_s: float = 30.0
    ) -> None:
        self._url = url.split("://", 1)[-1]
        self._model = model_name
        self._version = str(version) if version else ""
        self._timeout_s = timeout_s
        self._local = threading.local()
        self._card: ModelCard | None = None

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.http as triton_http

            client = triton_http.InferenceServerClient(
                self._url, connection_timeout=5.0, network_timeout=self._timeout_s
            )
            self._local.client = client
        return client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, **kwargs)
        except TimeoutError as exc:
            raise BackendTimeoutError(f"Triton did not answer {what} in time ({exc})") from None
        except (InferenceServerException, OSError) as exc:
            raise BackendUnavailableError(f"Triton at {self._url} failed {what}: {exc}") from None

    @property
    def card(self) -> ModelCard:
        if self._card is None:
            config = self._call(
                "the model config", self._client().get_model_config, self._model, self._version
            )
            parameters = config.get("parameters", {}) if isinstance(config, dict) else {}
            text = parameters.get(CARD_METADATA_KEY, {}).get("string_value")
            if not text:
                raise ModelContractError(
                    f"Triton model {self._model} has no '{CARD_METADATA_KEY}' config parameter"
                )
            try:
                self._card = ModelCard.from_json(text)
            except ValidationError as exc:
                raise ModelContractError(f"the card in {self._model}'s config: {exc}") from None
        return self._card

    def ready(self) -> bool:
        try:
            if not self._client().is_model_ready(self._model, self._version):
                return False
            return self.card is not None
        except Exception:
            return False

    def infer(self, volumes: np.ndarray) -> ModelOutputs:
        import tritonclient.http as triton_http

        card = self.card
        batch = np.ascontiguousarray(volumes, dtype=np.int16)
        tensor = triton_http.InferInput(INPUT_NAME, list(batch.shape), "INT16")
        tensor.set_data_from_numpy(batch, binary_data=True)
        wanted = [triton_http.InferRequestedOutput(n, binary_data=True) for n in OUTPUT_NAMES]
        result = self._call(
            "inference",
            self._client().infer,
            self._model,
            [tensor],
            model_version=self._version,
            outputs=wanted,
        )
        named = {n: result.as_numpy(n) for n in OUTPUT_NAMES}
        present = {n: v for n, v in named.items() if v is not None}
        return ModelOutputs.from_named(present, card, batch.shape[0])

    def close(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
