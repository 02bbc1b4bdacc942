"""A batch run's results folder: the journal it resumes from, the tables and summary it ends with.

    RESULTS/run.json         the model (name, version, findings, experts) and shard it scores for
    RESULTS/journal.jsonl    one JSON row per study, appended as studies finish (the truth)
    RESULTS/results.parquet  every study's row, written when the run ends (pyarrow: the
    RESULTS/results.csv        ``batch`` extra; without it only the CSV), from the journal
    RESULTS/summary.json     counts by status, priority and error code; this run's throughput

The journal is append-only: a batch of rows is one ``write`` of whole lines, flushed and fsynced
before the next batch is scored, so after a crash or ``kill -9`` it holds whole rows and at most
one cut-off last line, which is dropped (truncated away) when it is opened again. A study is
scored again only if the journal has no row for it (or, with ``retry_failed``, only a failed one).
The tables and summary are replaced atomically (written beside, then renamed), so a reader never
sees half a file: after an interruption they are those of the last finished run, or absent.
"""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from service.model_card import ModelCard
from service.schemas import TriageResult

TRIAGED = "triaged"
FAILED = "failed"
PARQUET_HINT = (
    "Parquet needs pyarrow, the batch extra: pip install 'headct-triage[batch]' "
    "(wrote the CSV only)"
)

Row = dict[str, Any]


class ResultsFolderError(ValueError):
    """The results folder belongs to another model or shard, or its files are damaged."""


def _router_columns(experts: int) -> list[str]:
    return [f"router_weight_{k}" for k in range(experts)]


class Columns:
    """The table's columns for one model: identity and outcome, the card's findings (one column
    each, named by code, in card order), the router's study weights, the key slice, then
    provenance and each study's stage times."""

    HEAD = (
        "study_uid",
        "series_uid",
        "status",
        "error_code",
        "error_message",
        "priority",
        "priority_findings",
        "priority_basis",
    )
    TAIL = (
        "key_slice",
        "key_finding",
        "key_source_index",
        "key_sop_instance_uid",
        "instances",
        "warnings",
        "read_ms",
        "select_ms",
        "resample_ms",
        "inference_ms",
        "model_name",
        "model_version",
    )
    STRINGS = frozenset((*HEAD, "key_finding", "key_sop_instance_uid", "warnings", "model_name"))
    INTEGERS = frozenset(("key_slice", "key_source_index", "instances", "model_version"))

    def __init__(self, finding_codes: Sequence[str], experts: int) -> None:
        self.finding_codes = list(finding_codes)
        self.router = _router_columns(experts)
        self.names = [*self.HEAD, *self.finding_codes, *self.router, *self.TAIL]

    @classmethod
    def of(cls, card: ModelCard) -> Columns:
        return cls([f.code for f in card.findings], card.adapter.experts)

    def kind(self, name: str) -> str:
        if name in self.STRINGS:
            return "string"
        return "int" if name in self.INTEGERS else "float"


def triaged_row(result: TriageResult, instances: int | None, inference_ms: float) -> Row:
    """The row of a triaged study (the gateway's result, flattened)."""
    row: Row = {
        "study_uid": result.study_uid,
        "series_uid": result.series_uid,
        "status": TRIAGED,
        "error_code": None,
        "error_message": None,
        "priority": result.triage.priority.value,
        "priority_findings": " ".join(result.triage.findings) or None,
        # "findings", "study_score" (the card's study-level score alone set it), or None (routine)
        "priority_basis": result.triage.basis,
    }
    row.update({f.code: f.probability for f in result.findings})
    row.update(
        zip(_router_columns(result.router.experts), result.router.study_weights, strict=True)
    )
    timing = result.timing_ms
    row.update(
        {
            "key_slice": result.slices.key_slice,
            "key_finding": result.slices.key_finding,
            "key_source_index": result.slices.key_source_index,
            "key_sop_instance_uid": result.slices.key_sop_instance_uid,
            "instances": instances,
            "warnings": " | ".join(result.warnings) or None,
            "read_ms": timing.read,
            "select_ms": timing.select,
            "resample_ms": timing.resample,
            "inference_ms": round(inference_ms, 3),
            "model_name": result.model.name,
            "model_version": result.model.version,
        }
    )
    return row


def failed_row(
    study_uid: str,
    code: str,
    message: str,
    card: ModelCard,
    instances: int | None,
    timing_ms: dict[str, float] | None = None,
) -> Row:
    """The row of a study that could not be triaged: its error code and sentence."""
    timing = timing_ms or {}
    return {
        "study_uid": study_uid,
        "status": FAILED,
        "error_code": code,
        "error_message": message,
        "instances": instances,
        **{f"{k}_ms": round(v, 3) for k, v in timing.items()},
        "model_name": card.name,
        "model_version": card.version,
    }


