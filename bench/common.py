"""Shared benchmark plumbing: interleaved repeats, medians, and result files under bench/results."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all processes, all cores), so far."""
    import psutil

    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def others_share(busy_s: float, measured_cpu_s: float, wall_s: float) -> float:
    """The share of the machine's CPU over ``wall_s`` that processes other than the measured
    ones used: its busy time (``machine_busy_s`` difference) less ``measured_cpu_s``, so 0 when
    the measured processes ran alone."""
    capacity = wall_s * (os.cpu_count() or 1)
    return max(0.0, busy_s - measured_cpu_s) / max(capacity, 1e-9)


def interleaved(cases: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Run every case once per round, in turn, so machine noise hits all cases alike."""
    for run in cases.values():  # warm caches and lazy imports
        run()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def write_result(name: str, payload: dict[str, Any], table: str) -> Path:
    """bench/results/<name>.json and .md; the README links to them."""
    RESULTS.mkdir(exist_ok=True)
    payload = {
        "benchmark": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {platform.python_implementation()} "
        f"{platform.python_version()}",
        **payload,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    path = RESULTS / f"{name}.md"
    path.write_text(table)
    return path
