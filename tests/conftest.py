"""Shared fixtures: the real DICOM files that pydicom and pydicom-data ship, read offline."""

from __future__ import annotations

from pathlib import Path

import pytest


def real_dicom_files() -> list[Path]:
    """Every test file that pydicom and pydicom-data ship (never downloads: docs/ENVIRONMENT.md)."""
    import data_store
    import pydicom.data

    roots = [
        Path(pydicom.data.__file__).parent / "test_files",
        Path(data_store.__file__).parent / "data",
    ]
    skip_suffixes = (".py", ".pyc", ".json", ".md", ".txt", ".gz", ".bz2", ".zip")
    return sorted(
        p
        for root in roots
        for p in root.rglob("*")
        if p.is_file() and not p.name.endswith(skip_suffixes) and "__pycache__" not in p.parts
    )


def real_dicom_file(name: str) -> Path:
    for path in real_dicom_files():
        if path.name == name:
            return path
    raise FileNotFoundError(name)


@pytest.fixture(scope="session")
def ct_small() -> Path:
    return real_dicom_file("CT_small.dcm")
