"""The ``headct`` command line itself: the console script adds the training commands where the
training package is installed (tests/deploy/test_wheel.py runs it where it is not), ``inspect``
takes its grid from the served model's card, and counts read as English."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from service.cli import app as cli
from service.model_card import CARD_FILENAME
from service.settings import DEFAULT_MODEL_REPOSITORY
from service.text import counted
from testing.onnx_fixture import FixtureModel

ROOT = Path(__file__).resolve().parents[2]


def test_the_console_script_adds_the_training_commands() -> None:
    """A fresh interpreter, so nothing else has imported training.cli."""
    script = "import sys; from service.cli import main; sys.exit(main())"
    result = subprocess.run(
        [sys.executable, "-c", script, "--help"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    listed = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("│ ")}
    assert {"inspect", "serve", "triage", "synth", "train", "export"} <= listed, result.stdout
    assert "serving commands only" not in result.stdout


def _grid(result_output: str) -> list[int]:
    shape: list[int] = json.loads(result_output)["grid"]["shape"]
    return shape


@pytest.fixture
def no_repository_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HEADCT_MODEL_REPOSITORY", raising=False)


@pytest.mark.usefixtures("no_repository_variable")
def test_inspect_takes_the_grid_of_the_served_models_card(
    study: list[Path], fixture_model: FixtureModel
) -> None:
    folder = str(study[0].parent)
    # the default repository: the checkout's demo model, newest version
    versions = [
        p for p in (DEFAULT_MODEL_REPOSITORY / "headct_molre").iterdir() if p.name.isdigit()
    ]
    newest = max(versions, key=lambda p: int(p.name))
    demo_grid = json.loads((newest / CARD_FILENAME).read_text())["grid"]
    result = CliRunner().invoke(cli, ["inspect", folder])
    assert result.exit_code == 0, result.output
    assert _grid(result.output) == [demo_grid[k] for k in ("depth", "height", "width")]

    repository = ["--model-repository", str(fixture_model.repository)]
    result = CliRunner().invoke(cli, ["inspect", folder, *repository])
    grid = fixture_model.card.grid
    assert _grid(result.output) == [grid.depth, grid.height, grid.width]
    assert (grid.depth, grid.height) != (demo_grid["depth"], demo_grid["height"])

    result = CliRunner().invoke(cli, ["inspect", folder, *repository, "--width", "24"])
    assert _grid(result.output) == [grid.depth, grid.height, 24]


@pytest.mark.usefixtures("no_repository_variable")
def test_inspect_with_the_whole_grid_given_reads_no_model(
    study: list[Path], tmp_path: Path
) -> None:
    folder = str(study[0].parent)
    missing = ["--model-repository", str(tmp_path / "missing")]
    dims = ["--depth", "6", "--height", "40", "--width", "40"]
    result = CliRunner().invoke(cli, ["inspect", folder, *missing, *dims])
    assert result.exit_code == 0, result.output
    assert _grid(result.output) == [6, 40, 40]

    result = CliRunner().invoke(cli, ["inspect", folder, *missing, "--depth", "6"])
    assert result.exit_code == 2
    assert "HEADCT_MODEL_REPOSITORY" in result.output


@pytest.mark.parametrize(
    ("n", "words", "expected"),
    [
        (1, ("slice",), "1 slice"),
        (0, ("slice",), "0 slices"),
        (2, ("study", "studies"), "2 studies"),
        (1, ("synthetic study", "synthetic studies"), "1 synthetic study"),
    ],
)
def test_counts_take_the_right_number(n: int, words: tuple[str, ...], expected: str) -> None:
    assert counted(n, *words) == expected


@pytest.mark.usefixtures("no_repository_variable")
def test_local_triage_with_the_demo_model_says_how_its_priority_and_key_slice_were_chosen(
    study: list[Path],
) -> None:
    """The committed demo model has a slice head and study-level scores: the table names the
    rule behind the key slice, and says when the study score set the priority."""
    folder = str(study[0].parent)
    as_json = CliRunner().invoke(cli, ["triage", folder, "--json"])
    assert as_json.exit_code == 0, as_json.output
    body = json.loads(as_json.stdout)
    assert body["slices"]["scores"] is not None  # SLICE_SCORES
    table = CliRunner().invoke(cli, ["triage", folder], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert f"scored highest for {body['slices']['key_finding']}" in table.stdout
    by_score = body["triage"]["basis"] == "study_score"
    assert ("by the study-level score" in table.stdout) == by_score
