"""The Triton backend: tritonclient over HTTP with binary tensors.

The card comes from the model's config parameters (``parameters { key: "headct_model_card" }``,
written by the export step) and is read again whenever readiness is checked, so a model that
Triton unloads and loads again (a new version, a new card) is served with its own card; readiness
follows Triton's model readiness. The HTTP client is not safe to share between OS threads (it runs
on gevent), so each worker thread keeps its own; ``close`` closes them all.

Checked against the real server bundled in the ``nvidia-pytriton`` wheel by
``tests/service/test_triton_backend.py``: a server that dies while a request is in flight closes
the connection (``http.client.HTTPException`` from geventhttpclient, not an ``OSError``), which
is as much an outage as a refused connection; a request that Triton's queue policy rejected
("Request timeout expired", an HTTP 503 from Triton) is a timeout, not an outage.
"""

from __future__ import annotations

import contextlib
import http.client
import threading
import weakref
from typing import Any

import numpy as np
from pydantic import ValidationError

from service.contract import INPUT_DTYPE, INPUT_NAME, TRITON_TYPES, ModelOutputs, output_names
from service.errors import BackendTimeoutError, BackendUnavailableError, ModelContractError
from service.model_card import CARD_METADATA_KEY, ModelCard

# What Triton answers (HTTP 503) when a request waited in its queue past the queue policy's timeout
_TRITON_TIMED_OUT = "Request timeout expired"


class TritonBackend:
    """A model served by a Triton Inference Server."""

    kind = "triton"

    def __init__(
        self, url: str, model_name: str, *, version: int | None = None, timeout_s: float = 30.0
    ) -> None:
        self._url = url.split("://", 1)[-1].rstrip("/")
        self._model = model_name
        self._version = str(version) if version else ""
        self._timeout_s = timeout_s
        self._local = threading.local()
        # Every thread's client, to close them all; a client goes with its thread (weak refs).
        self._clients: weakref.WeakSet[Any] = weakref.WeakSet()
        self._clients_lock = threading.Lock()
        self._closed = False
        self._card: ModelCard | None = None

    def _client(self) -> Any:
        if self._closed:
            raise BackendUnavailableError("the triton backend is closed")
        client = getattr(self._local, "client", None)
        if client is None:
            import tritonclient.http as triton_http

            client = triton_http.InferenceServerClient(
                self._url,
                connection_timeout=min(5.0, self._timeout_s),
                network_timeout=self._timeout_s,
            )
            self._local.client = client
            with self._clients_lock:
                self._clients.add(client)
        return client

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, **kwargs)
        except TimeoutError as exc:
            raise BackendTimeoutError(f"Triton did not answer {what} in time ({exc})") from None
        except InferenceServerException as exc:
            if _TRITON_TIMED_OUT in str(exc):
                # Triton's queue policy gave up on the request: too slow, not down
                raise BackendTimeoutError(f"Triton did not run {what} in time ({exc})") from None
            raise BackendUnavailableError(f"Triton at {self._url} failed {what}: {exc}") from None
        except (OSError, http.client.HTTPException) as exc:
            # HTTPException: the server closed the connection mid-request (it died or restarted)
            reason = str(exc) or type(exc).__name__
            raise BackendUnavailableError(
                f"Triton at {self._url} failed {what}: {reason}"
            ) from None

    def _read_card(self) -> ModelCard:
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
            return ModelCard.from_json(text)
        except ValidationError as exc:
            raise ModelContractError(f"the card in {self._model}'s config: {exc}") from None

    @property
    def card(self) -> ModelCard:
        card = self._card
        if card is None:
            card = self._card = self._read_card()
        return card

    def ready(self) -> bool:
        """The model is ready on Triton and its config carries a valid card (read afresh)."""
        try:
            if not self._call(
                "the readiness check", self._client().is_model_ready, self._model, self._version
            ):
                return False
            self._card = self._read_card()
            return True
        except Exception:
            return False

    def infer(self, volumes: np.ndarray) -> ModelOutputs:
        import tritonclient.http as triton_http

        card = self.card
        batch = np.ascontiguousarray(volumes, dtype=INPUT_DTYPE)
        tensor = triton_http.InferInput(INPUT_NAME, list(batch.shape), TRITON_TYPES[INPUT_DTYPE])
        tensor.set_data_from_numpy(batch, binary_data=True)
        names = output_names(card.adapter.slice_head)
        wanted = [triton_http.InferRequestedOutput(n, binary_data=True) for n in names]
        try:
            result = self._call(
                "inference",
                self._client().infer,
                self._model,
                [tensor],
                model_version=self._version,
                outputs=wanted,
            )
        except BackendUnavailableError:
            self._card = None  # the model may come back as another version: read its card again
            raise
        named = {n: result.as_numpy(n) for n in names}
        present = {n: v for n, v in named.items() if v is not None}
        return ModelOutputs.from_named(present, card, batch.shape[0])

    def close(self) -> None:
        """Close every thread's client (a geventhttpclient pool may be closed from any thread)."""
        self._closed = True
        with self._clients_lock:
            clients = list(self._clients)
            self._clients.clear()
        for client in clients:
            with contextlib.suppress(Exception):  # at shutdown: nothing left to report to
                client.close()
