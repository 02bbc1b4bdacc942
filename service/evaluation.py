"""The pure-numpy pieces of evaluation that serving and training share: labels.csv (``headct
synth``'s format, and what ``headct train`` reads), the rank AUC, and Wilson intervals.

``headct batch --labels`` evaluates its scored studies with these in the gateway's environment
(no scikit-learn, no torch); ``training.evaluate``, ``training.operating_points`` and
``training.data`` import them from here (``service`` never imports ``training``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from service.findings import FINDING_CODES, NUM_FINDINGS


class LabelsError(ValueError):
    """labels.csv is missing or malformed; the message names the file, row and column."""


def read_label_rows(path: Path) -> list[tuple[str, dict[str, str], np.ndarray]]:
    """Each study of a labels.csv: its UID, its row (for optional columns such as ``path`` and
    ``patient_id``), and its labels (float32 [75] in ``service.findings`` order: 1, 0 or NaN for
    blank, unknown). Every finding column must be present."""
    if not path.is_file():
        raise LabelsError(f"{path} not found: the data folder needs a labels.csv")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        if "study_uid" not in columns:
            raise LabelsError(f"{path}: no study_uid column")
        missing = [code for code in FINDING_CODES if code not in columns]
        if missing:
            raise LabelsError(f"{path}: missing finding columns {', '.join(missing[:5])}...")
        records = []
        for line, row in enumerate(reader, start=2):
            labels = np.full(NUM_FINDINGS, np.nan, dtype=np.float32)
            for i, code in enumerate(FINDING_CODES):
                value = (row[code] or "").strip()
                if value == "":
                    continue
                if value not in ("0", "1", "0.0", "1.0"):
                    raise LabelsError(f"{path}:{line}: {code} is {value!r}, not 0, 1 or blank")
                labels[i] = float(value)
            records.append((row["study_uid"].strip(), row, labels))
    if not records:
        raise LabelsError(f"{path} has no studies")
    return records


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion (sensible at 0 and at 1, unlike Wald's)."""
    if trials == 0:
        return (float("nan"), float("nan"))
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return (low, high)


def resampled_auc(scores: np.ndarray, labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """AUC of each resample of one finding, given how often each study was drawn.

    ``counts`` is [B, N]: a resample holding study i ``counts[b, i]`` times has the
    Mann-Whitney AUC of the weighted pairs, ties counting one half, computed here per tie group
    of scores so that B resamples cost a few array passes. NaN where a resample lacks a class.
    """
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    positive = labels[order] == 1.0
    weights = counts[:, order].astype(np.float64)
    group_starts = np.flatnonzero(np.r_[True, np.diff(sorted_scores) != 0])
    pos = np.add.reduceat(np.where(positive, weights, 0.0), group_starts, axis=1)
    neg = np.add.reduceat(np.where(positive, 0.0, weights), group_starts, axis=1)
    neg_below = np.cumsum(neg, axis=1) - neg
    wins = (pos * (neg_below + 0.5 * neg)).sum(axis=1)
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)
