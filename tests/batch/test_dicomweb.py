"""A DICOMweb server as the source: Debian's Orthanc with its DICOMweb plugin holds three
synthetic studies (stored with dcmtk's storescu) and a non-CT one; ``dicomweb:URL`` finds the CT
studies with QIDO-RS, fetches them with WADO-RS, and scores each as the folder source does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from service.batch.results import Row
from service.findings import FINDING_CODES
from testing.onnx_fixture import FixtureModel
from testing.orthanc import orthanc_server, storescu
from tests.batch.conftest import Score

REPO = Path(__file__).resolve().parents[2]


def test_a_dicomweb_server_scores_like_the_folder(
    score: Score,
    study_folders: dict[str, Path],
    unsharded: tuple[Path, dict[str, Row], dict[str, Any]],
    fixture_model: FixtureModel,
    tmp_path: Path,
) -> None:
    _, from_folder, _ = unsharded
    uids = list(study_folders)[:3]
    mr = tmp_path / "mr"
    mr.mkdir()
    mr_study, mr_series = generate_uid(), generate_uid()
    for path in sorted(study_folders[uids[0]].glob("*.dcm"))[:2]:
        ds = pydicom.dcmread(path)
        ds.Modality, ds.StudyInstanceUID = "MR", mr_study
        ds.SeriesInstanceUID, ds.SOPInstanceUID = mr_series, generate_uid()
        ds.save_as(mr / path.name)
    with orthanc_server(tmp_path / "orthanc") as pacs:
        files = [p for uid in uids for p in sorted(study_folders[uid].glob("*.dcm"))]
        storescu([*files, *sorted(mr.iterdir())], port=pacs.dicom_port, called_aet=pacs.aet)
        rows, summary = score(
            out=tmp_path / "out", dicomweb_url=pacs.dicomweb_url, workers=2, batch_size=2
        )
        assert set(rows) == set(uids)  # the MR study is not listed: ModalitiesInStudy=CT
        for uid in uids:
            assert rows[uid]["status"] == "triaged"
            assert rows[uid]["key_sop_instance_uid"] == from_folder[uid]["key_sop_instance_uid"]
            assert rows[uid]["priority"] == from_folder[uid]["priority"]
            columns = [*FINDING_CODES, *(c for c in rows[uid] if c.startswith("router_weight"))]
            np.testing.assert_allclose(
                [rows[uid][c] for c in columns], [from_folder[uid][c] for c in columns], atol=1e-6
            )
        assert summary["this_run"]["found"] == 3

        # the command line takes it as dicomweb:URL
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "service.cli",
                "batch",
                f"dicomweb:{pacs.dicomweb_url}",
                "--out",
                str(tmp_path / "cli"),
                "--workers",
                "1",
                "--no-progress",
                "--model-repository",
                str(fixture_model.repository),
            ],
            cwd=REPO,
            env={**os.environ, "HEADCT_ONNX_INTRA_OP_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=180,
        )
    assert done.returncode == 0, done.stderr
    assert "3 studies" in done.stdout and "triaged 3" in done.stdout
