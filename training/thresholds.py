"""Operating thresholds per finding, and the router's reference usage, from validation predictions.

A triage model is read at an operating point, not by its AUC. Critical findings (a missed
hemorrhage or herniation costs far more than a second look) are read at high sensitivity: the
largest threshold whose validation sensitivity is still at least 0.95, so that as few studies as
possible are flagged while 95% of the positives are. Every other finding is read at the threshold
that maximises Youden's J (sensitivity + specificity - 1), a balanced point. A finding whose known
validation labels lack positives or negatives has no ROC curve: it keeps the fallback 0.5, and
the choice says so (``method == "fallback"``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sklearn.metrics import roc_curve

from service.findings import FINDINGS

CRITICAL_SENSITIVITY = 0.95
FALLBACK_THRESHOLD = 0.5

Method = Literal["sensitivity", "youden", "fallback", "priority", "false_positive_rate"]


@dataclass(frozen=True)
class ThresholdChoice:
    """One finding's operating threshold, how it was chosen, and what it gives on validation."""

    code: str
    threshold: float
    method: Method
    positives: int
    negatives: int
    sensitivity: float | None = None
    specificity: float | None = None


def high_sensitivity_threshold(
    scores: np.ndarray, labels: np.ndarray, sensitivity: float = CRITICAL_SENSITIVITY
) -> float:
    """The largest threshold t with ``mean(scores[positives] >= t) >= sensitivity``."""
    positive_scores = np.sort(scores[labels == 1])[::-1]
    # The k-th highest positive score keeps k positives at or above it; the epsilon keeps
    # 0.95 * 20 = 19 from rounding up to 20.
    needed = max(1, math.ceil(sensitivity * len(positive_scores) - 1e-9))
    return float(positive_scores[needed - 1])


def youden_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The threshold maximising sensitivity + specificity - 1 (the highest such on ties)."""
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    # roc_curve's first threshold is +inf (nothing positive): never the best, skip it.
    j = tpr[1:] - fpr[1:]
    return float(thresholds[1:][int(np.argmax(j))])


def _rates(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    predicted = scores >= threshold
    positive = labels == 1
    sensitivity = float(predicted[positive].mean())
    specificity = float((~predicted[~positive]).mean())
    return sensitivity, specificity


def choose_thresholds(
    labels: np.ndarray,
    probabilities: np.ndarray,
    critical: Sequence[bool] | None = None,
    *,
    sensitivity: float = CRITICAL_SENSITIVITY,
) -> list[ThresholdChoice]:
    """One choice per finding (``service.findings`` order) from validation ``labels`` [N, 75]
    (1, 0 or NaN for unknown) and ``probabilities`` [N, 75]."""
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.shape != probabilities.shape or labels.shape[1] != len(FINDINGS):
        raise ValueError(
            f"labels {labels.shape} and probabilities {probabilities.shape} must both be "
            f"[studies, {len(FINDINGS)}]"
        )
    if critical is None:
        critical = [f.critical for f in FINDINGS]
    choices = []
    for j, finding in enumerate(FINDINGS):
        known = ~np.isnan(labels[:, j])
        y, p = labels[known, j], probabilities[known, j]
        positives, negatives = int((y == 1).sum()), int((y == 0).sum())
        if positives == 0 or negatives == 0:
            choices.append(
                ThresholdChoice(finding.code, FALLBACK_THRESHOLD, "fallback", positives, negatives)
            )
            continue
        method: Method = "sensitivity" if critical[j] else "youden"
        if method == "sensitivity":
            threshold = high_sensitivity_threshold(p, y, sensitivity)
        else:
            threshold = youden_threshold(p, y)
        threshold = min(max(threshold, 0.0), 1.0)
        sens, spec = _rates(p, y, threshold)
        choices.append(
            ThresholdChoice(finding.code, threshold, method, positives, negatives, sens, spec)
        )
    return choices


def router_reference(router_weights: np.ndarray | None, experts: int) -> list[float]:
    """Mean study-level expert weights over the validation set (uniform without a router)."""
    if router_weights is None or experts == 1:
        return [1.0 / experts] * experts
    weights = np.asarray(router_weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != experts:
        raise ValueError(
            f"router weights have shape {weights.shape}; expected [studies, {experts}]"
        )
    mean = weights.mean(axis=0)
    return [float(w) for w in mean / mean.sum()]
