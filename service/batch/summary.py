"""The end of a run (or a merge): the tables from every journaled row, the evaluation when there
are labels, and ``summary.json`` (counts by status, priority and error code; throughput)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from service.batch.results import Columns, ResultsFolder, Row, atomic_write, counts
from service.model_card import ModelCard


def finish(
    folder: ResultsFolder,
    rows: dict[str, Row],
    card: ModelCard,
    *,
    shard: str,
    run: dict[str, Any] | None = None,
    shards: list[dict[str, Any]] | None = None,
    labels: Path | None = None,
) -> dict[str, Any]:
    """Write the tables, the evaluation (with ``labels``) and the summary; return the summary."""
    ordered = list(rows.values())
    notes = folder.write_tables(ordered, Columns.of(card))
    outputs = [p.name for p in (folder.parquet, folder.csv) if p.is_file()]
    if labels is not None:
        from service.batch.report import write_evaluation

        write_evaluation(folder.path, ordered, labels, card.intended_use)
        outputs += ["evaluation.json", "evaluation.md"]
    summary: dict[str, Any] = {
        "model": {"name": card.name, "version": card.version},
        "intended_use": card.intended_use,
        "shard": shard,
        "complete": True,
        **counts(ordered),
        "outputs": [*outputs, folder.summary.name],
        "notes": notes,
    }
    if run is not None:
        summary["this_run"] = run
    if shards is not None:
        summary["shards"] = shards
    atomic_write(folder.summary, json.dumps(summary, indent=2) + "\n")
    return summary


def describe(summary: dict[str, Any]) -> str:
    """A few lines for a person: counts, throughput, where the files are."""
    model = summary["model"]
    lines = [
        f"{summary['studies']} studies, model {model['name']} v{model['version']} "
        f"(shard {summary['shard']})",
        "  by status:   " + _pairs(summary["by_status"]),
        "  by priority: " + _pairs(summary["by_priority"]),
        "  by error:    " + _pairs(summary["by_error_code"]),
    ]
    run = summary.get("this_run")
    if run:
        rate = run["studies_per_s"]
        lines.append(
            f"  this run: {run['scored']} scored ({run['already_done']} done before) in "
            f"{run['wall_s']:.1f} s" + (f", {rate:.2f} studies/s" if rate else "")
        )
    lines += [f"  note: {note}" for note in summary["notes"]]
    lines.append("  wrote: " + ", ".join(summary["outputs"]))
    return "\n".join(lines) + "\n"


def _pairs(values: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(values.items())) or "-"
