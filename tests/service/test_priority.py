"""The study's priority: the findings rule, and the card's study-level scores beside it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from pydantic import ValidationError

from service.findings import FINDING_CODES, FINDINGS, TriageClass, triage_drivers, triage_priority
from service.model_card import CardPriorityScore
from service.priority import contributions, decide, finding_logits, score_values, study_levels

N = len(FINDINGS)
THRESHOLDS = np.full(N, 0.5)
CRITICAL = [f.code for f in FINDINGS if f.triage is TriageClass.CRITICAL]
URGENT = [f.code for f in FINDINGS if f.triage is TriageClass.URGENT]


@dataclass(frozen=True)
class Score:
    level: str
    weights: list[float]
    bias: float
    threshold: float
    center: tuple[float, ...] = (0.0,) * N


def _probabilities(**values: float) -> np.ndarray:
    p = np.full(N, 0.1)
    for code, value in values.items():
        p[FINDING_CODES.index(code)] = value
    return p


CENTER = -2.2  # about the logit of 0.1, what _probabilities gives every finding not named


def _summing(level: str, codes: list[str], threshold: float) -> Score:
    """A score that adds the logits of ``codes``, each from CENTER."""
    weights = [1.0 if c in codes else 0.0 for c in FINDING_CODES]
    return Score(level, weights, 0.0, threshold, (CENTER,) * N)


def test_without_scores_the_rule_is_the_findings_rule() -> None:
    rng = np.random.default_rng(3)
    probabilities = rng.uniform(0, 0.49, (200, N))
    probabilities[rng.random((200, N)) < 0.01] = 0.7  # about one positive finding per study
    levels, from_score = study_levels(probabilities, THRESHOLDS)
    assert not from_score.any()
    for p, level in zip(probabilities, levels, strict=True):
        positives = [c for c, v in zip(FINDING_CODES, p, strict=True) if v >= 0.5]
        priority = triage_priority(positives)
        assert level == {"critical": 2, "urgent": 1, "routine": 0}[priority.value]
        decision = decide(p, THRESHOLDS)
        assert decision.priority is priority
        assert decision.drivers == triage_drivers(positives)
        assert decision.basis == (None if priority.value == "routine" else "findings")
    assert set(levels.tolist()) == {0, 1, 2}  # the sample reaches every level


def test_a_score_sets_the_priority_when_no_finding_of_the_level_is_positive() -> None:
    # Two critical findings, each below its threshold: their summed logits pass the score's.
    first, second = CRITICAL[0], CRITICAL[1]
    p = _probabilities(**{first: 0.4, second: 0.45})
    score = _summing("critical", [first, second], threshold=3.0)
    expected = np.log(0.4 / 0.6) + np.log(0.45 / 0.55) - 2 * CENTER
    assert score_values(score, p) == pytest.approx(expected)
    decision = decide(p, THRESHOLDS, [score])
    assert decision.priority.value == "critical"
    assert decision.basis == "study_score"
    assert decision.drivers == [second]  # the critical finding that adds the most to the score
    # A stricter score leaves the study routine; nothing is positive.
    strict = decide(p, THRESHOLDS, [_summing("critical", [first, second], threshold=4.0)])
    assert (strict.priority.value, strict.drivers, strict.basis) == ("routine", [], None)


def test_the_driver_is_the_largest_share_of_the_score_from_its_center() -> None:
    # The first finding is more probable, but usually is (its center is high): the second,
    # further above its usual logit and weighted more, adds the most.
    first, second = CRITICAL[0], CRITICAL[1]
    p = _probabilities(**{first: 0.45, second: 0.3})
    weights = [{first: 1.0, second: 2.0}.get(c, 0.0) for c in FINDING_CODES]
    center = [{first: 0.0, second: -3.0}.get(c, -2.0) for c in FINDING_CODES]
    score = Score("critical", weights, 0.0, 1.0, tuple(center))
    shares = contributions(score, p)
    assert shares[FINDING_CODES.index(second)] == pytest.approx(2 * (np.log(0.3 / 0.7) + 3))
    assert score_values(score, p) == pytest.approx(shares.sum())
    decision = decide(p, THRESHOLDS, [score])
    assert (decision.priority.value, decision.drivers) == ("critical", [second])


def test_a_positive_finding_sets_its_level_whatever_the_score() -> None:
    p = _probabilities(**{CRITICAL[2]: 0.7})
    never = Score("critical", [0.0] * N, -100.0, 0.0)
    decision = decide(p, THRESHOLDS, [never])
    assert (decision.priority.value, decision.drivers, decision.basis) == (
        "critical",
        [CRITICAL[2]],
        "findings",
    )


def test_an_urgent_score_never_lowers_or_overrides_critical() -> None:
    always_urgent = Score("urgent", [0.0] * N, 5.0, 0.0)
    critical = decide(_probabilities(**{CRITICAL[0]: 0.9}), THRESHOLDS, [always_urgent])
    assert critical.priority.value == "critical" and critical.basis == "findings"
    urgent = decide(_probabilities(**{URGENT[0]: 0.3}), THRESHOLDS, [always_urgent])
    assert (urgent.priority.value, urgent.drivers, urgent.basis) == (
        "urgent",
        [URGENT[0]],
        "study_score",
    )


def test_the_logits_are_clipped_so_certain_probabilities_stay_finite() -> None:
    logits = finding_logits(np.array([0.0, 1.0, 0.5]))
    assert np.isfinite(logits).all() and logits[2] == 0.0
    assert logits[1] == pytest.approx(-logits[0]) and logits[1] > 13


def test_the_card_checks_its_scores() -> None:
    good = {"level": "critical", "weights": [0.0] * N, "center": [0.0] * N, "bias": 0.0}
    CardPriorityScore(**good, threshold=1.0, fitted_on="a validation set")
    with pytest.raises(ValidationError, match="75 weights"):
        CardPriorityScore(**(good | {"weights": [0.0] * 74}), threshold=1.0, fitted_on="x")
    with pytest.raises(ValidationError, match="75 center"):
        CardPriorityScore(**(good | {"center": [0.0] * 76}), threshold=1.0, fitted_on="x")
    with pytest.raises(ValidationError, match="level"):
        CardPriorityScore(**(good | {"level": "routine"}), threshold=1.0, fitted_on="x")
