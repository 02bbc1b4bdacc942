"""The embedded backend: onnxruntime in the gateway process.

Loads ``<repository>/<name>/<version>/model.onnx`` (the newest numeric version unless one is
named), on the CUDA execution provider when this onnxruntime build has it, else on the CPU. The
card comes from ``model_card.json`` beside the model (or in the model folder), falling back to the
card the export step wrote into the ONNX metadata. The graph is checked against the card at load,
so a mismatched deployment fails at start-up rather than on the first study.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
from pydantic import ValidationError

from service.contract import INPUT_DTYPE, INPUT_NAME, ModelOutputs, check_graph, output_names
from service.errors import BackendUnavailableError, ModelContractError
from service.model_card import CARD_FILENAME, CARD_METADATA_KEY, ModelCard

MODEL_FILENAME = "model.onnx"
CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"

log = logging.getLogger(__name__)


def newest_version(model_folder: Path) -> Path:
    """The highest numeric version folder that holds a ``model.onnx``."""
    if not model_folder.is_dir():
        raise BackendUnavailableError(f"no model folder {model_folder}")
    versions = [
        p
        for p in model_folder.iterdir()
        if p.is_dir() and p.name.isdigit() and (p / MODEL_FILENAME).is_file()
    ]
    if not versions:
        raise BackendUnavailableError(
            f"{model_folder} has no numeric version folder holding {MODEL_FILENAME}"
        )
    return max(versions, key=lambda p: int(p.name))


def read_card(version_folder: Path, session: ort.InferenceSession | None) -> ModelCard:
    """The card beside the model, else in the model folder, else in the ONNX metadata."""
    for path in (version_folder / CARD_FILENAME, version_folder.parent / CARD_FILENAME):
        if path.is_file():
            try:
                return ModelCard.from_json(path.read_bytes())
            except ValidationError as exc:
                raise ModelContractError(f"{path} is not a valid model card: {exc}") from None
    if session is not None:
        metadata = session.get_modelmeta().custom_metadata_map
        if CARD_METADATA_KEY in metadata:
            try:
                return ModelCard.from_json(metadata[CARD_METADATA_KEY])
            except ValidationError as exc:
                raise ModelContractError(
                    f"the card in the metadata of {version_folder / MODEL_FILENAME}: {exc}"
                ) from None
    raise ModelContractError(
        f"no model card: neither {CARD_FILENAME} beside {version_folder / MODEL_FILENAME} nor "
        f"'{CARD_METADATA_KEY}' in its metadata"
    )


def choose_providers() -> list[str]:
    available = ort.get_available_providers()
    return [CUDA_PROVIDER, CPU_PROVIDER] if CUDA_PROVIDER in available else [CPU_PROVIDER]


class OnnxBackend:
    """An onnxruntime session over the model the settings name."""

    kind = "onnx"

    def __init__(
        self,
        model_folder: Path,
        *,
        version: int | None = None,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        spinning: bool = True,
    ) -> None:
        folder = model_folder / str(version) if version else newest_version(model_folder)
        path = folder / MODEL_FILENAME
        if not path.is_file():
            raise BackendUnavailableError(f"no {MODEL_FILENAME} in {folder}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = inter_op_threads
        if not spinning:
            # Idle pool threads sleep instead of spinning, so they leave the cores to other work.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session = ort.InferenceSession(
                str(path), sess_options=options, providers=choose_providers()
            )
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ModelContractError(f"onnxruntime cannot load {path}: {exc}") from None
        self._card = read_card(folder, self._session)
        check_graph(
            self._session,
            self._card.grid.to_model_grid(),
            self._card.adapter.experts,
            self._card.adapter.slice_head,
        )
        if str(self._card.version) != folder.name:
            log.warning(
                "model card version differs from its folder",
                extra={"card_version": self._card.version, "folder": folder.name},
            )
        self.path = path
        self.providers: list[str] = list(self._session.get_providers())
        self._closed = threading.Event()

    @property
    def card(self) -> ModelCard:
        return self._card

    def ready(self) -> bool:
        return not self._closed.is_set()

    def infer(self, volumes: np.ndarray) -> ModelOutputs:
        if self._closed.is_set():
            raise BackendUnavailableError("the onnx backend is closed")
        batch = np.ascontiguousarray(volumes, dtype=INPUT_DTYPE)
        names = output_names(self._card.adapter.slice_head)
        values = self._session.run(list(names), {INPUT_NAME: batch})
        return ModelOutputs.from_named(
            dict(zip(names, values, strict=True)), self._card, batch.shape[0]
        )

    def close(self) -> None:
        self._closed.set()
