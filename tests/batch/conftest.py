"""Batch fixtures: the tiny real ONNX model, a synthetic archive with labels.csv (six 20-slice
studies), the gateway pipeline's result for each study (the reference a batch row must equal),
and a helper that scores a source in this process (its workers are real processes)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from service.backends.onnx import OnnxBackend
from service.batch.results import ResultsFolder, Row
from service.batch.runner import BatchRunner
from service.batch.sources import Shard
from service.batch.summary import finish
from service.pipeline import TriagePipeline
from service.schemas import TriageResult
from service.settings import Settings
from synth import SynthOptions
from synth.study import synthesize
from testing.onnx_fixture import MODEL_NAME, FixtureModel, write_fixture_repository

STUDIES = 6
OPTIONS = SynthOptions(slices=20, matrix=64)


@pytest.fixture(scope="session")
def fixture_model(tmp_path_factory: pytest.TempPathFactory) -> FixtureModel:
    return write_fixture_repository(tmp_path_factory.mktemp("model_repository"))


@pytest.fixture(scope="session")
def backend(fixture_model: FixtureModel) -> Iterator[OnnxBackend]:
    model = OnnxBackend(fixture_model.repository / MODEL_NAME, intra_op_threads=1)
    yield model
    model.close()


@pytest.fixture(scope="session")
def settings(fixture_model: FixtureModel) -> Settings:
    """The settings ``headct batch`` would run the fixture model with."""
    return Settings(
        backend="onnx", model_repository=fixture_model.repository, model_name=MODEL_NAME
    )


@pytest.fixture(scope="session")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``headct synth``'s output: one folder per study, labels.csv, annotations.json."""
    folder = tmp_path_factory.mktemp("archive")
    synthesize(folder, STUDIES, seed=5, options=OPTIONS)
    return folder


@pytest.fixture(scope="session")
def study_folders(archive: Path) -> dict[str, Path]:
    return {p.name: p for p in sorted(archive.iterdir()) if p.is_dir()}


@pytest.fixture(scope="session")
def reference(backend: OnnxBackend, study_folders: dict[str, Path]) -> dict[str, TriageResult]:
    """What the gateway's pipeline answers for each study, one at a time."""
    pipeline = TriagePipeline(backend)
    return {uid: pipeline.run([folder]) for uid, folder in study_folders.items()}


Score = Callable[..., tuple[dict[str, Row], dict[str, Any]]]


@pytest.fixture(scope="session")
def score(backend: OnnxBackend) -> Score:
    """Score ``sources`` into ``out`` as ``headct batch`` does, in this process; (rows, summary)."""

    def run(
        sources: Sequence[Path] = (),
        out: Path | None = None,
        *,
        dicomweb_url: str | None = None,
        shard: Shard = Shard(),
        workers: int = 2,
        batch_size: int = 4,
        labels: Path | None = None,
        retry_failed: bool = False,
        worker_settings: Settings | None = None,
    ) -> tuple[dict[str, Row], dict[str, Any]]:
        assert out is not None
        folder = ResultsFolder(out)
        runner = BatchRunner(
            TriagePipeline(backend),
            folder,
            workers=workers,
            batch_size=batch_size,
            shard=shard,
            retry_failed=retry_failed,
            worker_settings=worker_settings,
        )
        rows = runner.run(sources, dicomweb_url)
        summary = finish(
            folder,
            rows,
            backend.card,
            shard=str(shard),
            run=runner.stats.to_dict(workers, batch_size),
            labels=labels,
        )
        return rows, summary

    return run


@pytest.fixture(scope="session")
def unsharded(
    score: Score, archive: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, Row], dict[str, Any]]:
    """The whole archive scored once, with its labels: (results folder, rows, summary)."""
    out = tmp_path_factory.mktemp("unsharded")
    rows, summary = score([archive], out, labels=archive / "labels.csv")
    return out, rows, summary


def copy_files(files: Sequence[Path], into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy2(path, into / path.name)
