"""Inference backends behind one protocol: embedded onnxruntime and a Triton client."""

from __future__ import annotations

from service.backends.base import InferenceBackend
from service.settings import BackendKind, Settings

__all__ = ["InferenceBackend", "create_backend"]


def create_backend(settings: Settings) -> InferenceBackend:
    """The backend the settings name, loaded (onnx) or connected lazily (triton)."""
    if settings.backend is BackendKind.TRITON:
        from service.backends.triton import TritonBackend

        return TritonBackend(
            settings.triton_url,
            settings.model_name,
            version=settings.model_version,
            timeout_s=settings.inference_timeout_s,
        )
    from service.backends.onnx import OnnxBackend

    return OnnxBackend(
        settings.model_folder(),
        version=settings.model_version,
        intra_op_threads=settings.onnx_intra_op_threads,
        inter_op_threads=settings.onnx_inter_op_threads,
        spinning=settings.onnx_spinning,
    )
