"""The Triton model repository writer: a checked export becomes a new version of two models.

    <repository>/
      headct_molre/              ONNX on Triton's onnxruntime backend (GPU in production)
        config.pbtxt             rendered here; carries the model card
        <N>/model.onnx           (+ model.fp16.onnx, model.int8.onnx), card in the metadata
        <N>/model_card.json
      headct_molre_cpu/          the same model.onnx on Triton's python backend (CPU), for Triton
        config.pbtxt             builds without the onnxruntime backend (the nvidia-pytriton wheel)
        1/model.py               copied from this repository's model_repository/

``publish`` is the one function that writes the card: into every ONNX file of the version, into
``model_card.json`` beside them, and into both ``config.pbtxt`` files (parameter
``headct_model_card``), always the same JSON text, so the three cannot drift. A version folder is
assembled under a temporary name and renamed into place, so a Triton polling the repository never
sees half a model; an existing version is never overwritten.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from service.contract import (
    INPUT_DTYPE,
    INPUT_NAME,
    OUTPUT_DTYPE,
    TRITON_TYPES,
    input_shape,
    output_shapes,
)
from service.model_card import CARD_FILENAME, CARD_METADATA_KEY, ModelCard

MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.pbtxt"
CPU_SUFFIX = "_cpu"
# The Triton venv (requirements/triton-cpu.txt) at the root of this repository, seen from
# <repo>/model_repository/headct_molre_cpu; Triton substitutes the model's folder for the variable.
DEFAULT_EXECUTION_ENV = "$$TRITON_MODEL_DIRECTORY/../../.venv-triton"
CPU_MODEL_SOURCE = (
    Path(__file__)
    .resolve()
    .parent.parent.joinpath("model_repository", "headct_molre_cpu", "1", "model.py")
)


@dataclass(frozen=True)
class Batching:
    """Triton's dynamic batching and queue policy for one model."""

    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int
    # A request waiting longer is rejected (the gateway answers 504/503) rather than served late.
    queue_timeout_us: int
    # Beyond this many waiting requests Triton refuses at once (the gateway answers 429).
    max_queue_size: int
    warmup_batch_sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        sizes = (*self.preferred_batch_sizes, *self.warmup_batch_sizes)
        if self.max_batch_size < 1 or any(not 1 <= s <= self.max_batch_size for s in sizes):
            raise ValueError(
                f"batch sizes {sizes} must lie in [1, max_batch_size={self.max_batch_size}]"
            )


# One GPU instance fills best at 4-8 studies; 2 ms of waiting costs little against ~20 ms of work.
GPU_BATCHING = Batching(8, (4, 8), 2_000, 10_000_000, 32, (1, 8))
# On CPU a 32-slice study takes most of a second: wait a little longer, queue less, and warm with
# one study only (a full batch would delay readiness by several seconds).
CPU_BATCHING = Batching(8, (2, 4), 5_000, 20_000_000, 16, (1,))


@dataclass(frozen=True)
class ModelVersion:
    """What ``publish`` wrote."""

    folder: Path  # <repository>/<name>/<N>
    model: Path  # .../<N>/model.onnx
    card: Path  # .../<N>/model_card.json
    config: Path  # <repository>/<name>/config.pbtxt
    cpu_config: Path  # <repository>/<name>_cpu/config.pbtxt