def manifest(card: ModelCard, shard: str) -> dict[str, Any]:
    """What a results folder is for (resuming or merging requires the same model, findings,
    experts and shard), and the card itself, which a merge writes its tables by."""
    return {
        "model": {"name": card.name, "version": card.version},
        "finding_codes": Columns.of(card).finding_codes,
        "experts": card.adapter.experts,
        "shard": shard,
        "card": json.loads(card.to_json()),
    }


class ResultsFolder:
    """One run's (or one shard's, or a merge's) results folder."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.journal = path / "journal.jsonl"
        self.run_file = path / "run.json"
        self.csv = path / "results.csv"
        self.parquet = path / "results.parquet"
        self.summary = path / "summary.json"

    # ---- what the folder is for ----

    def read_manifest(self) -> dict[str, Any] | None:
        if not self.run_file.is_file():
            return None
        data: dict[str, Any] = json.loads(self.run_file.read_text())
        return data

    def claim(self, wanted: dict[str, Any]) -> None:
        """Write the manifest, or check that the folder's is the same (the same model and shard:
        rows of two models in one table would be compared as if they were one)."""
        self.path.mkdir(parents=True, exist_ok=True)
        found = self.read_manifest()
        if found is None:
            atomic_write(self.run_file, json.dumps(wanted, indent=2) + "\n")
            return
        for key in ("model", "finding_codes", "experts", "shard"):
            if found.get(key) != wanted.get(key):
                raise ResultsFolderError(
                    f"{self.path} holds results for {key} {found.get(key)!r}, not "
                    f"{wanted.get(key)!r}: use another --out, or the same {key} to resume"
                )

    # ---- the journal ----

    def load_rows(self) -> dict[str, Row]:
        """Every study's latest row. A last line cut off by a crash is truncated away, so the
        next append starts on a line of its own."""
        if not self.journal.is_file():
            return {}
        data = self.journal.read_bytes()
        end = data.rfind(b"\n") + 1
        rows: dict[str, Row] = {}
        for number, line in enumerate(data[:end].splitlines(), start=1):
            try:
                row = json.loads(line)
            except ValueError:
                raise ResultsFolderError(f"{self.journal}:{number} is not a JSON row") from None
            rows[row["study_uid"]] = row
        if end < len(data):
            with self.journal.open("r+b") as handle:
                handle.truncate(end)
        return rows

    def append(self, rows: Iterable[Row]) -> None:
        """Journal rows durably: whole lines in one write, on disk before this returns."""
        payload = "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows).encode()
        if not payload:
            return
        fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)

    # ---- the tables ----

    def write_tables(self, rows: Sequence[Row], columns: Columns) -> list[str]:
        """The CSV and, with pyarrow, the Parquet file; returns notes (what was left out)."""
        ordered = sorted(rows, key=lambda r: r["study_uid"])
        write_csv(self.csv, ordered, columns)
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            self.parquet.unlink(missing_ok=True)  # a stale one would disagree with the CSV
            return [PARQUET_HINT]
        write_parquet(self.parquet, ordered, columns)
        return []


def atomic_write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def write_csv(path: Path, rows: Sequence[Row], columns: Columns) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns.names, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            # repr: a float written back reads as the same float
            writer.writerow({k: repr(v) if isinstance(v, float) else v for k, v in row.items()})
    os.replace(partial, path)


def write_parquet(path: Path, rows: Sequence[Row], columns: Columns) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"string": pa.string(), "int": pa.int64(), "float": pa.float64()}
    schema = pa.schema([(name, types[columns.kind(name)]) for name in columns.names])
    table = pa.Table.from_pylist([{n: r.get(n) for n in columns.names} for r in rows], schema)
    partial = path.with_name(path.name + ".partial")
    pq.write_table(table, partial)
    os.replace(partial, path)


def read_csv(path: Path, columns: Columns) -> list[Row]:
    """The CSV back as rows of typed values (empty cells: None)."""
    convert = {"string": str, "int": int, "float": float}
    with path.open(newline="") as handle:
        return [
            {k: None if v == "" else convert[columns.kind(k)](v) for k, v in row.items()}
            for row in csv.DictReader(handle)
        ]


def counts(rows: Iterable[Row]) -> dict[str, Any]:
    """Studies by status, by priority (triaged ones) and by error code (failed ones)."""
    rows = list(rows)
    return {
        "studies": len(rows),
        "by_status": dict(Counter(r["status"] for r in rows)),
        "by_priority": dict(Counter(r["priority"] for r in rows if r["status"] == TRIAGED)),
        "by_error_code": dict(Counter(r["error_code"] for r in rows if r["status"] == FAILED)),
    }
