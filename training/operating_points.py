"""Study-level operating points: thresholds chosen for the triage priority users act on.

Reading each of 35 critical findings at 95% sensitivity multiplies their false positives: a
study is critical when any one of them fires, so the study-level specificity collapses (demo v1
called every study critical). Here the thresholds are chosen for the **priority** instead, on a
validation set drawn at clinical prevalence:

1. Each finding's score is read through its own false-positive rate on the validation studies
   negative for it: at a common rate ``q`` finding ``f`` fires when ``p_f`` exceeds the
   ``1 - q`` quantile of its negatives. One number ``q`` then moves all critical findings
   together, each at the same specificity, so that no finding with a poorly calibrated scale
   floods the study-level result.
2. **Critical**: the smallest ``q`` (the highest study specificity) at which at least 95% of the
   validation studies with a critical finding are called critical.
3. **Urgent**: with the critical thresholds fixed, the smallest ``q`` for the urgent findings at
   which 90% of the studies with an urgent or critical finding are called urgent or critical.
4. Findings that do not change the priority are read at a 2% false-positive rate each, so that
   the list of positive findings stays short (about one false positive per study across them).

The per-finding thresholds this gives are what the card carries and the gateway applies; the
rule from positives to priority (``service.findings.triage_priority``) is unchanged. The card also
records each priority level's operating point: its sensitivity and specificity on the validation
set with Wilson 95% intervals.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from service.evaluation import wilson_interval
from service.findings import FINDINGS, TriageClass
from training.thresholds import Method, ThresholdChoice

PRIORITY_SENSITIVITY = {"critical": 0.95, "urgent": 0.90}
ROUTINE_FALSE_POSITIVE_RATE = 0.02
# Candidate per-finding false-positive rates, from one in ten thousand to all.
_RATES = np.unique(np.concatenate([np.geomspace(1e-4, 1.0, 400), [1.0]]))


@dataclass(frozen=True)
class PriorityPoint:
    """One priority level's operating point, measured on the set it was chosen on (or another)."""

    level: str  # "critical" or "urgent" (urgent: urgent or critical, against routine)
    target_sensitivity: float
    false_positive_rate: float  # the per-finding rate q the level's findings are read at
    sensitivity: float
    sensitivity_ci95: tuple[float, float]
    specificity: float
    specificity_ci95: tuple[float, float]
    positives: int  # studies with a finding of the level (or higher)
    negatives: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _negative_quantiles(scores: np.ndarray, labels: np.ndarray, rate: float) -> float:
    """The threshold at which a fraction ``rate`` of the negatives (label 0) score at or above."""
    negatives = np.sort(scores[labels == 0])
    if len(negatives) == 0:
        return 0.5
    if rate >= 1.0:
        return 0.0
    # The k highest negatives fire (k = floor(rate * n)); the threshold sits just above the next.
    k = math.floor(rate * len(negatives) + 1e-9)
    below = negatives[len(negatives) - k - 1]
    return float(np.nextafter(below, np.inf)) if k < len(negatives) else 0.0


def _thresholds_at(
    labels: np.ndarray, probabilities: np.ndarray, columns: list[int], rate: float
) -> dict[int, float]:
    out = {}
    for j in columns:
        known = ~np.isnan(labels[:, j])
        out[j] = min(1.0, _negative_quantiles(probabilities[known, j], labels[known, j], rate))
    return out


