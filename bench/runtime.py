"""Model runtime on CPU: how the exported MoLRE model runs, and what serving it by Triton costs.

For one study (batch 1) on the model card's grid, medians of interleaved rounds:

(a) onnxruntime against PyTorch eager, the same network (ratio of times);
(b) MoLRE against the same network with its experts removed (frozen backbone, pooling and head;
    exported the same way): the adapters' cost in onnxruntime;
(c) int8 (dynamic quantisation) against fp32 in onnxruntime;
(d) the bundled Triton (nvidia-pytriton wheel, python backend ``headct_molre_cpu``, HTTP with
    binary INT16 tensors) against embedded onnxruntime, at batch 1 and with 8 concurrent clients
    (one study each; throughput in studies/s).

The model: the newest version of ``--name`` in ``--repository`` (default: this repository's
``model_repository/headct_molre``), whose PyTorch twin for (a) and (b) is rebuilt from its card
(same architecture, random weights: timing does not depend on the values); or ``--run RUN_DIR``,
exported first into a temporary repository. GPU timings (onnxruntime-gpu's CUDA and TensorRT
providers on a ViT-B-size MoLRE over 32 slices) need a GPU and are not measured here.

Run: ``python -m bench.runtime``. Results: bench/results/runtime.{json,md}. The machines are
shared: compare the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from bench.common import interleaved, median, write_result
from service.backends.onnx import newest_version, read_card
from service.contract import INPUT_DTYPE, INPUT_NAME, TRITON_TYPES, output_names
from service.model_card import ModelCard
from service.preprocess import ModelGrid
from service.settings import DEFAULT_MODEL_REPOSITORY
from training.export import ServingGraph, export_onnx, export_run, quantize_int8, synthetic_volumes
from training.model import HeadCTModel, build_model
from training.molre import MoLREConfig
from training.repository import CPU_SUFFIX, MODEL_FILENAME

CLIENTS = 8
GPU_NOTE = (
    "GPU timings (onnxruntime-gpu CUDA and TensorRT providers, ViT-B-size MoLRE on 32 slices) "
    "need a GPU: not measured on this machine."
)


def model_from_card(card: ModelCard) -> HeadCTModel:
    """The card's architecture with random weights (enough to time it)."""
    adapter = card.adapter
    molre = None
    if adapter.kind in ("lora", "molre"):
        molre = MoLREConfig(
            experts=adapter.experts,
            rank=adapter.rank or 2,
            alpha=adapter.alpha or 4.0,
            dropout=0.0,
            target_modules=tuple(adapter.targets),
        )
    return build_model(
        card.backbone.name, adapter.kind, molre, slice_head=adapter.slice_head
    ).eval()


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle onnxruntime threads spin-wait by default; on 2 cores that steals time from whatever
    # case runs next (PyTorch's threads, another session), so the cases here do not spin.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _onnx_case(session: ort.InferenceSession, volume: np.ndarray) -> Callable[[], object]:
    # Every output the graph has: the five, and SLICE_SCORES in a slice-head model (the gateway
    # fetches all of them).
    return lambda: session.run(None, {INPUT_NAME: volume})


def _eager_case(model: HeadCTModel, volume: np.ndarray) -> Callable[[], object]:
    graph = ServingGraph(model).eval()
    tensor = torch.from_numpy(volume)

    def run() -> object:
        with torch.no_grad():
            return graph(tensor)

    return run


class _TritonClients:
    """One tritonclient per thread (the HTTP client is not shared between threads)."""

    def __init__(self, url: str, model: str, names: tuple[str, ...]) -> None:
        self.url, self.model, self.names = url, model, names
        self.local = threading.local()
        self.clients: list[Any] = []

    def infer(self, volume: np.ndarray) -> object:
        import tritonclient.http as triton_http

        client = getattr(self.local, "client", None)
        if client is None:
            client = self.local.client = triton_http.InferenceServerClient(self.url)
            self.clients.append(client)
        tensor = triton_http.InferInput(INPUT_NAME, list(volume.shape), TRITON_TYPES[INPUT_DTYPE])
        tensor.set_data_from_numpy(volume, binary_data=True)
        outputs = [triton_http.InferRequestedOutput(n, binary_data=True) for n in self.names]
        result = client.infer(self.model, [tensor], outputs=outputs)
        return [result.as_numpy(n) for n in self.names]

    def close(self) -> None:
        for client in self.clients:
            client.close()


