"""``headct_molre_cpu``: the exported ``headct_molre`` ONNX model on Triton's python backend (CPU).

For Triton builds without the onnxruntime backend, such as the server bundled in the
``nvidia-pytriton`` wheel that the tests and CI start. The config (written by
``training.repository``) names the ONNX file of ``headct_molre`` to load (``ONNX_MODEL``, relative
to this model's folder, so both models serve the same file) and the onnxruntime thread counts.

The dynamic batcher hands ``execute`` several requests at once: their volumes run as one batch,
and each request gets exactly one response. A request that cannot run (missing input, wrong type
or shape) gets a ``TritonError`` of its own; if the joint batch fails, each request is run alone,
so one bad study never fails the others.

Triton loads this file alone, so it cannot import the gateway's ``service.contract``: it spells the
input's name and type again, and ``tests/training/test_triton.py`` holds them equal to the
contract's. The outputs' names and types come from the config, which the export step renders
from the contract.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

INPUT_NAME = "CT_VOLUME"
INPUT_DTYPE = np.int16  # HU


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    return {key: value["string_value"] for key, value in config.get("parameters", {}).items()}


class TritonPythonModel:
    """One onnxruntime session per model instance."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = _parameters(config)
        model_dir = Path(args["model_repository"])
        onnx_path = (model_dir / parameters["ONNX_MODEL"]).resolve()
        if not onnx_path.is_file():
            raise pb_utils.TritonModelException(
                f"ONNX_MODEL {parameters['ONNX_MODEL']!r} resolves to {onnx_path}, not a file"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("INTRA_OP_THREADS", "0"))
        options.inter_op_num_threads = int(parameters.get("INTER_OP_THREADS", "0"))
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"]
        )

        volume = next(i for i in config["input"] if i["name"] == INPUT_NAME)
        self.sample_shape = tuple(int(d) for d in volume["dims"])
        self.output_names = [o["name"] for o in config["output"]]
        self.output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]
        }
        missing = set(self.output_names) - {o.name for o in self.session.get_outputs()}
        if missing:
            raise pb_utils.TritonModelException(f"{onnx_path} has no output(s) {sorted(missing)}")
        pb_utils.Logger.log_info(
            f"{args['model_name']} instance {args['model_instance_name']}: loaded {onnx_path}, "
            f"input {INPUT_NAME} [-1, {', '.join(map(str, self.sample_shape))}] INT16, "
            f"intra-op threads {options.intra_op_num_threads or 'default'}"
        )

    def _volume(self, request: Any) -> np.ndarray:
        """The request's INT16 HU batch [b, D, H, W]; ``ValueError`` naming what is wrong."""
        tensor = pb_utils.get_input_tensor_by_name(request, INPUT_NAME)
        if tensor is None:
            raise ValueError(f"the request has no input {INPUT_NAME}")
        volume = tensor.as_numpy()
        if volume.dtype != INPUT_DTYPE:
            raise ValueError(f"{INPUT_NAME} must be INT16 HU, not {volume.dtype}")
        if volume.ndim != 4 or tuple(volume.shape[1:]) != self.sample_shape or not volume.shape[0]:
            raise ValueError(
                f"{INPUT_NAME} has shape {list(volume.shape)}; expected [B, "
                f"{', '.join(map(str, self.sample_shape))}] on the model card's grid"
            )
        return volume

    def _run(self, batch: np.ndarray) -> list[np.ndarray]:
        outputs = self.session.run(self.output_names, {INPUT_NAME: batch})
        return [
            np.ascontiguousarray(value, dtype=self.output_dtypes[name])
            for name, value in zip(self.output_names, outputs, strict=True)
        ]

    def _response(self, outputs: list[np.ndarray], start: int, stop: int) -> Any:
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(value[start:stop]))
            for name, value in zip(self.output_names, outputs, strict=True)
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        volumes: dict[int, np.ndarray] = {}
        for i, request in enumerate(requests):
            try:
                volumes[i] = self._volume(request)
            except ValueError as exc:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))

        if len(volumes) == 1:
            (i, volume), *_ = volumes.items()
            responses[i] = self._alone(volume)
        elif volumes:
            try:
                outputs = self._run(np.concatenate(list(volumes.values())))
            except Exception as exc:  # onnxruntime raises its own exception types
                pb_utils.Logger.log_warn(
                    f"a batch of {len(volumes)} requests failed ({exc}); running each alone"
                )
                for i, volume in volumes.items():
                    responses[i] = self._alone(volume)
                return responses
            start = 0
            for i, volume in volumes.items():
                stop = start + volume.shape[0]
                responses[i] = self._response(outputs, start, stop)
                start = stop
        return responses

    def _alone(self, volume: np.ndarray) -> Any:
        """One request's volume run by itself: its result or its own error."""
        try:
            return self._response(self._run(volume), 0, volume.shape[0])
        except Exception as exc:
            pb_utils.Logger.log_error(f"inference failed: {exc}")
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"inference failed: {exc}")
            )

    def finalize(self) -> None:
        pb_utils.Logger.log_info("headct_molre_cpu: releasing the onnxruntime session")
        self.session = None