def next_version(model_folder: Path) -> int:
    """One more than the highest numeric version folder (1 for a new model)."""
    if not model_folder.is_dir():
        return 1
    versions = [int(p.name) for p in model_folder.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def _pbtxt_string(text: str) -> str:
    """A protobuf text-format string literal; ``text`` is ASCII (the card JSON escapes the rest)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _tensor(name: str, dtype: np.dtype[Any], dims: tuple[int, ...]) -> str:
    return f'  {{ name: "{name}" data_type: TYPE_{TRITON_TYPES[dtype]} dims: {_dims(dims)} }}'


def _io(card: ModelCard) -> str:
    """Input and outputs without the batch dimension (Triton adds it: max_batch_size > 0)."""
    volume = _tensor(INPUT_NAME, INPUT_DTYPE, input_shape(card.grid.to_model_grid()))
    outputs = ",\n".join(
        _tensor(name, OUTPUT_DTYPE, dims)
        for name, dims in output_shapes(
            card.grid.depth, card.adapter.experts, card.adapter.slice_head
        ).items()
    )
    return f"input [\n{volume}\n]\noutput [\n{outputs}\n]\n"


def _batching(batching: Batching) -> str:
    return (
        "dynamic_batching {\n"
        f"  preferred_batch_size: {_dims(batching.preferred_batch_sizes)}\n"
        f"  max_queue_delay_microseconds: {batching.max_queue_delay_us}\n"
        "  default_queue_policy {\n"
        "    timeout_action: REJECT\n"
        f"    default_timeout_microseconds: {batching.queue_timeout_us}\n"
        "    allow_timeout_override: true\n"
        f"    max_queue_size: {batching.max_queue_size}\n"
        "  }\n"
        "}\n"
    )


def _warmup(card: ModelCard, batching: Batching) -> str:
    """Zero-HU (water) volumes of the full shape: the model is ready only once it has run."""
    shape = _dims(input_shape(card.grid.to_model_grid()))
    dtype = TRITON_TYPES[INPUT_DTYPE]
    samples = ",\n".join(
        f'  {{ name: "zero_volume_batch_{size}" batch_size: {size} inputs {{ key: "{INPUT_NAME}" '
        f"value: {{ data_type: TYPE_{dtype} dims: {shape} zero_data: true }} }} }}"
        for size in batching.warmup_batch_sizes
    )
    return f"model_warmup [\n{samples}\n]\n"


def _parameters(values: dict[str, str]) -> str:
    entries = ",\n".join(
        f'  {{ key: "{key}" value: {{ string_value: {_pbtxt_string(value)} }} }}'
        for key, value in values.items()
    )
    return f"parameters [\n{entries}\n]\n"


def _header(card: ModelCard, backend: str) -> str:
    return (
        f"# {card.name} version {card.version} on {backend}. Written by training/repository.py\n"
        "# (headct export): export again rather than edit by hand, or the card drifts.\n"
        f"# {' '.join(card.intended_use.split())}\n"
    )


def render_onnx_config(card: ModelCard, card_json: str, batching: Batching = GPU_BATCHING) -> str:
    """``config.pbtxt`` for ``<name>``: the ONNX file on Triton's onnxruntime backend, on a GPU."""
    return (
        _header(card, "Triton's onnxruntime backend (GPU)")
        + f'name: "{card.name}"\n'
        + 'platform: "onnxruntime_onnx"\n'
        + f"max_batch_size: {batching.max_batch_size}\n"
        + "version_policy: { latest: { num_versions: 1 } }\n"
        + _io(card)
        + "instance_group [ { kind: KIND_GPU count: 1 } ]\n"
        + _batching(batching)
        + "# TensorRT through onnxruntime: usually faster on NVIDIA GPUs, but the first load\n"
        + "# builds engines for minutes (cache them on a volume). Uncomment to enable:\n"
        + "# optimization { execution_accelerators { gpu_execution_accelerator [ {\n"
        + '#   name: "tensorrt"\n'
        + '#   parameters { key: "precision_mode" value: "FP16" }\n'
        + '#   parameters { key: "max_workspace_size_bytes" value: "4294967296" }\n'
        + '#   parameters { key: "trt_engine_cache_enable" value: "1" }\n'
        + '#   parameters { key: "trt_engine_cache_path" value: "/cache/tensorrt" }\n'
        + "# } ] } }\n"
        + _warmup(card, batching)
        + _parameters({CARD_METADATA_KEY: card_json})
    )


def render_python_config(
    card: ModelCard,
    card_json: str,
    *,
    execution_env: str = DEFAULT_EXECUTION_ENV,
    intra_op_threads: int = 0,
    batching: Batching = CPU_BATCHING,
) -> str:
    """``config.pbtxt`` for ``<name>_cpu``: the same ONNX file on Triton's python backend."""
    onnx_model = f"../{card.name}/{card.version}/{MODEL_FILENAME}"
    return (
        _header(card, "Triton's python backend (CPU)")
        + f'name: "{card.name}{CPU_SUFFIX}"\n'
        + 'backend: "python"\n'
        + f"max_batch_size: {batching.max_batch_size}\n"
        + _io(card)
        + "instance_group [ { kind: KIND_CPU count: 1 } ]\n"
        + _batching(batching)
        + _warmup(card, batching)
        + _parameters(
            {
                # The venv holding numpy<2 and onnxruntime (requirements/triton-cpu.txt).
                "EXECUTION_ENV_PATH": execution_env,
                # Relative to this model's folder: the very file headct_molre serves.
                "ONNX_MODEL": onnx_model,
                "INTRA_OP_THREADS": str(intra_op_threads),
                "INTER_OP_THREADS": "1",
                CARD_METADATA_KEY: card_json,
            }
        )
    )


def _write_text(path: Path, text: str) -> None:
    """Write through a temporary file and rename: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def embed_card(onnx_path: Path, card_json: str) -> None:
    """Set the card in an ONNX file's ``metadata_props`` (replacing any earlier card)."""
    model = onnx.load(str(onnx_path))
    kept = [p for p in model.metadata_props if p.key != CARD_METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=CARD_METADATA_KEY, value=card_json)
    onnx.save(model, str(onnx_path))


def publish(
    repository: Path,
    card: ModelCard,
    staged: Path,
    *,
    execution_env: str = DEFAULT_EXECUTION_ENV,
    intra_op_threads: int = 0,
) -> ModelVersion:
    """Install the ONNX files in ``staged`` (``model.onnx`` and any variants) as version
    ``card.version`` of ``card.name`` and point ``<name>_cpu`` at it, writing the card everywhere.
    """
    model_folder = repository / card.name
    folder = model_folder / str(card.version)
    if folder.exists():
        raise FileExistsError(f"{folder} exists: a published version is never overwritten")
    onnx_files = sorted(staged.glob("*.onnx"))
    if staged / MODEL_FILENAME not in onnx_files:
        raise FileNotFoundError(f"no {MODEL_FILENAME} in {staged}")
    if not CPU_MODEL_SOURCE.is_file():
        raise FileNotFoundError(f"the python backend model {CPU_MODEL_SOURCE} is missing")

    card_json = card.to_json()
    model_folder.mkdir(parents=True, exist_ok=True)
    partial = model_folder / f".{card.version}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        for path in onnx_files:
            shutil.copy2(path, partial / path.name)
            embed_card(partial / path.name, card_json)
        (partial / CARD_FILENAME).write_text(card_json)
        os.rename(partial, folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise

    config = model_folder / CONFIG_FILENAME
    _write_text(config, render_onnx_config(card, card_json))
    cpu_folder = repository / f"{card.name}{CPU_SUFFIX}"
    cpu_config = cpu_folder / CONFIG_FILENAME
    _write_text(
        cpu_config,
        render_python_config(
            card, card_json, execution_env=execution_env, intra_op_threads=intra_op_threads
        ),
    )
    target = cpu_folder / "1" / "model.py"
    if not (target.exists() and target.samefile(CPU_MODEL_SOURCE)):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(CPU_MODEL_SOURCE, target)
    return ModelVersion(folder, folder / MODEL_FILENAME, folder / CARD_FILENAME, config, cpu_config)