def _concurrent(pool: ThreadPoolExecutor, call: Callable[[np.ndarray], object], volume: np.ndarray):
    def run() -> None:
        for future in [pool.submit(call, volume) for _ in range(CLIENTS)]:
            future.result()

    return run


def _model_timings(
    card: ModelCard, folder: Path, scratch: Path, rounds: int, volume: np.ndarray, threads: int
) -> dict[str, float]:
    """(a)-(c), PyTorch and onnxruntime on the same number of threads."""
    torch.set_num_threads(threads or torch.get_num_threads())
    grid = ModelGrid(card.grid.depth, card.grid.height, card.grid.width)
    model = model_from_card(card)
    without = build_model(card.backbone.name, "probe", slice_head=card.adapter.slice_head).eval()
    export_onnx(without, grid, scratch / "no_experts.onnx")
    int8_path = folder / "model.int8.onnx"
    if not int8_path.is_file():
        int8_path = scratch / "model.int8.onnx"
        quantize_int8(folder / MODEL_FILENAME, int8_path)
    cases = {
        "torch_eager": _eager_case(model, volume),
        "onnxruntime": _onnx_case(_session(folder / MODEL_FILENAME, threads), volume),
        "onnxruntime_no_experts": _onnx_case(
            _session(scratch / "no_experts.onnx", threads), volume
        ),
        "onnxruntime_int8": _onnx_case(_session(int8_path, threads), volume),
    }
    times = interleaved(cases, rounds)
    return {name: median(values) for name, values in times.items()}


