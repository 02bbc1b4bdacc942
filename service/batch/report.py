"""The evaluation of a batch run against labels (``headct batch --labels labels.csv``).

For the triaged studies that have labels: per-finding ROC AUC (the rank statistic, ties counting
one half) with a 95% percentile bootstrap interval (studies resampled with replacement, the same
resamples for every finding), the macro AUC over the findings that have one, and the study-level
triage operating points the gateway's priority gives: sensitivity and specificity of "critical"
(studies with a critical finding called critical) and of "urgent or higher", with Wilson 95%
intervals. The true priority of a study is the gateway's own rule
(``service.findings.triage_priority``) applied to its positive labels, unknown counting as
negative. Figures and the comparison of runs are ``headct evaluate``'s (the training side).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.batch.results import TRIAGED, Row, atomic_write
from service.evaluation import read_label_rows, resampled_auc, wilson_interval
from service.findings import FINDING_CODES, TriagePriority, triage_priority

BOOTSTRAP = 1000
LEVELS = {"critical": 2, "urgent_or_higher": 1}
_RANK = {TriagePriority.ROUTINE: 0, TriagePriority.URGENT: 1, TriagePriority.CRITICAL: 2}


def _interval(values: np.ndarray) -> list[float] | None:
    values = values[~np.isnan(values)]
    if values.size == 0:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return [round(float(low), 4), round(float(high), 4)]


def finding_aucs(
    probabilities: np.ndarray, labels: np.ndarray, resamples: int = BOOTSTRAP, seed: int = 0
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per finding: AUC, its bootstrap interval, positives and negatives; and the macro AUC with
    its interval (each resample's mean over the findings that have an AUC on the full set)."""
    n = probabilities.shape[0]
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples) if n else np.zeros((0, 0))
    per: dict[str, dict[str, Any]] = {}
    replicates = []
    for j, code in enumerate(FINDING_CODES):
        known = ~np.isnan(labels[:, j])
        y, p = labels[known, j], probabilities[known, j]
        positives, negatives = int((y == 1).sum()), int((y == 0).sum())
        auc = None
        ci = None
        if positives and negatives:
            auc = float(resampled_auc(p, y, np.ones((1, y.size)))[0])
            boot = resampled_auc(p, y, counts[:, known])
            replicates.append(boot)
            ci = _interval(boot)
        per[code] = {
            "auc": None if auc is None else round(auc, 4),
            "auc_ci95": ci,
            "positives": positives,
            "negatives": negatives,
        }
    defined = [v["auc"] for v in per.values() if v["auc"] is not None]
    macro: dict[str, Any] = {"auc": None, "auc_ci95": None, "findings": len(defined)}
    if defined:
        stacked = np.stack(replicates, axis=1)
        # a resample that left every finding one class has no macro: NaN, left out
        usable = ~np.isnan(stacked).all(axis=1)
        means = np.full(stacked.shape[0], np.nan)
        means[usable] = np.nanmean(stacked[usable], axis=1)
        macro = {"auc": round(float(np.mean(defined)), 4), "auc_ci95": _interval(means)}
        macro["findings"] = len(defined)
    return per, macro


def triage_points(labels: np.ndarray, predicted: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Sensitivity and specificity of each priority level, against the labels' priority."""
    truth = np.array(
        [
            _RANK[triage_priority(FINDING_CODES[j] for j in np.flatnonzero(row == 1))]
            for row in labels
        ]
    )
    called = np.array([_RANK[TriagePriority(p)] for p in predicted])
    points = {}
    for level, floor in LEVELS.items():
        positive, flagged = truth >= floor, called >= floor
        tp, pos = int((positive & flagged).sum()), int(positive.sum())
        tn, neg = int((~positive & ~flagged).sum()), int((~positive).sum())
        points[level] = {
            "sensitivity": round(tp / pos, 4) if pos else None,
            "sensitivity_ci95": _wilson(tp, pos),
            "specificity": round(tn / neg, 4) if neg else None,
            "specificity_ci95": _wilson(tn, neg),
            "positives": pos,
            "negatives": neg,
        }
    return points


def _wilson(successes: int, trials: int) -> list[float] | None:
    if not trials:
        return None
    return [round(v, 4) for v in wilson_interval(successes, trials)]


def write_evaluation(
    folder: Path,
    rows: Sequence[Row],
    labels_path: Path,
    note: str,
    resamples: int = BOOTSTRAP,
) -> dict[str, Any]:
    """``evaluation.json`` and ``evaluation.md`` in ``folder``; returns the JSON's content."""
    labelled = {uid: labels for uid, _, labels in read_label_rows(labels_path)}
    scored = [r for r in rows if r["status"] == TRIAGED and r["study_uid"] in labelled]
    labels = np.array([labelled[r["study_uid"]] for r in scored], dtype=np.float64)
    labels = labels.reshape(len(scored), len(FINDING_CODES))
    probabilities = np.array([[r[c] for c in FINDING_CODES] for r in scored], dtype=np.float64)
    probabilities = probabilities.reshape(labels.shape)
    per, macro = finding_aucs(probabilities, labels, resamples)
    models = sorted({f"{r['model_name']} v{r['model_version']}" for r in scored})
    report: dict[str, Any] = {
        "labels": str(labels_path),
        "models": models,
        "note": note,
        "studies_evaluated": len(scored),
        "labelled_not_triaged": len(labelled) - len(scored),
        "bootstrap_resamples": resamples,
        "macro": macro,
        "triage": triage_points(labels, [r["priority"] for r in scored]),
        "per_finding": per,
    }
    atomic_write(folder / "evaluation.json", json.dumps(report, indent=2) + "\n")
    atomic_write(folder / "evaluation.md", _markdown(report))
    return report


def _fmt(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _markdown(report: dict[str, Any]) -> str:
    macro = report["macro"]
    lines = [
        "# Batch evaluation",
        "",
        report["note"],
        "",
        f"Model {', '.join(report['models']) or '-'}; labels `{report['labels']}`; "
        f"{report['studies_evaluated']} triaged studies with labels "
        f"({report['labelled_not_triaged']} labelled studies not triaged: failed or not in the "
        f"source). Intervals: 95%, {report['bootstrap_resamples']} bootstrap resamples of the "
        "studies (AUC), Wilson (sensitivity, specificity).",
        "",
        f"Macro AUC over the {macro['findings']} findings with both classes: "
        f"{_fmt(macro['auc'], macro['auc_ci95'])}",
        "",
        "| priority level | sensitivity [95% CI] | specificity [95% CI] | positives | negatives |",
        "|---|---|---|---|---|",
    ]
    for level, p in report["triage"].items():
        lines.append(
            f"| {level} | {_fmt(p['sensitivity'], p['sensitivity_ci95'])} | "
            f"{_fmt(p['specificity'], p['specificity_ci95'])} | {p['positives']} | "
            f"{p['negatives']} |"
        )
    lines += ["", "| finding | AUC [95% CI] | positives | negatives |", "|---|---|---|---|"]
    for code, f in report["per_finding"].items():
        lines.append(
            f"| {code} | {_fmt(f['auc'], f['auc_ci95'])} | {f['positives']} | {f['negatives']} |"
        )
    return "\n".join(lines) + "\n"
