"""Interrupted runs continue where they stopped (Ctrl-C and ``kill -9`` of a real ``headct
batch`` process), no study is scored twice, and shards merged equal one unsharded run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from service.backends.onnx import OnnxBackend
from service.batch.merge import MergeError, merge_shards
from service.batch.results import ResultsFolder, ResultsFolderError, Row, manifest
from service.batch.runner import BatchAbortedError, BatchRunner
from service.batch.sources import Shard
from service.pipeline import TriagePipeline
from testing.onnx_fixture import MODEL_NAME, FixtureModel
from tests.batch.conftest import STUDIES, Score

REPO = Path(__file__).resolve().parents[2]


def _batch(archive: Path, out: Path, model: FixtureModel) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "service.cli", "batch", str(archive), "--out", str(out)]
    options = ["--workers", "1", "--batch-size", "1", "--no-progress"]
    env = {
        **os.environ,
        "HEADCT_MODEL_REPOSITORY": str(model.repository),
        "HEADCT_ONNX_INTRA_OP_THREADS": "1",
    }
    return subprocess.Popen(
        [*command, *options, "--model-repository", str(model.repository)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: the workers go down with it
    )


def _journal_lines(out: Path) -> list[str]:
    path = out / "journal.jsonl"
    return path.read_text().splitlines() if path.is_file() else []


def _wait_for_rows(process: subprocess.Popen[bytes], out: Path, rows: int) -> None:
    deadline = time.monotonic() + 120
    while len(_journal_lines(out)) < rows:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no rows journaled in time"
        time.sleep(0.02)


def test_ctrl_c_and_kill_9_then_the_same_command_finishes_scoring_no_study_twice(
    archive: Path, fixture_model: FixtureModel, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = _batch(archive, out, fixture_model)
    try:
        _wait_for_rows(first, out, 1)
        first.send_signal(signal.SIGINT)
        _, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 130, stderr.decode()
    assert b"Run the same command again to continue" in stderr
    after_interrupt = len(_journal_lines(out))
    assert 1 <= after_interrupt < STUDIES
    assert not (out / "summary.json").exists()

    second = _batch(archive, out, fixture_model)
    try:
        _wait_for_rows(second, out, after_interrupt + 1)
    finally:
        os.killpg(second.pid, signal.SIGKILL)
        second.communicate()
    assert len(_journal_lines(out)) < STUDIES, "killed before the end"

    third = _batch(archive, out, fixture_model)
    stdout, stderr = third.communicate(timeout=180)
    assert third.returncode == 0, stderr.decode()
    uids = [json.loads(line)["study_uid"] for line in _journal_lines(out)]
    assert len(uids) == len(set(uids)) == STUDIES  # every study once, none twice
    summary = json.loads((out / "summary.json").read_text())
    assert summary["studies"] == STUDIES and summary["complete"]
    assert summary["this_run"]["already_done"] + summary["this_run"]["scored"] == STUDIES
    assert f"{STUDIES} studies" in stdout.decode()


def test_a_row_cut_off_by_a_crash_is_dropped_and_the_journal_goes_on_whole(
    tmp_path: Path,
) -> None:
    folder = ResultsFolder(tmp_path)
    folder.append([{"study_uid": "1.2.3", "status": "triaged"}])
    with folder.journal.open("ab") as handle:
        handle.write(b'{"study_uid": "1.2.4", "sta')  # kill -9 in the middle of a write
    assert list(folder.load_rows()) == ["1.2.3"]
    folder.append([{"study_uid": "1.2.4", "status": "failed"}])
    assert [json.loads(x)["study_uid"] for x in _journal_lines(tmp_path)] == ["1.2.3", "1.2.4"]


def test_a_results_folder_refuses_another_model_or_shard(backend: Any, tmp_path: Path) -> None:
    folder = ResultsFolder(tmp_path)
    folder.claim(manifest(backend.card, "0/2"))
    folder.claim(manifest(backend.card, "0/2"))  # resuming: the same
    with pytest.raises(ResultsFolderError, match="shard"):
        folder.claim(manifest(backend.card, "1/2"))
    other = backend.card.model_copy(update={"version": 9})
    with pytest.raises(ResultsFolderError, match="model"):
        folder.claim(manifest(other, "0/2"))


def test_shards_partition_the_studies_by_a_stable_hash() -> None:
    uids = [f"1.2.826.0.1.3680043.8.498.{i}" for i in range(200)]
    shards = [Shard(i, 3) for i in range(3)]
    owners = [[s.index for s in shards if s.holds(uid)] for uid in uids]
    assert all(len(o) == 1 for o in owners)
    assert {o[0] for o in owners} == {0, 1, 2}
    # SHA-256 of the UID, not Python's salted hash(): the same in any process
    code = "from service.batch.sources import Shard; print(Shard(1, 3).holds('1.2.3.4'))"
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert runs == {f"{Shard(1, 3).holds('1.2.3.4')}\n"}
    for text in ("3/3", "1", "a/2", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            Shard.parse(text)


def test_shards_merged_equal_the_unsharded_run(
    score: Score,
    archive: Path,
    unsharded: tuple[Path, dict[str, Row], dict[str, Any]],
    tmp_path: Path,
) -> None:
    _, whole, _ = unsharded
    for index in range(2):
        score([archive], tmp_path / "shards" / f"shard-{index}", shard=Shard(index, 2), workers=1)
    with pytest.raises(MergeError, match="missing"):
        merge_shards([tmp_path / "shards" / "shard-0"], tmp_path / "partial")
    summary = merge_shards(
        [tmp_path / "shards"], tmp_path / "merged", expect=2, labels=archive / "labels.csv"
    )
    merged = ResultsFolder(tmp_path / "merged").load_rows()
    assert summary["studies"] == STUDIES and summary["shard"] == "all/2"
    assert [s["shard"] for s in summary["shards"]] == ["0/2", "1/2"]
    assert sum(s["scored"] for s in summary["shards"]) == STUDIES
    timing = {"read_ms", "select_ms", "resample_ms", "inference_ms"}
    assert set(merged) == set(whole)
    for uid, row in merged.items():
        assert {k: v for k, v in row.items() if k not in timing} == {
            k: v for k, v in whole[uid].items() if k not in timing
        }
    assert (tmp_path / "merged" / "results.parquet").is_file()
    assert (tmp_path / "merged" / "evaluation.json").is_file()
    # a shard merged twice is refused
    with pytest.raises(MergeError, match="both shard"):
        merge_shards([tmp_path / "shards", tmp_path / "shards" / "shard-0"], tmp_path / "twice")


def test_a_failing_backend_stops_the_run_and_the_next_run_scores_everything(
    fixture_model: FixtureModel, archive: Path, backend: Any, tmp_path: Path
) -> None:
    broken = OnnxBackend(fixture_model.repository / MODEL_NAME, intra_op_threads=1)
    broken.close()  # loaded, card readable, but it refuses to infer: as a backend gone away
    folder = ResultsFolder(tmp_path / "out")
    runner = BatchRunner(TriagePipeline(broken), folder, workers=1)
    with pytest.raises(BatchAbortedError, match="backend_unavailable"):
        runner.run([archive])
    assert folder.load_rows() == {}
    rows = BatchRunner(TriagePipeline(backend), folder, workers=1).run([archive])
    assert len(rows) == STUDIES and {r["status"] for r in rows.values()} == {"triaged"}


def test_a_study_too_costly_to_read_is_stopped_at_the_ingest_deadline(
    backend: Any, study_folders: dict[str, Path], tmp_path: Path
) -> None:
    folder = ResultsFolder(tmp_path / "out")
    uid, study = next(iter(study_folders.items()))
    runner = BatchRunner(TriagePipeline(backend), folder, workers=1, ingest_timeout_s=0.0)
    rows = runner.run([study])
    assert (rows[uid]["status"], rows[uid]["error_code"]) == ("failed", "ingest_timeout")
