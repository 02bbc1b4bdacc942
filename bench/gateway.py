"""Gateway overhead and throughput: a 32-slice 256x256 synthetic head CT, embedded ONNX backend.

(a) latency: p50/p95 of ``POST /v1/triage`` (multipart, 32 files) against a real ``headct serve``
    (uvicorn) subprocess, interleaved with (b) the same study through the triage pipeline the
    gateway runs (``service.pipeline``: ingest, onnxruntime, postprocess) in this process.
    (a)/(b) at the median is the gateway's overhead; target <= 1.25x.
(c) throughput with 1, 4 and 16 concurrent clients; under 16 no request may fail except with 429,
    and the server's RSS is sampled throughout to show it stays bounded.
(d) the same throughput levels for a gateway with the Triton backend (``HEADCT_BACKEND=triton``)
    against the real Triton server bundled in the nvidia-pytriton wheel (python backend model
    ``headct_molre_cpu``, CPU), interleaved level by level with a gateway on the embedded backend
    serving the same model file.

(a)-(c) use the model in ``model_repository/`` if there is one, else the test fixture model
(window means through linear maps, so inference is nearly free and the ratio is the harshest
case). (d) needs a model Triton can serve: the demo model with its ``headct_molre_cpu`` config if
``model_repository/`` has them, else a tiny DINOv2 MoLRE exported on the demo's 32x128x128 grid.
Run: ``python -m bench.gateway``. Results go to bench/results/gateway.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import psutil

from bench.common import interleaved, median, write_result
from service.backends.onnx import OnnxBackend
from service.pipeline import TriagePipeline
from service.settings import DEFAULT_MODEL_REPOSITORY
from synth import SynthOptions, generate_study, write_study
from testing.gateway_process import GatewayProcess, gateway_process

ROOT = Path(__file__).resolve().parent.parent
MODEL = "headct_molre"
TRITON_MODEL = "headct_molre_cpu"
CLIENTS = (1, 4, 16)
TINY_GRID = (32, 128, 128)  # the demo model's grid


def _model_repository(tmp: Path) -> tuple[Path, str]:
    real = DEFAULT_MODEL_REPOSITORY / MODEL
    if real.is_dir() and any(
        p.name.isdigit() and (p / "model.onnx").is_file() for p in real.iterdir()
    ):
        return DEFAULT_MODEL_REPOSITORY, "model_repository (demo model)"
    from testing.onnx_fixture import write_fixture_repository

    write_fixture_repository(tmp / "repo", depth=32, height=256, width=256)
    return tmp / "repo", "test fixture model (window means; near-zero inference)"


def _triton_repository(tmp: Path) -> tuple[Path, str]:
    """A repository holding ``headct_molre`` and ``headct_molre_cpu`` (its config included)."""
    if (DEFAULT_MODEL_REPOSITORY / TRITON_MODEL / "config.pbtxt").is_file() and any(
        p.name.isdigit() and (p / "model.onnx").is_file()
        for p in (DEFAULT_MODEL_REPOSITORY / MODEL).glob("*")
    ):
        return DEFAULT_MODEL_REPOSITORY, "model_repository (demo model)"
    from testing.tiny_run import make_tiny_run
    from testing.triton_local import triton_venv
    from training.export import export_run

    run = make_tiny_run(tmp / "tiny_run", grid=TINY_GRID)
    export_run(run, tmp / "triton_repo", execution_env=str(triton_venv()), parity_studies=1)
    grid = "x".join(map(str, TINY_GRID))
    return tmp / "triton_repo", f"tiny DINOv2 MoLRE exported on {grid} (untrained weights)"


@contextmanager
def _gateway(repository: Path, log: Path, **settings: str) -> Iterator[GatewayProcess]:
    """``headct serve`` over ``repository`` until the block ends (``testing.gateway_process``:
    ready on /readyz, SIGTERM after); ``settings`` become HEADCT_<NAME> variables."""
    env = {
        **os.environ,
        "HEADCT_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
        **{f"HEADCT_{k.upper()}": v for k, v in settings.items()},
    }
    command = [sys.executable, "-m", "service.cli", "serve", "--model-repository", str(repository)]
    with gateway_process(command, log=log, env=env, cwd=ROOT) as gateway:
        yield gateway


class RssSampler:
    """Samples a process's resident memory every ``interval`` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.process.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _throughput(url: str, parts: list[Any], clients: int, per_client: int) -> dict[str, Any]:
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx2.Client(timeout=300) as http:
            for _ in range(per_client):
                started = time.perf_counter()
                try:
                    status = http.post(url + "/v1/triage", files=parts).status_code
                except httpx2.HTTPError:
                    status = -1
                with lock:
                    statuses[status] += 1
                    if status == 200:
                        latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": clients * per_client,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "ok_per_s": statuses[200] / elapsed,
        "ok_p50_s": float(np.percentile(latencies, 50)) if latencies else None,
        "unexpected_failures": sum(v for k, v in statuses.items() if k not in (200, 429)),
    }


