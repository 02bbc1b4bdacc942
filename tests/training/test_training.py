"""The training loop on synthetic studies: it learns, it resumes exactly, it runs under DDP, and
its checkpoints hold only what training changed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from synth import SynthOptions, synthesize
from training.backbones import create_backbone
from training.config import TrainConfig
from training.evaluate import Predictions
from training.molre import MoLREConfig
from training.runs import load_run, predict_run, weights_sha256
from training.train import train

GRID = (8, 64, 64)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    synthesize(
        out, studies=16, seed=3, options=SynthOptions(slices=16, matrix=64, prevalence_scale=3)
    )
    return out


def _config(data: Path, out: Path, **overrides: object) -> TrainConfig:
    base: dict[str, object] = {
        "data": str(data),
        "out": str(out),
        "backbone": "tiny_dinov2",
        "adapter": "molre",
        "molre": MoLREConfig(experts=2, rank=2),
        "grid": GRID,
        "epochs": 3,
        "batch_size": 4,
        "lr": 3e-3,
        "validation_fraction": 0.25,
        "patience": 10,
        "augment": True,
        "seed": 0,
        "cache": str(data / ".cache"),
    }
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _metrics(run: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_training_lowers_the_loss(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_config(dataset, run, epochs=6, augment=False, lr=5e-3))
    losses = [m["train_loss"] for m in _metrics(run)]
    assert len(losses) == 6
    assert losses[-1] < 0.8 * losses[0], losses

    # The trained router routes: its weights differ between studies and between the slices of
    # one study (demo v1's router gave 0.001 standard deviation across studies).
    model, _ = load_run(run)
    # Every study of the set (cache file names hash the data folder's path, so a subset picked by
    # name would change from one run to the next).
    volumes = [np.load(p) for p in sorted((dataset / ".cache").glob("*.npy"))]
    with torch.no_grad():
        output = model(torch.from_numpy(np.stack(volumes)).float())
    assert output.router_weights.std(dim=0).max() > 0.02, output.router_weights
    assert output.slice_router_weights.std(dim=1).mean() > 0.01


def test_checkpoint_holds_only_what_training_changed(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(_config(dataset, run, epochs=1, slice_head=True))
    state = torch.load(run / "best.pt", weights_only=True)["model"]
    assert state and all(
        "lora_" in k
        or "router" in k
        or k.startswith(("feature_norm.", "pooling.", "head.", "slice_head."))
        for k in state
    ), sorted(state)[:10]
    assert {"slice_head.weight", "slice_head.bias"} <= set(state)
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"] == "tiny_dinov2" and config["adapter"] == "molre"
    assert config["molre"]["experts"] == 2 and config["grid"] == list(GRID)
    assert len(config["findings"]) == 75
    assert config["synthetic"] is True  # the data folder is headct synth's: the run records it
    assert config["train"]["slice_head"] is True
    model, _ = load_run(run)
    assert model.slice_head is not None and model.adapter_summary()["slice_head"] is True


def test_save_load_and_resume_are_exact(dataset: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    # With the slice head, so that its weights are saved, resumed and reloaded too.
    train(_config(dataset, whole, epochs=3, slice_head=True))
    interrupted = tmp_path / "interrupted"
    train(_config(dataset, interrupted, epochs=3, stop_after_epoch=1, slice_head=True))
    assert [m["epoch"] for m in _metrics(interrupted)] == [0, 1]
    # resumes from last.pt at epoch 2
    train(_config(dataset, interrupted, epochs=3, slice_head=True))
    assert [m["epoch"] for m in _metrics(interrupted)] == [0, 1, 2]
    # Run again with no epochs left: nothing trains, and the step time is the one recorded.
    again = train(_config(dataset, interrupted, epochs=3, slice_head=True))
    assert [m["epoch"] for m in _metrics(interrupted)] == [0, 1, 2]
    assert again["seconds_per_step"] == _metrics(interrupted)[-1]["seconds_per_step"] > 0
    a = torch.load(whole / "last.pt", weights_only=False)["model"]
    b = torch.load(interrupted / "last.pt", weights_only=False)["model"]
    assert a["slice_head.weight"].abs().sum() > 0  # it trained from its zero start
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)

    # A loaded run predicts exactly what training recorded on its validation studies.
    model, _ = load_run(whole)
    recorded = Predictions.load(whole / "validation_predictions.npz")
    labels_dir = tmp_path / "validation_only"
    labels_dir.mkdir()
    rows = (dataset / "labels.csv").read_text().splitlines()
    keep = [rows[0]] + [r for r in rows[1:] if r.split(",")[0] in recorded.study_uids]
    (labels_dir / "labels.csv").write_text("\n".join(keep) + "\n")
    for uid in recorded.study_uids:
        shutil.copytree(dataset / uid, labels_dir / uid)
    again = predict_run(whole, labels_dir)
    order = [again.study_uids.index(u) for u in recorded.study_uids]
    np.testing.assert_allclose(again.probabilities[order], recorded.probabilities, atol=1e-6)
    assert isinstance(model, torch.nn.Module)


def test_changed_backbone_checkpoint_is_refused(dataset: Path, tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    create_backbone("tiny_dinov2").save_pretrained(weights)
    run = tmp_path / "run"
    train(_config(dataset, run, epochs=1, weights=str(weights)))
    load_run(run)  # unchanged: fine
    # Its card is not the checkpoint: rewriting it leaves the run usable.
    (weights / "PRETRAINING.md").write_text("# How these weights were made, rewritten\n")
    load_run(run)
    with (weights / "config.json").open("a") as handle:
        handle.write("\n")
    with pytest.raises(ValueError, match="changed since"):
        load_run(run)


def test_a_run_that_recorded_every_file_of_its_checkpoint_still_loads(
    dataset: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "weights"
    create_backbone("tiny_dinov2").save_pretrained(weights)
    (weights / "PRETRAINING.md").write_text("# card\n")
    run = tmp_path / "run"
    train(_config(dataset, run, epochs=1, weights=str(weights)))
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["weights_sha256"] == weights_sha256(str(weights))
    # As runs from before the card was left out of the hash recorded it.
    recorded["weights_sha256"] = weights_sha256(str(weights), every_file=True)
    assert recorded["weights_sha256"] != weights_sha256(str(weights))
    (run / "config.json").write_text(json.dumps(recorded))
    load_run(run)
    with (weights / "model.safetensors").open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ValueError, match="changed since"):
        load_run(run)


def test_two_process_gloo_ddp(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [
        str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "training.cli",
        "train", "--data", str(dataset), "--out", str(run), "--depth", "8", "--size", "64",
        "--experts", "2", "--rank", "2", "--epochs", "1", "--batch-size", "2", "--max-steps", "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 2
    assert len(_metrics(run)) == 1  # only rank 0 logs


def test_evaluate_command_writes_metrics_report_and_figures(dataset: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from training.cli import app

    runs = []
    for adapter in ("molre", "probe"):
        run = tmp_path / adapter
        train(_config(dataset, run, epochs=1, adapter=adapter))
        runs.append(str(run))
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        ["evaluate", *runs, "--data", str(dataset), "--out", str(out), "--bootstrap", "50",
         "--notes", "Synthetic phantoms, not for clinical use"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["runs"]) == {"molre", "probe"}
    report = (out / "report.md").read_text()
    assert "Synthetic phantoms" in report and "molre" in report
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert any(n.startswith("radar_") for n in pngs) and any(n.startswith("roc_") for n in pngs)
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
