"""The README's commands are real and written one way, and it documents the client's API key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from service.cli import add_training_commands, app

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _commands() -> dict[str, Any]:
    assert add_training_commands()
    return dict(typer.main.get_command(app).commands)


def test_readme_runs_headct_one_way() -> None:
    """Bare ``headct`` in the activated venv (the README says so once), never ``.venv/bin/...``."""
    assert not re.search(r"\.venv/bin/(headct|pip|python)\b", README)
    assert "source .venv/bin/activate" in README


def test_every_headct_command_the_readme_names_exists() -> None:
    named = set(re.findall(r"\bheadct\s+([a-z]+)(?![\w-])", README))
    assert {"serve", "triage", "synth", "train"} <= named
    assert named <= set(_commands()), named - set(_commands())


def test_readme_documents_the_clients_api_key_variable() -> None:
    (api_key,) = [p for p in _commands()["triage"].params if p.name == "api_key"]
    assert api_key.envvar == "HEADCT_API_KEY"
    assert "`HEADCT_API_KEY`" in README