def _backend_comparison(
    tmp: Path, parts: list[Any], per_client: int
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(d): a gateway on Triton and one embedded, same model file, level by level in turn."""
    from testing.triton_local import triton_server

    repository, label = _triton_repository(tmp)
    backends: dict[str, dict[str, str]] = {
        "onnx": {"backend": "onnx"},
        "triton": {"backend": "triton", "model_name": TRITON_MODEL},
    }
    rows: list[dict[str, Any]] = []
    with triton_server(repository, [TRITON_MODEL], log_dir=tmp) as triton:
        backends["triton"]["triton_url"] = triton.http_url
        with ExitStack() as stack:
            servers = {
                name: stack.enter_context(_gateway(repository, tmp / f"{name}.log", **settings))
                for name, settings in backends.items()
            }
            for server in servers.values():  # warm both paths
                _throughput(server.url, parts, 1, 1)
            for clients in CLIENTS:
                for name, server in servers.items():
                    with RssSampler(server.process.pid) as rss:
                        level = _throughput(server.url, parts, clients, per_client)
                    rows.append(
                        {"backend": name, **level, "server_rss_peak_mb": max(rss.samples) / 2**20}
                    )
    info = {
        "model": label,
        "triton": "the Triton server bundled in nvidia-pytriton, python backend "
        f"({TRITON_MODEL}: onnxruntime on CPU, dynamic batching), same host",
    }
    return info, rows


def _backend_table(info: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    embedded = {r["clients"]: r["ok_per_s"] for r in rows if r["backend"] == "onnx"}
    return [
        f"## Triton backend vs embedded ({info['model']})",
        "",
        f"Gateway with `HEADCT_BACKEND=triton` against {info['triton']}, and a gateway on the",
        "embedded onnxruntime backend serving the same model file; levels run in turn.",
        "",
        "| backend | clients | requests | 200/s | vs embedded | p50 of 200s (s) | statuses "
        "| unexpected failures | gateway RSS peak MiB |",
        "|---|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['backend']} | {r['clients']} | {r['requests']} | {r['ok_per_s']:.2f} | "
            f"{r['ok_per_s'] / (embedded[r['clients']] or float('nan')):.2f}x | "
            f"{(r['ok_p50_s'] or float('nan')):.3f} | {r['statuses']} | "
            f"{r['unexpected_failures']} | {r['server_rss_peak_mb']:.0f} |"
            for r in rows
        ),
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--per-client", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        repository, model_label = _model_repository(tmp)
        options = SynthOptions(slices=32, matrix=256)
        study = generate_study(np.random.default_rng(0), options)
        files = write_study(study, tmp / "study", options, np.random.default_rng(1))
        parts = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in files]
        upload_mb = sum(len(p[1][1]) for p in parts) / 1e6

        backend = OnnxBackend(repository / MODEL)
        grid = backend.card.grid.to_model_grid()
        pipeline = TriagePipeline(backend)

        def in_process() -> None:
            pipeline.run(files)

        with _gateway(repository, tmp / "gateway.log") as served:
            server, url = served.process, served.url
            with httpx2.Client(timeout=300) as http:

                def gateway() -> None:
                    response = http.post(url + "/v1/triage", files=parts)
                    assert response.status_code == 200, response.text

                times = interleaved({"gateway": gateway, "in_process": in_process}, args.rounds)
            latency = {
                name: {
                    "p50_ms": float(np.percentile(v, 50)) * 1e3,
                    "p95_ms": float(np.percentile(v, 95)) * 1e3,
                }
                for name, v in times.items()
            }
            ratio = median(times["gateway"]) / median(times["in_process"])
            baseline = psutil.Process(server.pid).memory_info().rss
            levels = []
            for clients in CLIENTS:
                with RssSampler(server.pid) as rss:
                    level = _throughput(url, parts, clients, args.per_client)
                level["server_rss_peak_mb"] = max(rss.samples) / 2**20
                levels.append(level)
            peak = max(e["server_rss_peak_mb"] for e in levels) * 2**20
        triton_info, triton_rows = _backend_comparison(tmp, parts, args.per_client)

    payload = {
        "model": model_label,
        "study": {"slices": len(files), "matrix": 256, "upload_mb": round(upload_mb, 2)},
        "grid": [grid.depth, grid.height, grid.width],
        "latency": latency,
        "gateway_over_in_process_p50": ratio,
        "target_ratio": 1.25,
        "throughput": levels,
        "server_rss_mb": {"before": baseline / 2**20, "peak": peak / 2**20},
        "server_settings": "defaults: 2 concurrent jobs, 8 queued, onnxruntime default threads",
        "backends": {**triton_info, "throughput": triton_rows},
    }
    lines = [
        f"# Gateway benchmark (32-slice 256x256 synthetic study, {upload_mb:.1f} MB upload; "
        f"{model_label})",
        "",
        "| path | p50 ms | p95 ms |",
        "|---|---|---|",
        *(f"| {k} | {v['p50_ms']:.1f} | {v['p95_ms']:.1f} |" for k, v in latency.items()),
        "",
        f"Gateway / in-process at p50: **{ratio:.2f}x** (target <= 1.25x).",
        "",
        "| clients | requests | 200/s | p50 of 200s (s) | statuses | unexpected failures "
        "| server RSS peak MiB |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {e['clients']} | {e['requests']} | {e['ok_per_s']:.2f} | "
            f"{(e['ok_p50_s'] or float('nan')):.2f} | {e['statuses']} | "
            f"{e['unexpected_failures']} | {e['server_rss_peak_mb']:.0f} |"
            for e in levels
        ),
        "",
        f"Server RSS: {baseline / 2**20:.0f} MiB before the load, peak {peak / 2**20:.0f} MiB.",
        "",
        *_backend_table(triton_info, triton_rows),
        "Shared 2-core machine: compare ratios, not absolute times.",
        "",
    ]
    table = "\n".join(lines)
    path = write_result("gateway", payload, table)
    print(table)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