def study_levels(probabilities: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Predicted priority per study: 2 critical, 1 urgent, 0 routine (the gateway's findings
    rule, ``service.priority``, without study scores)."""
    from service.priority import study_levels as rule_levels

    levels: np.ndarray = rule_levels(probabilities, thresholds)[0]
    return levels


def true_levels(labels: np.ndarray) -> np.ndarray:
    """True priority per study from its labels (unknown counts as negative)."""
    return study_levels(np.nan_to_num(labels, nan=0.0), np.full(len(FINDINGS), 0.5))


def measure(
    labels: np.ndarray,
    probabilities: np.ndarray,
    thresholds: np.ndarray,
    rates: dict[str, float] | None = None,
) -> list[PriorityPoint]:
    """Sensitivity and specificity of each priority level for these thresholds."""
    return level_points(true_levels(labels), study_levels(probabilities, thresholds), rates)


def level_points(
    truth: np.ndarray, predicted: np.ndarray, rates: dict[str, float] | None = None
) -> list[PriorityPoint]:
    """Sensitivity and specificity of each priority level, from the true and the predicted
    priority of each study (``true_levels``, ``study_levels``)."""
    points = []
    for level, floor in (("critical", 2), ("urgent", 1)):
        positive, called = truth >= floor, predicted >= floor
        tp, pos = int((called & positive).sum()), int(positive.sum())
        tn, neg = int((~called & ~positive).sum()), int((~positive).sum())
        points.append(
            PriorityPoint(
                level=level,
                target_sensitivity=PRIORITY_SENSITIVITY[level],
                false_positive_rate=(rates or {}).get(level, float("nan")),
                sensitivity=tp / pos if pos else float("nan"),
                sensitivity_ci95=wilson_interval(tp, pos),
                specificity=tn / neg if neg else float("nan"),
                specificity_ci95=wilson_interval(tn, neg),
                positives=pos,
                negatives=neg,
            )
        )
    return points


def placed_point(
    values: np.ndarray, truth: np.ndarray, normal: np.ndarray, sensitivity: float
) -> dict[str, float | None]:
    """The operating point of ``values >= t`` with ``t`` placed on these same studies: the
    highest threshold that calls at least ``sensitivity`` of the ``truth`` studies. Its
    sensitivity, its specificity, and the share of the ``normal`` studies it calls (None when
    there are none). ``truth`` must hold at least one study."""
    kept = math.ceil(sensitivity * truth.sum() - 1e-9)
    called = values >= np.sort(values[truth])[::-1][kept - 1]
    return {
        "sensitivity": float(called[truth].mean()),
        "specificity": float((~called[~truth]).mean()),
        "normal_called_critical": float(called[normal].mean()) if normal.any() else None,
    }


def _checked(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as float arrays of the same [studies, 75] shape, else a ValueError saying so."""
    labels = np.asarray(labels, dtype=np.float64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.shape != probabilities.shape or labels.shape[1:] != (len(FINDINGS),):
        raise ValueError(
            f"labels {labels.shape} and probabilities {probabilities.shape} must both be "
            f"[studies, {len(FINDINGS)}]"
        )
    return labels, probabilities


def _choices(
    labels: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray, methods: list[Method]
) -> list[ThresholdChoice]:
    """Each finding's threshold, how it was chosen, and its sensitivity and specificity on the
    studies whose label for it is known."""
    choices = []
    for j, finding in enumerate(FINDINGS):
        known = ~np.isnan(labels[:, j])
        y, p = labels[known, j], probabilities[known, j]
        positives, negatives = int((y == 1).sum()), int((y == 0).sum())
        called = p >= thresholds[j]
        choices.append(
            ThresholdChoice(
                finding.code,
                float(thresholds[j]),
                methods[j],
                positives,
                negatives,
                float(called[y == 1].mean()) if positives else None,
                float((~called[y == 0]).mean()) if negatives else None,
            )
        )
    return choices


def priority_operating_points(
    labels: np.ndarray,
    probabilities: np.ndarray,
    *,
    sensitivity: dict[str, float] | None = None,
    routine_rate: float = ROUTINE_FALSE_POSITIVE_RATE,
) -> tuple[list[ThresholdChoice], list[PriorityPoint]]:
    """Per-finding thresholds chosen for the study-level priority (see the module docstring),
    and the operating point of each priority level on this validation set."""
    labels, probabilities = _checked(labels, probabilities)
    targets = PRIORITY_SENSITIVITY | (sensitivity or {})
    by_class = {
        kind: [j for j, f in enumerate(FINDINGS) if f.triage is kind] for kind in TriageClass
    }
    thresholds = np.ones(len(FINDINGS))
    truth = true_levels(labels)
    rates: dict[str, float] = {}
    for level, kind, floor in (
        ("critical", TriageClass.CRITICAL, 2),
        ("urgent", TriageClass.URGENT, 1),
    ):
        positive = truth >= floor
        chosen = float(_RATES[0])  # no positives to keep: the most specific point
        if positive.any():
            for rate in _RATES:  # ascending: the first that reaches the target is the best
                trial = thresholds.copy()
                for j, t in _thresholds_at(labels, probabilities, by_class[kind], rate).items():
                    trial[j] = t
                called = study_levels(probabilities, trial) >= floor
                if called[positive].mean() >= targets[level] - 1e-12:
                    chosen = float(rate)
                    break
        for j, t in _thresholds_at(labels, probabilities, by_class[kind], chosen).items():
            thresholds[j] = t
        rates[level] = chosen
    routine = by_class[TriageClass.NONE]
    for j, t in _thresholds_at(labels, probabilities, routine, routine_rate).items():
        thresholds[j] = t

    method: dict[TriageClass, Method] = {
        TriageClass.CRITICAL: "priority",
        TriageClass.URGENT: "priority",
        TriageClass.NONE: "false_positive_rate",
    }
    choices = _choices(labels, probabilities, thresholds, [method[f.triage] for f in FINDINGS])
    return choices, measure(labels, probabilities, thresholds, rates)


# --- Study-level priority scores (service.priority) -------------------------------------------

SCORE_STRENGTH = 0.1  # the inverse L2 strength of the scores' logistic regressions
SCORE_FOLDS = 5
# A level's score is fitted only with at least this many validation studies on each side of it
# (else the findings rule alone, priority_operating_points).
MIN_SCORE_STUDIES = 20


@dataclass(frozen=True)
class PriorityScore:
    """A fitted study-level score for one level: ``weights . logit(p) + bias >= threshold``."""

    level: str
    weights: list[float]
    center: list[float]  # each logit's mean on the fitted set: weights apply to logit - center
    bias: float
    threshold: float


def _out_of_fold(
    features: np.ndarray, target: np.ndarray, strength: float, folds: int, seed: int
) -> tuple[np.ndarray, PriorityScore | None]:
    """Out-of-fold decision values of an L2 logistic regression of ``target`` on ``features``
    (each study scored by a model that did not see it), and the model fitted on all studies
    (threshold left at 0). None when a class has too few studies for the folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    smallest = int(min(target.sum(), (~target).sum()))
    if smallest < 2:
        return np.zeros(len(target)), None
    folds = min(folds, smallest)
    values = np.zeros(len(target))
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    for train, held in split.split(features, target):
        model = LogisticRegression(C=strength, max_iter=5000)
        values[held] = model.fit(features[train], target[train]).decision_function(features[held])
    model = LogisticRegression(C=strength, max_iter=5000).fit(features, target)
    return values, PriorityScore(
        "", model.coef_[0].tolist(), [0.0] * features.shape[1], float(model.intercept_[0]), 0.0
    )


def _score_threshold(
    values: np.ndarray, found: np.ndarray, target: np.ndarray, goal: float
) -> float:
    """The highest threshold at which ``values >= threshold`` or ``found`` calls at least
    ``goal`` of the ``target`` studies (the most specific such point)."""
    missed = target & ~found
    if target.sum() == 0 or found[target].mean() >= goal - 1e-12:
        return float(values.max() + 1.0)  # the findings alone reach the goal: the score never fires
    needed = math.ceil((goal - 1e-12) * target.sum()) - int((found & target).sum())
    candidates = np.sort(values[missed])[::-1]
    return float(candidates[min(needed, len(candidates)) - 1])


def priority_scores(
    labels: np.ndarray,
    probabilities: np.ndarray,
    *,
    sensitivity: dict[str, float] | None = None,
    rate: float = ROUTINE_FALSE_POSITIVE_RATE,
    strength: float = SCORE_STRENGTH,
    folds: int = SCORE_FOLDS,
    seed: int = 0,
) -> tuple[list[ThresholdChoice], list[PriorityScore], list[PriorityPoint]]:
    """Per-finding thresholds and study-level scores for the priority (``service.priority``).

    Every finding is read at a false-positive rate ``rate`` on its validation negatives (a short
    list of positives). For critical, then urgent-or-critical, an L2 logistic regression on the
    75 logits is fitted to tell the level's studies from the rest; its threshold is the highest
    at which the level's studies are called (score or a positive finding of the level) with the
    target sensitivity, read on out-of-fold scores so that the threshold is not tuned on scores
    the model fitted. The operating points are measured out of fold too.

    With fewer than MIN_SCORE_STUDIES studies on a side of a level, no score is fitted: the
    thresholds and points of ``priority_operating_points`` (the findings rule) are returned."""
    from service.priority import finding_logits

    labels, probabilities = _checked(labels, probabilities)
    truth = true_levels(labels)
    if (
        min(min(int((truth >= floor).sum()), int((truth < floor).sum())) for floor in (1, 2))
        < MIN_SCORE_STUDIES
    ):
        # Too few studies on one side of a level to fit a score: the findings rule alone.
        choices, points = priority_operating_points(labels, probabilities, sensitivity=sensitivity)
        return choices, [], points
    targets = PRIORITY_SENSITIVITY | (sensitivity or {})
    thresholds = np.ones(len(FINDINGS))
    for j, t in _thresholds_at(labels, probabilities, list(range(len(FINDINGS))), rate).items():
        thresholds[j] = t
    center = finding_logits(probabilities).mean(axis=0)
    features = finding_logits(probabilities) - center  # the scores read logits from here
    positive = probabilities >= thresholds[None, :]
    scores: list[PriorityScore] = []
    called = np.zeros(len(labels), dtype=np.int64)  # out of fold
    for level, kind, floor in (
        ("critical", TriageClass.CRITICAL, 2),
        ("urgent", TriageClass.URGENT, 1),
    ):
        members = np.array([f.triage is kind for f in FINDINGS])
        target = truth >= floor
        found = (called >= floor) | positive[:, members].any(axis=1)
        values, fitted = _out_of_fold(features, target, strength, folds, seed)
        if fitted is not None:
            threshold = _score_threshold(values, found, target, targets[level])
            scores.append(
                PriorityScore(level, fitted.weights, center.tolist(), fitted.bias, threshold)
            )
            found = found | (values >= threshold)
        called = np.where((called == 0) & found, floor, called)
    choices = _choices(labels, probabilities, thresholds, ["false_positive_rate"] * len(FINDINGS))
    return choices, scores, level_points(truth, called, {"critical": rate, "urgent": rate})
