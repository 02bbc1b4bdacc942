"""The training commands of ``headct``: options built from the config classes keep the names and
defaults the README and scripts use, bad values are refused by the config with the field named,
and without PyTorch the commands say which extra to install."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import click
import pytest
from typer.main import get_command
from typer.testing import CliRunner

from synth import SynthOptions, is_synthetic, synthesize
from training.cli import app
from training.config import PretrainConfig, TrainConfig
from training.molre import MoLREConfig

REQUIRED = object()

# Every option ``headct train`` had when it declared them by hand, with its default then (the
# MoLRE options defaulted to None, meaning MoLREConfig's value, which they now show).
TRAIN_OPTIONS = {
    "data": REQUIRED, "out": REQUIRED, "backbone": "tiny_dinov2", "weights": None,
    "adapter": "molre", "experts": 4, "rank": 2, "alpha": 4.0, "load_balancing": 0.0,
    "router_lr_scale": 1.0, "depth": 32, "size": 256, "epochs": 10, "batch_size": 2,
    "grad_accumulation": 1, "lr": 1e-3, "loss": "focal", "validation_fraction": 0.2,
    "patience": 5, "seed": 0, "max_steps": None, "augment": True, "workers": 0,
}  # fmt: skip
PRETRAIN_OPTIONS = {
    "out": REQUIRED, "backbone": "demo_vit", "steps": 20000, "max_minutes": None, "workers": 1,
    "threads": 0, "studies_per_step": 2.0, "seed": 0, "export": None, "init_from": None,
}  # fmt: skip
CEILING_OPTIONS = {"out": REQUIRED, "steps": 1500, "workers": 1, "threads": 0}


def _options(command: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in get_command(app).commands[command].params}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("command", "expected"),
    [("train", TRAIN_OPTIONS), ("pretrain", PRETRAIN_OPTIONS), ("ceiling", CEILING_OPTIONS)],
)
def test_options_keep_their_names_and_defaults(command: str, expected: dict) -> None:
    options = _options(command)
    for name, default in expected.items():
        option = options[name]
        assert option.opts == [f"--{name.replace('_', '-')}"], option.opts
        if default is REQUIRED:
            assert option.required, name
        else:
            assert option.default == default, (name, option.default)


def test_options_come_from_the_config_fields_with_their_help() -> None:
    train, pretrain, synth = _options("train"), _options("pretrain"), _options("synth")
    for config, options, skip in (
        (TrainConfig, train, {"molre", "grid"}),
        (PretrainConfig, pretrain, {"findings"}),
        (SynthOptions, synth, set()),
    ):
        for spec in fields(config):
            if spec.name not in skip:
                assert options[spec.name].help == spec.metadata["help"], spec.name
    renamed = {"load_balancing_weight": "load_balancing"}
    for name in ("experts", "rank", "alpha", "load_balancing_weight"):
        spec = next(f for f in fields(MoLREConfig) if f.name == name)
        assert train[renamed.get(name, name)].help == spec.metadata["help"]
    # The options a hand-written list left out are there now (a time-sliced job needs this one).
    assert train["stop_after_epoch"].opts == ["--stop-after-epoch"]
    assert pretrain["grid"].default == (32, 128, 128)


def test_a_bad_value_is_refused_by_the_config_naming_the_field(tmp_path: Path) -> None:
    runner = CliRunner()
    for arguments, field in (
        (["--epochs", "0"], "epochs"),
        (["--experts", "0"], "experts"),
        (["--loss", "hinge"], "loss"),
    ):
        result = runner.invoke(
            app, ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), *arguments]
        )
        assert result.exit_code == 2 and field in result.output, result.output
    phantoms = tmp_path / "phantoms"
    synthesize(phantoms, studies=1, seed=0, options=SynthOptions(slices=4, matrix=32))
    result = runner.invoke(
        app, ["train", "--data", str(phantoms), "--out", str(tmp_path / "run"), "--no-synthetic"]
    )
    assert result.exit_code == 2 and "headct synth" in result.output, result.output
    assert not (tmp_path / "run").exists()
    result = runner.invoke(app, ["pretrain", "--out", str(tmp_path / "p"), "--workers", "-1"])
    assert result.exit_code == 2 and "workers" in result.output, result.output


def test_synth_takes_the_generator_options_and_marks_its_folder(tmp_path: Path) -> None:
    out = tmp_path / "data"
    result = CliRunner().invoke(
        app,
        ["synth", "--out", str(out), "--studies", "1", "--slices", "4", "--matrix", "32",
         "--slice-order", "descending", "--compression", "rle"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert is_synthetic(out) and (out / "labels.csv").is_file()
    result = CliRunner().invoke(app, ["synth", "--out", str(out), "--compression", "zip"])
    assert result.exit_code == 2 and "zip" in result.output


# Runs a module as ``python -m`` would, with ``import torch`` failing as on a gateway install.
WITHOUT_TORCH = """
import runpy, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, NoTorch())
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize(
    "arguments",
    [
        ["training.cli", "train", "--data", "data", "--out", "run"],
        ["training.cli", "evaluate", "run", "--data", "data", "--out", "report"],
        ["training.cli", "pretrain", "--out", "run"],
        ["training.params"],
    ],
)
def test_without_torch_the_commands_say_to_install_the_train_extra(
    arguments: list[str], tmp_path: Path
) -> None:
    repository = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(repository)},
    )
    assert done.returncode == 1, (done.returncode, done.stderr[-2000:])
    assert "pip install 'headct-triage[train]'" in done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    assert not any(tmp_path.iterdir())
