"""Viewer fixtures: synthetic studies on disk, and where screenshots go."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testing.studies import write_synthetic_study, zip_bytes

SCREENSHOTS_ENV = "HEADCT_VIEWER_SCREENSHOTS"  # a folder to keep the browser test's screenshots


@pytest.fixture(scope="session")
def study_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32-slice synthetic study (128 x 128), one folder, as a user would drop it."""
    folder = tmp_path_factory.mktemp("studies") / "study"
    write_synthetic_study(folder, seed=3, slices=32, matrix=128)
    return folder


@pytest.fixture(scope="session")
def short_study_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zip of a 6-slice study: DICOM, but too short to cover the head (422)."""
    root = tmp_path_factory.mktemp("short")
    files = write_synthetic_study(root / "study", seed=4, slices=6, matrix=64)
    path = root / "short-study.zip"
    path.write_bytes(zip_bytes(files))
    return path


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = os.environ.get(SCREENSHOTS_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        return Path(folder)
    return tmp_path_factory.mktemp("screenshots")
