"""The paired-phantom measure of how much of a finding reaches the model grid: on real phantoms
(small ones), with no mocks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from synth.conspicuity import grid_noise_sd, markdown, measure, measure_all
from synth.options import SynthOptions

SMALL = SynthOptions(slices=8, matrix=64)


def test_area_averaging_lowers_the_noise_but_less_than_white_noise_would() -> None:
    full = grid_noise_sd(1, np.random.default_rng(0))
    halved = grid_noise_sd(2, np.random.default_rng(0))
    # the generator's noise has sigma 4.5 HU at full resolution; 2x2 averaging of correlated
    # noise removes less than the factor 2 it would remove from white noise
    assert 4.0 < full < 5.0
    assert full / 2 < halved < full


def test_a_large_finding_changes_the_grid_and_a_paired_study_without_it_does_not() -> None:
    noise = grid_noise_sd(2, np.random.default_rng(0))
    large = measure("subdural_hematoma_acute", 2, SMALL, 32, noise)
    assert large.studies == 2
    assert large.voxels > 20 and large.slices >= 2 and large.detectability > 20
    assert large.peak_hu > 3 * noise
    assert large.implied == ["ich_any", "extra_axial_collection"]
    small = measure("acute_lacunar_infarct", 2, SMALL, 32, noise)
    assert small.detectability < large.detectability and small.voxels < large.voxels


def test_the_report_lists_every_finding_asked_smallest_first(tmp_path: Path) -> None:
    result = measure_all(1, SMALL, 32, codes=["subdural_hematoma_acute", "acute_lacunar_infarct"])
    assert result["synthetic"] is True and result["grid"] == [8, 32, 32]
    text = markdown(result, {"subdural_hematoma_acute": 0.99})
    assert "Synthetic phantoms, not patient data" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [r.split("`")[1] for r in rows] == ["acute_lacunar_infarct", "subdural_hematoma_acute"]
    assert rows[0].endswith("| n/a |") and rows[1].endswith("| 0.99 |")


def test_a_grid_that_does_not_divide_the_matrix_is_refused() -> None:
    with pytest.raises(ValueError, match="not a multiple"):
        measure("ich_any", 1, SMALL, 48, 1.0)


def test_no_seeds_is_refused_not_averaged_into_nan() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        measure("ich_any", 0, SMALL, 32, 1.0)


def test_the_command_writes_both_files(tmp_path: Path) -> None:
    out = tmp_path / "signatures"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "synth.conspicuity",
            "--out",
            str(out),
            "--seeds",
            "1",
            "--matrix",
            "64",
            "--grid-matrix",
            "32",
            "--slices",
            "8",
            "--ceiling",
            str(tmp_path / "absent.json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    data = json.loads((out / "signatures.json").read_text())
    assert len(data["findings"]) == 75
    assert "ceiling AUC" not in (out / "signatures.md").read_text()
