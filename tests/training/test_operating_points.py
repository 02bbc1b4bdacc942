"""Study-level operating points: thresholds chosen for the triage priority, not per finding."""

from __future__ import annotations

import numpy as np
import pytest

from service.findings import FINDINGS, TriageClass
from service.priority import study_levels as rule_levels
from synth.cooccurrence import sample_labels
from training.operating_points import (
    _score_threshold,
    priority_operating_points,
    priority_scores,
    study_levels,
    true_levels,
    wilson_interval,
)
from training.thresholds import choose_thresholds


def _scores(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A model of uneven quality and calibration: per finding its own separation and offset,
    so a fixed probability means something different for every finding."""
    separation = rng.uniform(1.0, 4.0, labels.shape[1])
    offset = rng.uniform(-4.0, 1.0, labels.shape[1])
    logits = offset + separation * labels + rng.normal(size=labels.shape)
    return 1 / (1 + np.exp(-logits))


@pytest.fixture(scope="module")
def clinical() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    labels = np.stack([sample_labels(rng, 1.0) for _ in range(1500)]).astype(float)
    return labels, _scores(labels, rng)


def _specificity(labels: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray) -> float:
    truth = true_levels(labels) == 2
    called = study_levels(probabilities, thresholds) == 2
    return float((~called[~truth]).mean())


def test_priority_points_meet_the_sensitivity_and_beat_per_finding_thresholds(clinical) -> None:
    labels, probabilities = clinical
    choices, points = priority_operating_points(labels, probabilities)
    critical, urgent = points
    assert critical.level == "critical" and urgent.level == "urgent"
    assert critical.sensitivity >= 0.95 and urgent.sensitivity >= 0.90
    assert critical.positives + critical.negatives == len(labels)
    assert critical.sensitivity_ci95[0] <= critical.sensitivity <= critical.sensitivity_ci95[1]
    thresholds = np.array([c.threshold for c in choices])
    assert _specificity(labels, probabilities, thresholds) == pytest.approx(critical.specificity)
    # Each critical finding at 95% sensitivity: the study-level specificity collapses.
    per_finding = np.array([c.threshold for c in choose_thresholds(labels, probabilities)])
    assert _specificity(labels, probabilities, per_finding) < critical.specificity - 0.2


def test_the_chosen_point_is_the_most_specific_that_reaches_the_target(clinical) -> None:
    labels, probabilities = clinical
    choices, (critical, _) = priority_operating_points(labels, probabilities)
    # Asking for a little less sensitivity can only keep or raise the specificity.
    _, (relaxed, _) = priority_operating_points(
        labels, probabilities, sensitivity={"critical": critical.sensitivity - 0.05}
    )
    assert relaxed.specificity >= critical.specificity
    assert relaxed.false_positive_rate <= critical.false_positive_rate
    # Raising every critical threshold a little loses the target (no slack was left).
    thresholds = np.array([c.threshold for c in choices])
    is_critical = np.array([f.triage is TriageClass.CRITICAL for f in FINDINGS])
    raised = np.where(is_critical, np.minimum(1.0, thresholds * 1.05 + 1e-3), thresholds)
    truth = true_levels(labels) == 2
    assert (study_levels(probabilities, raised)[truth] == 2).mean() < 0.95


def test_routine_findings_are_read_at_a_two_percent_false_positive_rate(clinical) -> None:
    labels, probabilities = clinical
    choices, _ = priority_operating_points(labels, probabilities)
    for j, finding in enumerate(FINDINGS):
        if finding.triage is TriageClass.NONE:
            negatives = probabilities[labels[:, j] == 0, j]
            assert choices[j].method == "false_positive_rate"
            assert (negatives >= choices[j].threshold).mean() <= 0.02 + 1e-9


def test_wilson_interval() -> None:
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    low, high = wilson_interval(95, 100)
    assert low < 0.95 < high and high - low < 0.12
    assert all(np.isnan(wilson_interval(0, 0)))


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match="studies"):
        priority_operating_points(np.zeros((3, 4)), np.zeros((3, 4)))


# --- Study-level priority scores ----------------------------------------------------------------


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    """Studies the scores never saw, scored by the same model as ``clinical``."""
    rng = np.random.default_rng(7)  # as ``clinical`` draws it: the same model of each finding
    for _ in range(1500):
        sample_labels(rng, 1.0)
    separation, offset = rng.uniform(1.0, 4.0, len(FINDINGS)), rng.uniform(-4.0, 1.0, len(FINDINGS))
    fresh = np.random.default_rng(8)
    labels = np.stack([sample_labels(fresh, 1.0) for _ in range(1500)]).astype(float)
    logits = offset + separation * labels + fresh.normal(size=labels.shape)
    return labels, 1 / (1 + np.exp(-logits))


def _called(labels, probabilities, choices, scores) -> tuple[np.ndarray, np.ndarray]:
    thresholds = np.array([c.threshold for c in choices])
    return true_levels(labels), rule_levels(probabilities, thresholds, scores)[0]


def test_study_scores_reach_the_targets_out_of_fold_and_beat_the_findings_rule(
    clinical, held_out
) -> None:
    labels, probabilities = clinical
    choices, scores, (critical, urgent) = priority_scores(labels, probabilities)
    assert [s.level for s in scores] == ["critical", "urgent"]
    assert all(len(s.weights) == len(FINDINGS) for s in scores)
    # Measured out of fold on the set they were chosen on.
    assert critical.sensitivity >= 0.95 and urgent.sensitivity >= 0.90
    assert critical.positives + critical.negatives == len(labels)
    # On studies neither rule saw, at about the same sensitivity, the scores are more specific.
    truth, called = _called(*held_out, choices, scores)
    findings_choices, _ = priority_operating_points(labels, probabilities)
    thresholds = np.array([c.threshold for c in findings_choices])
    by_findings = study_levels(held_out[1], thresholds)
    critical_truth = truth == 2
    assert (called[critical_truth] == 2).mean() >= 0.93
    assert (by_findings[critical_truth] == 2).mean() >= 0.93
    score_specificity = (called[~critical_truth] != 2).mean()
    assert score_specificity > (by_findings[~critical_truth] != 2).mean() + 0.05


def test_every_finding_is_read_at_two_percent_beside_the_scores(clinical) -> None:
    labels, probabilities = clinical
    choices, _, _ = priority_scores(labels, probabilities)
    for j, choice in enumerate(choices):
        negatives = probabilities[labels[:, j] == 0, j]
        assert choice.method == "false_positive_rate"
        assert (negatives >= choice.threshold).mean() <= 0.02 + 1e-9


def test_the_score_threshold_is_the_most_specific_that_reaches_the_goal() -> None:
    values = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    target = np.array([True, False, True, True, False, True])
    found = np.array([False, False, False, False, False, True])
    # Three of four target studies: the last found, so two more by score, 5 and 3.
    assert _score_threshold(values, found, target, 0.75) == 3.0
    assert _score_threshold(values, found, target, 1.0) == 2.0
    # The findings alone reach the goal: the threshold lies above every score.
    assert _score_threshold(values, found, target, 0.25) > values.max()


def test_too_few_studies_fall_back_to_the_findings_rule(clinical) -> None:
    labels, probabilities = clinical[0][:40], clinical[1][:40]
    choices, scores, points = priority_scores(labels, probabilities)
    expected, expected_points = priority_operating_points(labels, probabilities)
    assert scores == []
    assert [c.threshold for c in choices] == [c.threshold for c in expected]
    assert points == expected_points


def test_a_higher_calibration_target_buys_test_sensitivity_with_specificity(
    clinical, held_out
) -> None:
    """The demo report's margin table: each target is met out of fold on calibration, and on
    studies the rule never saw a higher target calls at least as many critical studies and at
    most as many others."""
    from training.demo_eval import critical_margins
    from training.evaluate import Predictions

    def predictions(labels: np.ndarray, probabilities: np.ndarray) -> Predictions:
        uids = [f"s{i}" for i in range(len(labels))]
        return Predictions("sim", uids, labels, probabilities, None)

    rows = critical_margins(predictions(*clinical), predictions(*held_out), (0.95, 0.97, 0.99))
    assert [r["target"] for r in rows] == [0.95, 0.97, 0.99]
    for row in rows:
        assert row["calibration"]["sensitivity"] >= row["target"] - 1e-12
    sensitivity = [r["test"]["sensitivity"] for r in rows]
    specificity = [r["test"]["specificity"] for r in rows]
    assert sensitivity == sorted(sensitivity) and specificity == sorted(specificity, reverse=True)
    assert sensitivity[-1] > sensitivity[0] and specificity[-1] < specificity[0]
    normals = [r["normal_called_critical"] for r in rows]
    assert normals == sorted(normals) and 0 <= normals[0] <= 1


def test_separation_apart_from_the_threshold_reads_the_score_not_its_placement(
    clinical, held_out
) -> None:
    """The demo report's separation table: the rule's critical AUC on new studies, and the
    specificity its score would have at 0.95 sensitivity with the threshold placed on those same
    studies: at least that of the threshold chosen on calibration at an equal or higher test
    sensitivity, and lower for a model that separates less."""
    from training.demo_eval import critical_separation, fit_triage
    from training.evaluate import Predictions

    def predictions(labels: np.ndarray, probabilities: np.ndarray) -> Predictions:
        return Predictions("sim", [f"s{i}" for i in range(len(labels))], labels, probabilities)

    calibration, test = predictions(*clinical), predictions(*held_out)
    rule = fit_triage(calibration)
    row = critical_separation(test, rule)
    assert row is not None and 0.5 < row["score_auc"] <= 1 and 0.5 < row["auc"] <= 1
    assert row["sensitivity"] >= 0.95
    called, _ = rule_levels(test.probabilities, rule.thresholds, rule.scores)
    truth = true_levels(test.labels) == 2
    if (called[truth] == 2).mean() >= row["sensitivity"]:
        assert row["specificity"] >= (called[~truth] != 2).mean() - 1e-12
    normal = ~(test.labels == 1).any(axis=1)
    assert 0 <= row["normal_called_critical"] <= 1 and normal.any()

    # Blur the held-out scores toward noise: the separation falls.
    rng = np.random.default_rng(3)
    noisy = 1 / (
        1
        + np.exp(
            -(
                np.log(test.probabilities / (1 - test.probabilities)) * 0.3
                + rng.normal(0, 2.0, test.probabilities.shape)
            )
        )
    )
    worse = critical_separation(predictions(test.labels, noisy), rule)
    assert worse is not None and worse["auc"] < row["auc"] - 0.05
    assert worse["specificity"] < row["specificity"]
    # Without a critical score (the findings rule alone) there is nothing to read.
    from dataclasses import replace

    assert critical_separation(test, replace(rule, scores=[])) is None


def test_the_ceilings_triage_reads_the_highest_critical_finding_score() -> None:
    from service.findings import FINDING_CODES
    from training.ceiling import critical_separation as ceiling_separation

    rng = np.random.default_rng(0)
    labels = np.stack([sample_labels(rng, 4.0) for _ in range(400)]).astype(float)
    critical = np.array([f.triage is TriageClass.CRITICAL for f in FINDINGS])
    truth = labels[:, critical].max(axis=1) == 1
    scores = rng.uniform(0, 0.5, labels.shape) + 0.5 * labels  # a positive scores above 0.5
    row = ceiling_separation(scores, labels, tuple(FINDING_CODES))
    assert row is not None and row["auc"] == pytest.approx(1.0)
    assert row["specificity"] == 1.0 and row["normal_called_critical"] == 0.0
    assert row["critical_studies"] == truth.sum() and row["sensitivity"] >= 0.95
    flat = ceiling_separation(rng.uniform(0, 1, labels.shape), labels, tuple(FINDING_CODES))
    assert flat is not None and abs(flat["auc"] - 0.5) < 0.1 and flat["specificity"] < 0.3
    # The pretraining findings (a subset without every critical one): nothing to say.
    codes = tuple(FINDING_CODES[:10])
    assert ceiling_separation(scores[:, :10], labels, codes) is None
