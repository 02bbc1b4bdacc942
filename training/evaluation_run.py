"""``headct evaluate``: run trained models over labelled studies and write the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from training.report import write_report
from training.runs import predict_run


def evaluate_runs(
    runs: list[Path], data: Path, out: Path, *, bootstrap: int = 1000, notes: str = ""
) -> dict[str, Any]:
    predictions = [predict_run(run, data) for run in runs]
    out.mkdir(parents=True, exist_ok=True)
    for p in predictions:
        p.save(out / f"predictions_{p.run_name}.npz")
    return write_report(predictions, out, bootstrap=bootstrap, notes=notes)
