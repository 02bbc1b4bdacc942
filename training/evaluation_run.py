"""``headct evaluate``: run trained models over labelled studies and write the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from service.preprocess import ModelGrid
from training.data import build_cache, read_labels
from training.dataset import CachedStudyDataset
from training.evaluate import Predictions
from training.report import write_report
from training.train import load_run, predict


def predict_run(run: Path, data: Path, *, batch_size: int = 2) -> Predictions:
    """Predictions of one run folder's best checkpoint on every ingestible study of ``data``."""
    model, config = load_run(run)
    grid = ModelGrid(*config["grid"])
    studies, _ = build_cache(read_labels(data), data / ".cache", grid)
    loader = DataLoader(CachedStudyDataset(studies), batch_size=batch_size)
    name = run.name
    return predict(model, loader, torch.device("cpu"), name, [s.record.study_uid for s in studies])


def evaluate_runs(
    runs: list[Path], data: Path, out: Path, *, bootstrap: int = 1000, notes: str = ""
) -> dict[str, Any]:
    predictions = [predict_run(run, data) for run in runs]
    out.mkdir(parents=True, exist_ok=True)
    for p in predictions:
        p.save(out / f"predictions_{p.run_name}.npz")
    return write_report(predictions, out, bootstrap=bootstrap, notes=notes)
