"""``headct batch`` over folders and zips: studies found at any depth and in archives, each row
equal to the gateway pipeline's result for the same study, failures recorded as rows, Parquet and
CSV holding the same rows, labels evaluated."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from sklearn.metrics import roc_auc_score

from service.backends.onnx import OnnxBackend
from service.batch.results import Columns, ResultsFolder, Row, read_csv
from service.batch.runner import BatchAbortedError, BatchRunner, embedded_worker_settings
from service.findings import FINDING_CODES, FINDINGS
from service.pipeline import TriagePipeline
from service.schemas import TriageResult
from service.settings import Settings
from synth import SynthOptions
from synth.study import synthesize
from tests.batch.conftest import STUDIES, Score, copy_files


def assert_row_is_the_result(row: Row, result: TriageResult) -> None:
    assert row["status"] == "triaged"
    assert (row["study_uid"], row["series_uid"]) == (result.study_uid, result.series_uid)
    assert row["priority"] == result.triage.priority.value
    assert (row["priority_findings"] or "").split() == result.triage.findings
    assert row["priority_basis"] == result.triage.basis
    np.testing.assert_allclose(
        [row[f.code] for f in result.findings],
        [f.probability for f in result.findings],
        rtol=0,
        atol=1e-6,
    )
    weights = [row[f"router_weight_{k}"] for k in range(result.router.experts)]
    np.testing.assert_allclose(weights, result.router.study_weights, rtol=0, atol=1e-6)
    assert row["key_slice"] == result.slices.key_slice
    assert row["key_finding"] == result.slices.key_finding and row["key_finding"]
    assert row["key_sop_instance_uid"] == result.slices.key_sop_instance_uid
    assert (row["model_name"], row["model_version"]) == (result.model.name, result.model.version)


def _mixed_tree(root: Path, studies: dict[str, Path]) -> tuple[Path, Path]:
    """Six studies as an archive is found: one split across two folders at different depths,
    one inside another's folder, one loose at the top beside a text file and a dotfile, two in
    one zip inside the tree, and one in a zip given on its own."""
    uids = list(studies)
    files = {uid: sorted(folder.glob("*.dcm")) for uid, folder in studies.items()}
    tree = root / "tree"
    half = len(files[uids[0]]) // 2
    copy_files(files[uids[0]][:half], tree / "a")
    copy_files(files[uids[0]][half:], tree / "deep" / "x" / "y")
    copy_files(files[uids[1]], tree / "deep" / "x")
    copy_files(files[uids[2]], tree)
    (tree / "notes.txt").write_text("scanned 2024; see report\n")
    (tree / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tree / "zips").mkdir()
    with zipfile.ZipFile(tree / "zips" / "pair.zip", "w") as archive:
        for uid in uids[3:5]:
            for path in files[uid]:
                archive.write(path, f"{uid[-6:]}/{path.name}")
    alone = root / "alone.zip"
    with zipfile.ZipFile(alone, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files[uids[5]]:
            archive.write(path, path.name)
    return tree, alone


def test_a_mixed_tree_and_zips_score_as_the_gateway_does(
    score: Score,
    study_folders: dict[str, Path],
    reference: dict[str, TriageResult],
    tmp_path: Path,
) -> None:
    tree, alone = _mixed_tree(tmp_path, study_folders)
    rows, summary = score([tree, alone], tmp_path / "out", workers=2, batch_size=4)
    assert set(rows) == set(reference)
    for uid, result in reference.items():
        assert_row_is_the_result(rows[uid], result)
    assert rows[next(iter(reference))]["instances"] == 20
    assert summary["by_status"] == {"triaged": 6}
    scan = summary["this_run"]["scan"]
    assert scan["not_dicom"] == 1 and scan["unreadable"] == 0  # notes.txt; the dotfile ignored
    assert summary["this_run"]["scored"] == 6


def test_workers_that_run_the_model_themselves_score_as_the_gateway_does(
    score: Score,
    backend: OnnxBackend,
    settings: Settings,
    study_folders: dict[str, Path],
    reference: dict[str, TriageResult],
    tmp_path: Path,
) -> None:
    """The embedded CPU path of ``headct batch``: each worker loads the model pinned to the
    version this process loaded, one thread each, and infers its own studies."""
    worker_settings = embedded_worker_settings(settings, backend, workers=2)
    assert worker_settings is not None
    assert worker_settings.model_version == backend.card.version
    assert worker_settings.onnx_intra_op_threads >= 1 and not worker_settings.onnx_spinning
    tree, alone = _mixed_tree(tmp_path, study_folders)
    rows, summary = score(
        [tree, alone], tmp_path / "out", workers=2, worker_settings=worker_settings
    )
    assert set(rows) == set(reference)
    for uid, result in reference.items():
        assert_row_is_the_result(rows[uid], result)
    run = summary["this_run"]
    assert run["batches"] == STUDIES  # one study per call, in the workers
    assert run["stage_s"]["inference"] > 0


def test_triton_keeps_one_backend_in_the_scoring_process_and_batches(settings: Settings) -> None:
    from service.backends.triton import TritonBackend

    triton = TritonBackend("127.0.0.1:9", "headct_molre")  # lazy: nothing is contacted
    assert embedded_worker_settings(settings, triton, workers=2) is None


def test_workers_whose_model_cannot_load_stop_the_run_saying_why(
    backend: OnnxBackend, settings: Settings, archive: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty_repository"
    (empty / settings.model_name).mkdir(parents=True)
    broken = settings.model_copy(update={"model_repository": empty, "model_version": 1})
    folder = ResultsFolder(tmp_path / "out")
    runner = BatchRunner(TriagePipeline(backend), folder, workers=1, worker_settings=broken)
    with pytest.raises(BatchAbortedError, match="the backend failed"):
        runner.run([archive])
    assert folder.load_rows() == {}


def test_parquet_and_csv_hold_the_same_rows(
    unsharded: tuple[Path, dict[str, Row], dict[str, Any]], backend: Any
) -> None:
    out, rows, _ = unsharded
    columns = Columns.of(backend.card)
    table = pq.read_table(out / "results.parquet")
    assert table.column_names == columns.names
    from_parquet = table.to_pylist()
    from_csv = read_csv(out / "results.csv", columns)
    assert from_parquet == from_csv
    assert [r["study_uid"] for r in from_csv] == sorted(rows)
    for row in from_csv:
        assert row == {name: rows[row["study_uid"]].get(name) for name in columns.names}


def test_without_pyarrow_the_csv_is_written_and_the_note_says_how_to_get_parquet(
    unsharded: tuple[Path, dict[str, Row], dict[str, Any]],
    backend: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, rows, _ = unsharded
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    folder = ResultsFolder(tmp_path)
    (tmp_path / "results.parquet").write_bytes(b"stale")
    notes = folder.write_tables(list(rows.values()), Columns.of(backend.card))
    assert notes and "pip install 'headct-triage[batch]'" in notes[0]
    assert not folder.parquet.exists()
    assert len(read_csv(folder.csv, Columns.of(backend.card))) == len(rows)


def _damage(files: list[Path], into: Path, how: str) -> None:
    into.mkdir(parents=True)
    for path in files:
        ds = pydicom.dcmread(path)
        if how == "mr":
            ds.Modality = "MR"
            ds.save_as(into / path.name)
        elif how == "truncated":
            ds.save_as(into / path.name)
            data = (into / path.name).read_bytes()
            (into / path.name).write_bytes(data[: len(data) * 2 // 3])
        else:  # no Study Instance UID: cannot be grouped
            del ds.StudyInstanceUID
            ds.save_as(into / path.name)


def test_a_study_that_cannot_be_triaged_is_a_row_with_its_error_and_the_run_goes_on(
    score: Score,
    study_folders: dict[str, Path],
    reference: dict[str, TriageResult],
    tmp_path: Path,
) -> None:
    uids = list(study_folders)
    files = {uid: sorted(study_folders[uid].glob("*.dcm")) for uid in uids[:3]}
    source = tmp_path / "source"
    copy_files(files[uids[0]], source / "good")
    _damage(files[uids[1]], source / "mr", "mr")
    _damage(files[uids[2]], source / "cut", "truncated")
    _damage(files[uids[0]][:1], source / "orphan", "no_uid")
    rows, summary = score([source], tmp_path / "out", workers=1, batch_size=2)
    assert_row_is_the_result(rows[uids[0]], reference[uids[0]])
    assert (rows[uids[1]]["status"], rows[uids[1]]["error_code"]) == ("failed", "not_ct")
    assert (rows[uids[2]]["status"], rows[uids[2]]["error_code"]) == ("failed", "truncated_dicom")
    assert rows[uids[2]]["error_message"] and rows[uids[2]].get(FINDING_CODES[0]) is None
    assert summary["by_error_code"] == {"not_ct": 1, "truncated_dicom": 1}
    assert summary["this_run"]["scan"]["without_study_uid"] == 1
    table = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
    assert {r["study_uid"]: r["error_code"] for r in table} == {
        uids[0]: None,
        uids[1]: "not_ct",
        uids[2]: "truncated_dicom",
    }

    # Fixed and run again: failed rows stay unless asked to retry, then only they are scored.
    copy_files(files[uids[1]], source / "mr")  # the CT files replace the MR ones
    _, again = score([source], tmp_path / "out", workers=1)
    assert again["this_run"]["scored"] == 0
    rows, retried = score([source], tmp_path / "out", workers=1, retry_failed=True)
    assert retried["this_run"]["scored"] == 2
    assert_row_is_the_result(rows[uids[1]], reference[uids[1]])
    assert rows[uids[2]]["error_code"] == "truncated_dicom"


def _zip_study(files: list[Path], archive: Path) -> None:
    # Stored, not deflated as testing.studies.zip_bytes writes: a flipped byte must fail the
    # CRC-32 check (BadZipFile), not the decompressor.
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as handle:
        for path in files:
            handle.write(path, path.name)


def _corrupt_last_entry(archive: Path) -> None:
    """Flip the last stored byte of the archive's last entry (the end of its pixel data): the
    entry's header still reads, but reading it whole fails its CRC-32 check."""
    with zipfile.ZipFile(archive) as handle:
        info = handle.infolist()[-1]
    data = bytearray(archive.read_bytes())
    name_length = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_length = int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    data[start + info.compress_size - 1] ^= 0xFF
    archive.write_bytes(bytes(data))