def _triton_timings(
    repository: Path, name: str, folder: Path, rounds: int, volume: np.ndarray
) -> dict[str, float]:
    """(d), the embedded session with the thread count the Triton model's config gives its own."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from testing.triton_local import triton_server

    config_text = (repository / (name + CPU_SUFFIX) / "config.pbtxt").read_text()
    config = text_format.Parse(config_text, model_config_pb2.ModelConfig())
    threads = int(config.parameters["INTRA_OP_THREADS"].string_value or 0)
    session = _session(folder / MODEL_FILENAME, threads)
    with ExitStack() as stack:
        server = stack.enter_context(triton_server(repository, [name + CPU_SUFFIX]))
        names = output_names(read_card(folder, None).adapter.slice_head)
        clients = _TritonClients(server.http_url, name + CPU_SUFFIX, names)
        stack.callback(clients.close)
        pool = stack.enter_context(ThreadPoolExecutor(CLIENTS))
        embedded = _onnx_case(session, volume)
        cases = {
            "embedded_batch1": embedded,
            "triton_batch1": lambda: clients.infer(volume),
            "embedded_8_clients": _concurrent(pool, lambda v: embedded(), volume),
            "triton_8_clients": _concurrent(pool, clients.infer, volume),
        }
        times = interleaved(cases, rounds)
    return {case: median(values) for case, values in times.items()}


def _table(
    card: ModelCard, model: dict[str, float], triton: dict[str, float] | None, threads: int
) -> str:
    ms = {k: v * 1000 for k, v in model.items()}
    lines = [
        f"# Runtime benchmark ({card.name} v{card.version}: {card.adapter.kind} K="
        f"{card.adapter.experts} on {card.backbone.name}, grid {card.grid.depth}x"
        f"{card.grid.height}x{card.grid.width}, one study, CPU)",
        "",
        f"(a)-(c) on {threads} thread(s) each; (d) as the Triton model's config sets its "
        "onnxruntime threads, for both.",
        "",
        "| comparison | A ms | B ms | B / A time |",
        "|---|---|---|---|",
        f"| (a) onnxruntime (A) vs PyTorch eager (B) | {ms['onnxruntime']:.1f} | "
        f"{ms['torch_eager']:.1f} | {model['torch_eager'] / model['onnxruntime']:.2f}x |",
        f"| (b) experts removed (A) vs MoLRE (B), onnxruntime | {ms['onnxruntime_no_experts']:.1f}"
        f" | {ms['onnxruntime']:.1f} | "
        f"{model['onnxruntime'] / model['onnxruntime_no_experts']:.2f}x |",
        f"| (c) int8 (A) vs fp32 (B), onnxruntime | {ms['onnxruntime_int8']:.1f} | "
        f"{ms['onnxruntime']:.1f} | {model['onnxruntime'] / model['onnxruntime_int8']:.2f}x |",
    ]
    if triton:
        t = {k: v * 1000 for k, v in triton.items()}
        lines += [
            f"| (d) embedded (A) vs Triton (B), batch 1 | {t['embedded_batch1']:.1f} | "
            f"{t['triton_batch1']:.1f} | "
            f"{triton['triton_batch1'] / triton['embedded_batch1']:.2f}x |",
            f"| (d) embedded (A) vs Triton (B), {CLIENTS} concurrent clients (wall time) | "
            f"{t['embedded_8_clients']:.1f} | {t['triton_8_clients']:.1f} | "
            f"{triton['triton_8_clients'] / triton['embedded_8_clients']:.2f}x |",
            "",
            f"Throughput with {CLIENTS} clients: embedded "
            f"{CLIENTS / triton['embedded_8_clients']:.1f} studies/s, Triton "
            f"{CLIENTS / triton['triton_8_clients']:.1f} studies/s.",
        ]
    else:
        lines += ["", "(d) Triton: not run (--no-triton)."]
    lines += [
        "",
        GPU_NOTE,
        "Shared 2-core machine: compare ratios, not absolute times.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=DEFAULT_MODEL_REPOSITORY)
    parser.add_argument("--name", default="headct_molre")
    parser.add_argument("--run", type=Path, help="Export this run folder first and time it.")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="Threads for PyTorch and onnxruntime in (a)-(c); 0: the libraries' defaults. One "
        "thread keeps the ratios steady on a shared machine.",
    )
    parser.add_argument("--no-triton", action="store_true", help="Skip the Triton comparison.")
    parser.add_argument(
        "--synthetic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="With --run: the card's synthetic label, for runs that did not record their data.",
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory(prefix="headct-bench-") as tmp:
        scratch = Path(tmp)
        repository = args.repository
        if args.run:
            repository = scratch / "repository"
            export_run(args.run, repository, name=args.name, int8=True, synthetic=args.synthetic)
        folder = newest_version(repository / args.name)
        card = read_card(folder, None)
        grid = ModelGrid(card.grid.depth, card.grid.height, card.grid.width)
        volume = synthetic_volumes(grid, 1, seed=3)
        print(f"timing {folder / MODEL_FILENAME} on {grid.depth}x{grid.height}x{grid.width}")
        model = _model_timings(card, folder, scratch, args.rounds, volume, args.threads)
        triton = None
        if not args.no_triton:
            triton = _triton_timings(repository, args.name, folder, args.rounds, volume)

    print(GPU_NOTE)
    table = _table(card, model, triton, args.threads)
    payload = {
        "model": {"name": card.name, "version": card.version, "backbone": card.backbone.name},
        "adapter": {"kind": card.adapter.kind, "experts": card.adapter.experts},
        "grid": [card.grid.depth, card.grid.height, card.grid.width],
        "rounds": args.rounds,
        "threads_a_to_c": args.threads,
        "median_s": model | (triton or {}),
        "ratios": {
            "torch_over_onnxruntime": model["torch_eager"] / model["onnxruntime"],
            "molre_over_no_experts": model["onnxruntime"] / model["onnxruntime_no_experts"],
            "fp32_over_int8": model["onnxruntime"] / model["onnxruntime_int8"],
        }
        | (
            {
                "triton_over_embedded_batch1": triton["triton_batch1"] / triton["embedded_batch1"],
                "triton_over_embedded_8_clients": triton["triton_8_clients"]
                / triton["embedded_8_clients"],
            }
            if triton
            else {}
        ),
        "gpu": GPU_NOTE,
    }
    path = write_result("runtime", payload, table)
    print(table)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
