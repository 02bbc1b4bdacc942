"""A tiny trained run folder, exactly as ``headct train`` writes it, for the export, Triton and
gateway tests and the benchmarks: a tiny DINOv2 MoLRE whose experts are switched on, on a saved
backbone, with validation predictions and an ingest cache of synthetic volumes."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch

from service.findings import FINDING_CODES, NUM_FINDINGS
from service.preprocess import ModelGrid
from training.backbones import create_backbone
from training.config import TrainConfig
from training.data import _fingerprint
from training.evaluate import Predictions
from training.export import synthetic_volumes
from training.model import build_model
from training.molre import MoLREConfig
from training.molre.injector import expert_layers
from training.runs import RunConfig

GRID = (8, 64, 64)
EXPERTS = 3
ONNX_TYPES = {onnx.TensorProto.INT16: "TYPE_INT16", onnx.TensorProto.FLOAT: "TYPE_FP32"}


def make_validation_data(folder: Path, grid: tuple[int, int, int], studies: int) -> Path:
    """A data folder (labels.csv, one placeholder file per study) whose ingest cache already holds
    synthetic volumes, exactly where ``training.data.build_cache`` looks for them."""
    rng = np.random.default_rng(0)
    cache = folder / ".cache"
    cache.mkdir(parents=True)
    labels = rng.integers(0, 2, (studies, NUM_FINDINGS)).astype(float)
    labels[:, 5] = 0  # no positives: the threshold falls back
    volumes = synthetic_volumes(ModelGrid(*grid), studies, seed=5)
    with (folder / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_uid", "patient_id", *FINDING_CODES])
        for i in range(studies):
            uid = f"1.2.826.0.1.{i}"
            (folder / uid).mkdir()
            (folder / uid / "slice.dcm").write_bytes(b"placeholder")
            key = _fingerprint(folder / uid, ModelGrid(*grid))
            np.save(cache / f"{key}.npy", volumes[i])
            (cache / f"{key}.json").write_text(json.dumps({"study_uid": uid, "patient_key": uid}))
            writer.writerow([uid, f"patient{i}", *(int(v) for v in labels[i])])
    return folder


def make_tiny_run(
    folder: Path,
    *,
    data: Path | None = None,
    grid=GRID,
    seed: int = 0,
    slice_head: bool = False,
) -> Path:
    """A run folder as ``training.train`` writes it (config.json, best.pt, validation
    predictions) for a tiny DINOv2 MoLRE whose experts are switched on (and, with
    ``slice_head``, a slice head of random weights), on a saved backbone, recorded as trained on
    synthetic data."""
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    weights = folder / "backbone"  # a frozen backbone is only reproducible from a checkpoint
    create_backbone("tiny_dinov2").save_pretrained(weights)
    train = TrainConfig(
        data=str(data or folder / "no-data"),
        out=str(folder),
        weights=str(weights),
        molre=MoLREConfig(experts=EXPERTS, rank=2),
        grid=grid,
        slice_head=slice_head,
        validation_fraction=0.5,
    )
    run = RunConfig.for_training(
        train, synthetic=True, train_studies=6, validation_studies=6, skipped_studies={}
    )
    replace(run, created="2026-01-02T03:04:05+00:00").write(folder)
    model = build_model(
        "tiny_dinov2", adapter="molre", molre=run.molre, weights=weights, slice_head=slice_head
    ).eval()
    for _, layer in expert_layers(model.backbone):
        torch.nn.init.normal_(layer.lora_B, std=0.2)
    if model.slice_head is not None:
        torch.nn.init.normal_(model.slice_head.weight, std=0.2)
    torch.save({"model": model.trainable_state_dict()}, folder / "best.pt")
    rng = np.random.default_rng(seed)
    router = rng.dirichlet(np.ones(EXPERTS), 6)
    Predictions(
        "molre",
        [f"uid{i}" for i in range(6)],
        rng.integers(0, 2, (6, NUM_FINDINGS)).astype(float),
        rng.uniform(0, 1, (6, NUM_FINDINGS)),
        router,
    ).save(folder / "validation_predictions.npz")
    return folder
