"""Batches through Triton: the demo model's python-backend twin on the Triton server bundled in
nvidia-pytriton (``HEADCT_TRITON_VENV``) scores studies in batches as the embedded backend scores
them one at a time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.backends.onnx import OnnxBackend
from service.backends.triton import TritonBackend
from service.batch.results import ResultsFolder
from service.batch.runner import BatchRunner
from service.pipeline import TriagePipeline
from service.settings import DEFAULT_MODEL_REPOSITORY
from testing.triton_local import triton_server

TRITON_MODEL = "headct_molre_cpu"


def test_batches_on_triton_equal_the_embedded_backend_one_study_at_a_time(
    study_folders: dict[str, Path], tmp_path: Path
) -> None:
    studies = dict(list(study_folders.items())[:3])
    embedded = OnnxBackend(DEFAULT_MODEL_REPOSITORY / "headct_molre", intra_op_threads=1)
    try:
        pipeline = TriagePipeline(embedded)
        expected = {uid: pipeline.run([folder]) for uid, folder in studies.items()}
    finally:
        embedded.close()
    with triton_server(DEFAULT_MODEL_REPOSITORY, [TRITON_MODEL], log_dir=tmp_path) as triton:
        backend = TritonBackend(triton.http_url, TRITON_MODEL)
        try:
            runner = BatchRunner(
                TriagePipeline(backend), ResultsFolder(tmp_path / "out"), workers=1, batch_size=3
            )
            rows = runner.run(list(studies.values()))
        finally:
            backend.close()
    assert runner.stats.batches == 1  # the three studies in one request
    for uid, result in expected.items():
        row = rows[uid]
        assert row["priority"] == result.triage.priority.value
        assert row["key_sop_instance_uid"] == result.slices.key_sop_instance_uid
        np.testing.assert_allclose(
            [row[f.code] for f in result.findings],
            [f.probability for f in result.findings],
            atol=1e-5,
        )