def test_a_study_whose_instances_cannot_be_read_is_retrieve_failed_and_the_run_goes_on(
    score: Score,
    study_folders: dict[str, Path],
    reference: dict[str, TriageResult],
    tmp_path: Path,
) -> None:
    good = next(iter(study_folders))
    source = tmp_path / "source"
    source.mkdir()
    _zip_study(sorted(study_folders[good].glob("*.dcm")), source / "good.zip")
    # 512 x 512 slices (512 KiB each): the scan reads only each entry's first 64 KiB, so the study
    # is found, and its worker then fails the CRC-32 check reading the damaged entry whole.
    big = tmp_path / "big"
    synthesize(big, 1, seed=11, options=SynthOptions(slices=4, matrix=512))
    (damaged,) = [p for p in big.iterdir() if p.is_dir()]
    _zip_study(sorted(damaged.glob("*.dcm")), source / "damaged.zip")
    _corrupt_last_entry(source / "damaged.zip")
    rows, summary = score([source], tmp_path / "out", workers=1, batch_size=2)
    assert_row_is_the_result(rows[good], reference[good])
    failed = rows[damaged.name]
    assert (failed["status"], failed["error_code"]) == ("failed", "retrieve_failed")
    # The exception's type, not its text (which may quote what it read).
    assert failed["error_message"] == "The study could not be read (BadZipFile)."
    assert failed.get(FINDING_CODES[0]) is None and failed["instances"] == 4
    assert summary["by_error_code"] == {"retrieve_failed": 1}


