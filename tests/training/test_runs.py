"""Run folders: the typed ``RunConfig`` round-trips and loads the config.json formats already on
disk, and a run records whether its training data were synthetic phantoms."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from service.findings import FINDING_CODES
from synth import SynthOptions, is_synthetic, synthesize
from training.config import TrainConfig
from training.molre import MoLREConfig
from training.runs import RunConfig, training_data_synthetic

# config.json of runs/demo/runs/molre_s0 (demo model v2), as ``headct train`` wrote it before the
# config was typed: ``train.molre`` holds only the fields given, and there is no ``synthetic``.
DEMO_RUN = {
    "backbone": "demo_vit",
    "weights": "/work/main/training/weights/demo_vit",
    "weights_sha256": "bb355ad2050633953a5aa03cd2abc12fd4b181308e6dd7f0fdbf964413a23e10",
    "adapter": "molre",
    "molre": {
        "experts": 4, "rank": 2, "alpha": 4.0, "dropout": 0.05, "target_modules": None,
        "router_temperature": 1.0, "load_balancing_weight": 0.01,
    },
    "grid": [32, 128, 128],
    "findings": list(FINDING_CODES),
    "train": {
        "data": "runs/demo/data/task", "out": "runs/demo/runs/molre_s0", "backbone": "demo_vit",
        "weights": "/work/main/training/weights/demo_vit", "adapter": "molre",
        "molre": {"experts": 4, "rank": 2, "alpha": 4.0, "load_balancing_weight": 0.01},
        "grid": [32, 128, 128], "epochs": 4, "batch_size": 4, "grad_accumulation": 1,
        "lr": 0.002, "backbone_lr": 0.0001, "router_lr_scale": 5.0, "weight_decay": 0.01,
        "warmup_fraction": 0.1, "loss": "focal", "focal_gamma": 2.0, "positive_weight_cap": 20.0,
        "validation_fraction": 0.2, "patience": 3, "seed": 0, "augment": True, "workers": 0,
        "max_steps": None, "stop_after_epoch": None, "cache": None,
    },
    "train_studies": 320,
    "validation_studies": 80,
    "skipped_studies": {},
    "created": "2026-11-29T09:52:46+00:00",
}  # fmt: skip

# What testing.tiny_run wrote by hand before: only part of the training settings.
TINY_RUN = {
    "backbone": "tiny_dinov2",
    "weights": "/tmp/run/backbone",
    "weights_sha256": "0" * 64,
    "adapter": "molre",
    "molre": MoLREConfig(experts=3, rank=2).to_dict(),
    "grid": [8, 64, 64],
    "findings": list(FINDING_CODES),
    "train": {"data": "/tmp/data", "validation_fraction": 0.5, "seed": 0},
    "train_studies": 6,
    "validation_studies": 6,
    "created": "2026-01-02T03:04:05+00:00",
}


def _write(folder: Path, config: dict) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_demo_run_from_before_the_typed_config_loads(tmp_path: Path) -> None:
    config = RunConfig.load(_write(tmp_path / "molre_s0", DEMO_RUN))
    # Recorded before the router was a choice: per_layer, the default, is what it had.
    assert config.molre == MoLREConfig(experts=4, rank=2, alpha=4.0, load_balancing_weight=0.01)
    assert config.molre.router == "per_layer"
    assert config.train.molre == config.molre and config.train.router_lr_scale == 5.0
    assert (config.grid, config.train.grid) == ((32, 128, 128), (32, 128, 128))
    assert config.train.out == "runs/demo/runs/molre_s0" and config.train.epochs == 4
    assert config.synthetic is None  # not recorded then: export asks rather than guesses
    assert config.train_studies == 320 and config.created == DEMO_RUN["created"]
    assert config.train.slice_head is False  # recorded before the slice head: it had none
    # Written again, it is the same file plus the new fields.
    molre = DEMO_RUN["molre"] | {"router": "per_layer"}
    assert json.loads(json.dumps(config.to_dict())) == DEMO_RUN | {
        "molre": molre,
        "train": DEMO_RUN["train"] | {"molre": molre, "synthetic": None, "slice_head": False},
        "synthetic": None,
    }


def test_a_hand_written_tiny_run_loads_with_the_run_filling_in_training(tmp_path: Path) -> None:
    folder = _write(tmp_path / "tiny", TINY_RUN)
    config = RunConfig.load(folder)
    train = config.train
    assert (train.backbone, train.adapter, train.grid) == ("tiny_dinov2", "molre", (8, 64, 64))
    assert train.out == str(folder) and train.weights == "/tmp/run/backbone"
    assert train.molre.experts == 3 and train.validation_fraction == 0.5
    assert config.molre == MoLREConfig(experts=3, rank=2)


def test_a_run_config_round_trips_and_refuses_unknown_fields(tmp_path: Path) -> None:
    train = TrainConfig(data="d", out=str(tmp_path), adapter="lora", molre=MoLREConfig(rank=4))
    config = RunConfig.for_training(
        train, synthetic=False, train_studies=3, validation_studies=1, skipped_studies={"x": "y"}
    )
    assert config.molre == MoLREConfig(experts=1, rank=4)  # lora: one expert, no router
    config.write(tmp_path)
    assert RunConfig.load(tmp_path) == config
    with pytest.raises(ValueError, match="epoch"):
        RunConfig.from_dict(config.to_dict() | {"epoch": 3}, folder=tmp_path)
    probe = replace(train, adapter="probe")
    assert RunConfig.for_training(
        probe, synthetic=True, train_studies=3, validation_studies=1, skipped_studies={}
    ).molre is None  # fmt: skip
    assert TrainConfig.from_dict(asdict(train)) == train


def test_the_run_records_whether_its_data_are_synthetic(tmp_path: Path) -> None:
    phantoms, real = tmp_path / "phantoms", tmp_path / "real"
    synthesize(phantoms, studies=1, seed=0, options=SynthOptions(slices=4, matrix=32))
    real.mkdir()
    assert is_synthetic(phantoms) and not is_synthetic(real)

    def recorded(data: Path, synthetic: bool | None = None) -> bool:
        config = TrainConfig(data=str(data), out=str(tmp_path / "run"), synthetic=synthetic)
        return training_data_synthetic(config)

    assert recorded(phantoms) and not recorded(real)
    assert recorded(real, synthetic=True)  # told: phantoms made some other way
    with pytest.raises(ValueError, match="headct synth"):
        recorded(phantoms, synthetic=False)
    (real / "annotations.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"annotations\.json"):
        is_synthetic(real)
