"""Batch scoring throughput: ``headct batch`` against posting the same studies to the gateway.

200 synthetic 32-slice studies (``--studies`` for a quick run) are scored by the real command
(``python -m service.cli batch``, a subprocess) with 1 and 2 worker processes, on the embedded
onnxruntime backend and on the Triton server bundled in the nvidia-pytriton wheel (python backend
``headct_molre_cpu``, CPU, ``HEADCT_TRITON_VENV``), and posted one by one to a real ``headct
serve`` (embedded) by 2 client threads. Reported: studies per second, the ratio of the batch runs
to the gateway (target >= 1.5x), where each run's time went (the summary's stage times: read,
select, resample and, on the embedded CPU path, inference summed over the workers; Triton's
inference and the writing in the scoring process; how long it waited for the workers), the CPU
seconds per study, the share of the machine's CPU other processes used during each run, and a
projection to the paper's 70,000-study cohort on a 16-core node (an estimate, marked as one). The
demo model in ``model_repository/``.

Run: ``python -m bench.batch [--studies 200]``. Results go to bench/results/batch.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx2
import psutil

from bench.common import machine_busy_s, others_share, write_result
from service.settings import DEFAULT_MODEL_REPOSITORY
from synth import SynthOptions
from synth.study import synthesize
from testing.gateway_process import gateway_process

ROOT = Path(__file__).resolve().parent.parent
TRITON_MODEL = "headct_molre_cpu"
COHORT = 70_000
NODE_CORES = 16
BATCH_SIZE = 4


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _server_cpu_s(pid: int | None) -> float:
    """CPU seconds of a server process that runs beside the measured one (Triton), so far."""
    if pid is None:
        return 0.0
    server = psutil.Process(pid)
    total = 0.0
    for process in (server, *server.children(recursive=True)):  # the python-backend stubs
        times = process.cpu_times()
        total += times.user + times.system
    return total


def _batch(
    archive: Path, out: Path, workers: int, extra: list[str], server: int | None = None
) -> dict[str, Any]:
    """One real ``headct batch`` run; its summary with the wall time and the CPU time it cost
    (``server``: the pid of the Triton server it used, whose CPU time is counted too)."""
    command = [
        sys.executable,
        "-m",
        "service.cli",
        "batch",
        str(archive),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--batch-size",
        str(BATCH_SIZE),
        "--no-progress",
        *extra,
    ]
    load = os.getloadavg()[0]
    cpu = _cpu_s() + _server_cpu_s(server)
    busy, own = machine_busy_s(), _own_cpu_s()
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    run_cpu = _cpu_s() + _server_cpu_s(server) - cpu
    others = round(others_share(machine_busy_s() - busy, run_cpu + _own_cpu_s() - own, wall), 3)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    run = summary["this_run"]
    return {
        "workers": workers,
        "studies": summary["studies"],
        "triaged": summary["by_status"].get("triaged", 0),
        "command_wall_s": round(wall, 2),
        "studies_per_s": round(summary["studies"] / wall, 3),
        "cpu_s_per_study": round(run_cpu / summary["studies"], 3),
        "others_cpu_share": others,
        "load_1m_before": round(load, 2),
        "scan_s": run["scan_s"],
        "stage_s": run["stage_s"],
        "waiting_for_ingest_s": run["waiting_for_ingest_s"],
    }


def _gateway(studies: list[Path], clients: int) -> dict[str, Any]:
    """The studies posted one by one (multipart, one part per file) by ``clients`` threads."""
    env = {**os.environ, "HEADCT_LOG_LEVEL": "WARNING", "HEADCT_BACKEND": "onnx"}
    pending = list(reversed(studies))
    lock = threading.Lock()
    statuses: dict[int, int] = {}
    load = os.getloadavg()[0]
    cpu = _cpu_s()
    busy, own, sampled = machine_busy_s(), _own_cpu_s(), time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as tmp,
        gateway_process(
            [sys.executable, "-m", "service.cli", "serve"],
            log=Path(tmp) / "gw.log",
            env=env,
            cwd=ROOT,
        ) as gateway,
    ):

        def client() -> None:
            with httpx2.Client(timeout=600) as http:
                while True:
                    with lock:
                        if not pending:
                            return
                        study = pending.pop()
                    parts = [
                        ("files", (p.name, p.read_bytes(), "application/dicom"))
                        for p in sorted(study.glob("*.dcm"))
                    ]
                    status = http.post(gateway.url + "/v1/triage", files=parts).status_code
                    with lock:
                        statuses[status] = statuses.get(status, 0) + 1

        threads = [threading.Thread(target=client) for _ in range(clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
    # counted once the gateway has exited (its CPU time joins this process's children's then)
    run_cpu = _cpu_s() - cpu
    elapsed = time.perf_counter() - sampled
    others = round(others_share(machine_busy_s() - busy, run_cpu + _own_cpu_s() - own, elapsed), 3)
    return {
        "clients": clients,
        "studies": len(studies),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "wall_s": round(wall, 2),
        "studies_per_s": round(statuses.get(200, 0) / wall, 3),
        "cpu_s_per_study": round(run_cpu / len(studies), 3),
        "others_cpu_share": others,
        "load_1m_before": round(load, 2),
        "note": "CPU s/study includes the gateway's start (counted once it exits)",
    }


def _projection(embedded: dict[str, Any], triton: dict[str, Any]) -> dict[str, Any]:
    """70,000 studies on a 16-core node, from the CPU seconds per study measured here: all cores
    busy at 80% efficiency. Embedded: decode and inference share the CPU. With Triton on a GPU the
    node's CPU only reads studies (read + select + resample per study, from the workers' times)."""
    ingest_s = sum(embedded["stage_s"][k] for k in ("read", "select", "resample"))
    ingest_per_study = ingest_s / embedded["studies"]
    usable = NODE_CORES * 0.8
    cpu_only = usable / embedded["cpu_s_per_study"]
    gpu_node = usable / ingest_per_study
    return {
        "estimate": True,
        "assumptions": f"{NODE_CORES} cores at 80% use; CPU seconds per study as measured on "
        "this shared 2-core machine; same study size (32 slices); GPU inference not the limit",
        "embedded_cpu_node": {
            "studies_per_s": round(cpu_only, 2),
            "hours": round(COHORT / cpu_only / 3600, 1),
        },
        "gpu_triton_node_ingest_bound": {
            "studies_per_s": round(gpu_node, 2),
            "hours": round(COHORT / gpu_node / 3600, 1),
        },
        "measured_triton_cpu_s_per_study": triton["cpu_s_per_study"],
    }


def _table(payload: dict[str, Any]) -> str:
    gateway = payload["gateway"]
    lines = [
        f"# Batch scoring ({payload['studies']} synthetic 32-slice {payload['matrix']}x"
        f"{payload['matrix']} studies; demo model)",
        "",
        f"Measured on a {os.cpu_count()}-core machine shared with other work; each row says the "
        "share of its CPU that other processes used during that run (measured: the machine's busy "
        "time less the run's own processes'). Compare ratios within this run, not absolute "
        "times. Synthetic phantoms, not for clinical use.",
        "",
        f"Triton runs send batches of {BATCH_SIZE} studies; the embedded CPU backend runs the "
        "model in each worker, one study per call (batching does not pay on a CPU).",
        "",
        "| path | workers | studies/s | vs gateway (2 clients) | CPU s/study | read | select "
        "| resample | inference | write | waited for workers | others' CPU |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in payload["batch"]:
        s = run["stage_s"]
        lines.append(
            f"| batch, {run['backend']} | {run['workers']} | {run['studies_per_s']:.3f} | "
            f"{run['vs_gateway']:.2f}x | {run['cpu_s_per_study']:.2f} | {s['read']:.1f} s | "
            f"{s['select']:.1f} s | {s['resample']:.1f} s | {s['inference']:.1f} s | "
            f"{s['write']:.2f} s | {run['waiting_for_ingest_s']:.1f} s | "
            f"{run['others_cpu_share']:.0%} |"
        )
    for when, run in zip(("before", "after"), gateway["runs"], strict=True):
        lines.append(
            f"| gateway, onnx, one study per request ({when} the batch runs) | 2 clients | "
            f"{run['studies_per_s']:.3f} | {run['studies_per_s'] / gateway['studies_per_s']:.2f}x "
            f"| {run['cpu_s_per_study']:.2f} | | | | | | | {run['others_cpu_share']:.0%} |"
        )
    best = max(payload["batch"], key=lambda r: r["vs_gateway"])
    projection = payload["projection"]
    lines += [
        "",
        f"Best: batch on {best['backend']} with {best['workers']} workers, "
        f"**{best['vs_gateway']:.2f}x** the gateway's throughput with 2 clients (the mean of its "
        "two runs, before and after the batch runs; target >= 1.5x).",
        "",
        "Stage times are seconds summed over the run: read, select and resample over the worker "
        "processes (they overlap each other and inference); inference in the scoring process "
        "(Triton) or summed over the workers (embedded); writing (the journal, then the tables) "
        "in the scoring process; 'waited for workers' is how long that process had no study "
        "to infer or journal. CPU s/study counts every process of the run (the Triton server's "
        "too; the gateway's includes its start).",
        "",
        f"## Projection to {COHORT:,} studies on a {NODE_CORES}-core node (**estimate**)",
        "",
        f"Assumptions: {projection['assumptions']}.",
        "",
        f"- embedded onnxruntime, CPU only: about "
        f"{projection['embedded_cpu_node']['studies_per_s']} studies/s, "
        f"**~{projection['embedded_cpu_node']['hours']} h** (estimate)",
        f"- Triton on a GPU, the node's CPU reading studies: about "
        f"{projection['gpu_triton_node_ingest_bound']['studies_per_s']} studies/s, "
        f"**~{projection['gpu_triton_node_ingest_bound']['hours']} h** (estimate; real studies "
        "have 512x512 slices and often more of them, and cost more to read)",
        "",
        "Gateway statuses: " + ", ".join(str(g["statuses"]) for g in gateway["runs"]) + ".",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--matrix", type=int, default=256)
    args = parser.parse_args()
    from testing.triton_local import triton_server

    with tempfile.TemporaryDirectory(prefix="headct-bench-batch-") as tmp:
        work = Path(tmp)
        archive = work / "archive"
        began = time.perf_counter()
        synthesize(
            archive, args.studies, seed=2026, options=SynthOptions(slices=32, matrix=args.matrix)
        )
        (archive / "labels.csv").unlink()  # only studies in the archive
        (archive / "annotations.json").unlink()
        print(
            f"synthesised {args.studies} studies in {time.perf_counter() - began:.0f} s", flush=True
        )
        studies = sorted(p for p in archive.iterdir() if p.is_dir())

        gateways = [_gateway(studies, clients=2)]
        print(f"gateway: {gateways[0]['studies_per_s']} studies/s", flush=True)
        runs = []
        for workers in (1, 2):
            run = _batch(archive, work / f"onnx-{workers}", workers, ["--backend", "onnx"])
            runs.append({"backend": "onnx", **run})
            print(f"batch onnx x{workers}: {run['studies_per_s']} studies/s", flush=True)
        with triton_server(DEFAULT_MODEL_REPOSITORY, [TRITON_MODEL], log_dir=work) as triton:
            for workers in (1, 2):
                extra = [
                    "--backend",
                    "triton",
                    "--triton-url",
                    f"127.0.0.1:{triton.http_port}",
                    "--model-name",
                    TRITON_MODEL,
                ]
                run = _batch(
                    archive, work / f"triton-{workers}", workers, extra, triton.process.pid
                )
                runs.append({"backend": "triton", **run})
                print(f"batch triton x{workers}: {run['studies_per_s']} studies/s", flush=True)
        # the gateway again, after: the machine is shared and its load drifts over a long run
        gateways.append(_gateway(studies, clients=2))
        print(f"gateway again: {gateways[1]['studies_per_s']} studies/s", flush=True)
    gateway = {
        "studies_per_s": round(sum(g["studies_per_s"] for g in gateways) / 2, 3),
        "cpu_s_per_study": round(sum(g["cpu_s_per_study"] for g in gateways) / 2, 3),
        "runs": gateways,
    }
    for run in runs:
        run["vs_gateway"] = round(run["studies_per_s"] / gateway["studies_per_s"], 3)
    embedded = max((r for r in runs if r["backend"] == "onnx"), key=lambda r: r["studies_per_s"])
    triton_run = max(
        (r for r in runs if r["backend"] == "triton"), key=lambda r: r["studies_per_s"]
    )
    payload = {
        "studies": args.studies,
        "matrix": args.matrix,
        "batch_size": BATCH_SIZE,
        "shared_machine": True,
        "batch": runs,
        "gateway": gateway,
        "projection": _projection(embedded, triton_run),
    }
    path = write_result("batch", payload, _table(payload))
    print(path.read_text())


if __name__ == "__main__":
    main()
