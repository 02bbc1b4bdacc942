"""A worker process that dies while reading a study: the pool is restarted, the studies it had in
flight are read again, and a study in flight at two deaths becomes a row ``ingest_crashed`` while
the run goes on (``service.batch.runner``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from service.backends.onnx import OnnxBackend
from service.batch.results import ResultsFolder
from service.batch.runner import BatchRunner
from service.batch.sources import StudyJob, StudySource
from service.pipeline import TriagePipeline
from service.schemas import TriageResult
from tests.batch.test_batch import assert_row_is_the_result


@dataclass(frozen=True, slots=True)
class _DyingJob(StudyJob):
    """A study whose reading kills the worker process (a decoder crashing, the kernel's
    out-of-memory killer): the process exits at once, without an exception."""

    def sources(self) -> list[StudySource]:
        os._exit(70)


class _GivenJobs(BatchRunner):
    """The runner with its study list given rather than scanned from a source."""

    def __init__(self, jobs: list[StudyJob], *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.jobs = jobs

    def _studies(self, paths: Sequence[Path], dicomweb_url: str | None) -> list[StudyJob]:
        return self.jobs


def test_a_study_whose_worker_dies_twice_is_ingest_crashed_and_the_run_goes_on(
    backend: OnnxBackend,
    study_folders: dict[str, Path],
    reference: dict[str, TriageResult],
    tmp_path: Path,
) -> None:
    uid, folder = next(iter(study_folders.items()))
    good = StudyJob(uid, files=tuple(sorted(folder.glob("*.dcm"))))
    dying = _DyingJob("1.2.826.0.1.3680043.8.498.99", files=(folder / "absent.dcm",))
    runner = _GivenJobs(
        [good, dying], TriagePipeline(backend), ResultsFolder(tmp_path / "out"), workers=1
    )
    rows = runner.run()
    assert_row_is_the_result(rows[uid], reference[uid])
    crashed = rows[dying.study_uid]
    assert (crashed["status"], crashed["error_code"]) == ("failed", "ingest_crashed")
    assert crashed["error_message"] == "The worker process reading the study died, twice."
    assert crashed["instances"] == 1
    assert runner.stats.scored == 2