def test_labels_give_per_finding_auc_with_intervals_and_triage_operating_points(
    unsharded: tuple[Path, dict[str, Row], dict[str, Any]], archive: Path
) -> None:
    out, rows, summary = unsharded
    report = json.loads((out / "evaluation.json").read_text())
    assert "evaluation.md" in summary["outputs"]
    assert report["studies_evaluated"] == len(rows)
    assert "not for clinical use" in report["note"]
    labels = {
        line.split(",")[0]: np.array(line.strip().split(",")[1:], dtype=float)
        for line in (archive / "labels.csv").read_text().splitlines()[1:]
    }
    uids = sorted(rows)
    y = np.stack([labels[u] for u in uids])
    p = np.array([[rows[u][c] for c in FINDING_CODES] for u in uids])
    defined = 0
    for j, code in enumerate(FINDING_CODES):
        entry = report["per_finding"][code]
        if 0 < y[:, j].sum() < len(uids):
            defined += 1
            assert entry["auc"] == pytest.approx(roc_auc_score(y[:, j], p[:, j]), abs=1e-4)
            low, high = entry["auc_ci95"]
            assert 0 <= low <= high <= 1
        else:
            assert entry["auc"] is None and entry["auc_ci95"] is None
    assert report["macro"]["findings"] == defined > 0
    critical = [j for j, f in enumerate(FINDINGS) if f.critical]
    truth = (y[:, critical] == 1).any(axis=1)
    called = np.array([rows[u]["priority"] == "critical" for u in uids])
    point = report["triage"]["critical"]
    assert point["positives"] == truth.sum()
    if truth.any():
        assert point["sensitivity"] == pytest.approx((truth & called).sum() / truth.sum(), abs=1e-4)
    assert "| critical |" in (out / "evaluation.md").read_text()
