"""The one triage pipeline (``service.pipeline``): the same result whatever form the study comes in
and whoever calls it, a spooled upload read from its files, and the places a caller's limits
attach (a slot, the inference deadline, cancellation)."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from service.backends.base import InferenceBackend
from service.backends.onnx import OnnxBackend
from service.contract import ModelOutputs
from service.dicom_io import StudySource, load_study
from service.errors import BackendTimeoutError, IngestTimeoutError
from service.model_card import ModelCard
from service.pipeline import Deadlines, TriagePipeline
from service.schemas import TriageResult
from service.uploads import Upload, UploadLimits, receive_upload
from testing.onnx_fixture import FixtureModel
from testing.studies import multipart_files, write_synthetic_study

LIMITS = UploadLimits(
    max_bytes=2**30, max_files=1000, max_zip_uncompressed_bytes=2**30, max_zip_ratio=200.0
)


@pytest.fixture(scope="module")
def pipeline(fixture_model: FixtureModel) -> Iterator[TriagePipeline]:
    backend = OnnxBackend(fixture_model.repository / "headct_molre", intra_op_threads=1)
    yield TriagePipeline(backend)
    backend.close()


def _probabilities(result: TriageResult) -> list[float]:
    return [f.probability for f in result.findings]


def test_every_form_of_a_study_gives_the_http_result(
    pipeline: TriagePipeline, client: TestClient, study: list[Path]
) -> None:
    forms: dict[str, list[StudySource]] = {
        "folder": [study[0].parent],
        "paths": list(study),
        "named paths": [(f"file {i}", p) for i, p in enumerate(study)],
        "named bytes": [(p.name, p.read_bytes()) for p in study],
        "datasets": [(p.name, pydicom.dcmread(p)) for p in study],
    }
    results = {name: pipeline.run(sources) for name, sources in forms.items()}
    http = TriageResult.model_validate(
        client.post("/v1/triage", files=multipart_files(study)).json()
    )
    for name, result in results.items():
        assert (result.study_uid, result.series_uid) == (http.study_uid, http.series_uid), name
        np.testing.assert_allclose(_probabilities(result), _probabilities(http), atol=1e-6)
        assert result.slices == http.slices, name
        assert result.router == http.router, name
        assert result.timing_ms.upload == 0.0 and result.timing_ms.total > 0, name


def test_a_spooled_upload_is_held_once(tmp_path: Path) -> None:
    """Spooled files are read one at a time as ingest reaches them, and a parsed file keeps no
    copy of its bytes: reading the study peaks near its own size, not twice it."""
    files = write_synthetic_study(tmp_path / "study", slices=20, matrix=256)
    size = sum(p.stat().st_size for p in files)
    boundary = "b0undary"
    body = (
        b"".join(
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{p.name}"\r\n'
            f"Content-Type: application/dicom\r\n\r\n".encode()
            + p.read_bytes()
            + b"\r\n"
            for p in files
        )
        + f"--{boundary}--\r\n".encode()
    )

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    async def receive() -> Upload:
        return await receive_upload(
            f"multipart/form-data; boundary={boundary}", chunks(), LIMITS, spool_dir=tmp_path
        )

    upload = anyio.run(receive)
    with upload:
        sources = upload.sources()
        assert [name for name, _ in sources] == [p.name for p in files]
        assert all(isinstance(content, Path) for _, content in sources)
        tracemalloc.start()
        try:
            study = load_study(sources)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert len(study.files) == len(files)
    assert peak < 1.5 * size, f"reading the study peaked at {peak / size:.2f}x its size"


class _SlowBackend:
    """The fixture model, answering after ``delay_s``."""

    def __init__(self, backend: InferenceBackend, delay_s: float) -> None:
        self._backend, self.delay_s = backend, delay_s
        self.kind = "onnx"

    @property
    def card(self) -> ModelCard:
        return self._backend.card

    def ready(self) -> bool:
        return True

    def infer(self, volumes: np.ndarray) -> ModelOutputs:
        time.sleep(self.delay_s)
        return self._backend.infer(volumes)

    def close(self) -> None:
        pass


def test_the_wait_for_a_slot_is_the_queue_stage(
    pipeline: TriagePipeline, study: list[Path]
) -> None:
    async def main() -> TriageResult:
        slot = anyio.Lock()

        async def hold() -> None:
            async with slot:
                await anyio.sleep(0.3)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(hold)
            await anyio.sleep(0.05)
            result = await pipeline.run_async(study, started=time.perf_counter() - 0.1, slot=slot)
        return result

    result = anyio.run(main)
    assert result.timing_ms.upload >= 100
    assert result.timing_ms.queue >= 200
    assert result.timing_ms.total >= result.timing_ms.upload + result.timing_ms.queue


def test_the_inference_deadline(pipeline: TriagePipeline, study: list[Path]) -> None:
    slow = TriagePipeline(_SlowBackend(pipeline.backend, delay_s=1.0))
    started = time.perf_counter()
    with pytest.raises(BackendTimeoutError, match=r"within 0\.2 s"):
        anyio.run(lambda: slow.run_async(study, deadlines=Deadlines(inference_s=0.2)))
    assert time.perf_counter() - started < 0.9


def test_cancelling_the_caller_stops_ingest_between_files(
    pipeline: TriagePipeline, study: list[Path]
) -> None:
    """Issue 11 hangs its ingest deadline and client-disconnect cancellation here."""
    read: list[Path] = []

    def slow_sources() -> Iterator[Path]:
        for path in study:
            time.sleep(0.05)
            read.append(path)
            yield path

    async def main() -> None:
        with anyio.move_on_after(0.2):
            await pipeline.run_async(slow_sources())
            pytest.fail("the pipeline ran to the end")

    anyio.run(main)
    assert 0 < len(read) < len(study)


def test_the_ingest_deadline_stops_ingest_at_the_next_file(
    pipeline: TriagePipeline, study: list[Path]
) -> None:
    read: list[Path] = []

    def slow_sources() -> Iterator[Path]:
        for path in study:
            time.sleep(0.05)
            read.append(path)
            yield path

    with pytest.raises(IngestTimeoutError, match=r"longer than 0\.2 s"):
        anyio.run(lambda: pipeline.run_async(slow_sources(), deadlines=Deadlines(ingest_s=0.2)))
    assert 0 < len(read) < len(study)
