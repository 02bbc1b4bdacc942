"""``headct batch merge``: the shards of one archive (``--shard INDEX/COUNT`` runs, one per node or
Kubernetes Job index) combined into one results folder, as if one run had scored them all.

Only finished shards are merged (their ``summary.json`` says ``complete``), of one model and one
shard count, each index once, with no study in two shards; the merged folder is a results folder
like any other (journal, tables, summary listing each shard's own throughput).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.batch.results import ResultsFolder, Row, atomic_write
from service.batch.sources import Shard
from service.batch.summary import finish
from service.model_card import ModelCard

POLL_S = 5.0


class MergeError(ValueError):
    """The shards cannot be merged (unfinished, missing, or of different runs); says which."""


def _shard_folders(paths: Sequence[Path]) -> list[ResultsFolder]:
    """The given shard folders, and the shard folders one level inside a given parent."""
    folders: list[ResultsFolder] = []
    for path in paths:
        if (path / "run.json").is_file():
            folders.append(ResultsFolder(path))
        elif path.is_dir():
            folders.extend(
                ResultsFolder(child)
                for child in sorted(path.iterdir())
                if (child / "run.json").is_file()
            )
    return folders


def _finished(folder: ResultsFolder) -> dict[str, Any] | None:
    if not folder.summary.is_file():
        return None
    summary: dict[str, Any] = json.loads(folder.summary.read_text())
    return summary if summary.get("complete") else None


def _wait_for(
    paths: Sequence[Path], expect: int | None, wait_s: float
) -> list[tuple[ResultsFolder, dict[str, Any], dict[str, Any]]]:
    """(folder, manifest, summary) of each shard, once all are finished (and ``expect`` of them
    exist), polling up to ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        folders = _shard_folders(paths)
        unfinished = [str(f.path) for f in folders if _finished(f) is None]
        enough = expect is None or len(folders) >= expect
        if folders and enough and not unfinished:
            break
        if time.monotonic() >= deadline:
            if not folders:
                raise MergeError(f"no shard results under {', '.join(map(str, paths))}")
            if unfinished:
                raise MergeError(f"unfinished shards (no complete summary): {unfinished}")
            raise MergeError(f"found {len(folders)} shards, expected {expect}")
        time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
    return [(f, f.read_manifest() or {}, _finished(f) or {}) for f in folders]


def merge_shards(
    paths: Sequence[Path],
    out: Path,
    *,
    expect: int | None = None,
    wait_s: float = 0.0,
    labels: Path | None = None,
) -> dict[str, Any]:
    """Merge the shards into ``out``; returns its summary."""
    shards = _wait_for(paths, expect, wait_s)
    first = shards[0][1]
    indices: dict[int, Path] = {}
    count = None
    for folder, found, _ in shards:
        for key in ("model", "finding_codes", "experts"):
            if found.get(key) != first.get(key):
                raise MergeError(
                    f"{folder.path} scored {key} {found.get(key)!r}, not {first[key]!r}"
                )
        shard = Shard.parse(found["shard"])
        if count is not None and shard.count != count:
            raise MergeError(f"{folder.path} is a shard of {shard.count}, the others of {count}")
        count = shard.count
        if shard.index in indices:
            raise MergeError(f"{folder.path} and {indices[shard.index]} are both shard {shard}")
        indices[shard.index] = folder.path
    if expect is not None and count != expect:
        raise MergeError(f"the shards are of {count}, not the --expect {expect}")
    missing = sorted(set(range(count or 0)) - set(indices))
    if missing:
        raise MergeError(f"shards {missing} of {count} are missing")

    rows: dict[str, Row] = {}
    where: dict[str, Path] = {}
    for folder, _, _ in shards:
        for uid, row in folder.load_rows().items():
            if uid in rows:
                raise MergeError(f"study {uid} is in {where[uid]} and {folder.path}")
            rows[uid], where[uid] = row, folder.path

    merged = ResultsFolder(out)
    merged.path.mkdir(parents=True, exist_ok=True)
    atomic_write(merged.run_file, json.dumps({**first, "shard": f"all/{count}"}, indent=2) + "\n")
    atomic_write(merged.journal, "".join(json.dumps(r) + "\n" for r in rows.values()))
    card = ModelCard.from_json(json.dumps(first["card"]))
    return finish(
        merged,
        rows,
        card,
        shard=f"all/{count}",
        shards=[{"shard": m["shard"], **(s.get("this_run") or {})} for _, m, s in shards],
        labels=labels,
    )
