"""Evaluation metrics, bootstrap, router analysis and the written report (no torch)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from service.findings import FINDING_CODES, FINDING_INDEX, FINDINGS, NUM_FINDINGS, Category
from training.evaluate import (
    Predictions,
    bootstrap_macro_auc,
    evaluate,
    macro_auc,
    per_finding_auc,
    resampled_auc,
    router_analysis,
    stratified_counts,
)

HEMORRHAGE = [j for j, f in enumerate(FINDINGS) if f.category is Category.HEMORRHAGE]
TRAUMA = [j for j, f in enumerate(FINDINGS) if f.category is Category.TRAUMA]


def synthetic_run(
    name: str, n: int, *, separation: float = 1.5, seed: int = 0, router_k: int | None = None
) -> Predictions:
    """Labels with 5 to 30% prevalence, a few unknown, and probabilities that separate them."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, NUM_FINDINGS)) < rng.uniform(0.05, 0.3, NUM_FINDINGS)).astype(float)
    labels[rng.random(labels.shape) < 0.05] = np.nan
    signal = np.where(labels == 1.0, separation, 0.0)
    probabilities = 1.0 / (1.0 + np.exp(-(signal + rng.normal(0.0, 1.0, labels.shape))))
    router = None
    if router_k is not None:
        logits = rng.normal(0.0, 1.0, (n, router_k))
        router = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    uids = [f"1.2.826.0.1.{seed}.{i}" for i in range(n)]
    return Predictions(name, uids, labels, probabilities, router)


def test_per_finding_auc_matches_sklearn_and_masks_unknown_labels() -> None:
    p = synthetic_run("run", 120, seed=1)
    j = FINDING_INDEX["subarachnoid_hemorrhage"]
    p.labels[:10, j] = np.nan
    p.probabilities[:10, j] = 1.0  # would change the AUC if unknown labels were counted
    known = ~np.isnan(p.labels[:, j])
    expected = roc_auc_score(p.labels[known, j], p.probabilities[known, j])
    assert per_finding_auc(p)["subarachnoid_hemorrhage"] == pytest.approx(expected)


def test_perfect_predictions_give_one_and_random_about_half() -> None:
    p = synthetic_run("run", 300, seed=2)
    perfect = Predictions("perfect", p.study_uids, p.labels, np.nan_to_num(p.labels) * 0.9 + 0.05)
    assert macro_auc(perfect) == pytest.approx(1.0)
    rng = np.random.default_rng(3)
    chance = Predictions("chance", p.study_uids, p.labels, rng.random(p.labels.shape))
    assert macro_auc(chance) == pytest.approx(0.5, abs=0.03)


def test_finding_with_one_class_has_no_auc_and_leaves_the_macro() -> None:
    p = synthetic_run("run", 100, seed=4)
    j = FINDING_INDEX["epidural_hematoma"]
    p.labels[:, j] = 0.0
    p.labels[:5, j] = np.nan
    p.probabilities[:, j] = np.random.default_rng(0).random(100)  # chance, would pull it down
    aucs = per_finding_auc(p)
    assert aucs["epidural_hematoma"] is None
    defined = [a for a in aucs.values() if a is not None]
    assert len(defined) == NUM_FINDINGS - 1
    assert macro_auc(p) == pytest.approx(np.mean(defined))
    assert evaluate(p)["n_findings_with_auc"] == NUM_FINDINGS - 1


def testresampled_auc_equals_sklearn_on_the_repeated_studies() -> None:
    rng = np.random.default_rng(5)
    scores = np.round(rng.random(40), 1)  # ties, which count one half
    labels = (rng.random(40) < 0.3).astype(float)
    counts = rng.multinomial(40, np.full(40, 1 / 40), size=6)
    resampled = resampled_auc(scores, labels, counts)
    for b, row in enumerate(counts):
        drawn = np.repeat(np.arange(40), row)
        expected = roc_auc_score(labels[drawn], scores[drawn])
        assert resampled[b] == pytest.approx(expected)


def test_bootstrap_interval_contains_estimate_and_narrows_with_more_studies() -> None:
    small = synthetic_run("small", 60, seed=6)
    large = synthetic_run("large", 600, seed=6)
    low_s, high_s = bootstrap_macro_auc(small, n=200)
    low_l, high_l = bootstrap_macro_auc(large, n=200)
    assert low_s < macro_auc(small) < high_s
    assert low_l < macro_auc(large) < high_l
    assert high_l - low_l < 0.6 * (high_s - low_s)
    assert bootstrap_macro_auc(small, n=200, seed=1) == bootstrap_macro_auc(small, n=200, seed=1)


def test_stratified_counts_add_up_to_all_findings() -> None:
    counts = stratified_counts(per_finding_auc(synthetic_run("run", 150, seed=7)))
    assert sum(counts.values()) == NUM_FINDINGS
    aucs = dict.fromkeys(FINDING_CODES, None) | {
        "ich_any": 0.95,
        "midline_shift": 0.9,
        "mass_effect": 0.85,
        "colloid_cyst": 0.6,
    }
    assert stratified_counts(aucs) == {
        "auc_ge_0.90": 2,
        "auc_0.80_to_0.90": 1,
        "auc_lt_0.80": 1,
        "undefined": NUM_FINDINGS - 4,
    }


def test_router_analysis_recovers_category_routing_and_entropy() -> None:
    n, k = 60, 4
    labels = np.zeros((n, NUM_FINDINGS))
    weights = np.full((n, k), 0.1)
    labels[:20, HEMORRHAGE[1]] = 1.0  # hemorrhage studies routed to expert 0
    weights[:20, 0] = 0.7
    labels[20:40, TRAUMA[0]] = 1.0  # trauma studies to expert 2
    weights[20:40, 2] = 0.7
    weights[40:] = 0.25  # normal studies spread evenly
    p = Predictions(
        "molre",
        [str(i) for i in range(n)],
        labels,
        np.random.default_rng(0).random((n, NUM_FINDINGS)),
        weights,
    )
    router = router_analysis(p)
    assert router["K"] == k
    assert router["by_category"]["hemorrhage"]["studies"] == 20
    np.testing.assert_allclose(
        router["by_category"]["hemorrhage"]["mean_weights"], [0.7, 0.1, 0.1, 0.1]
    )
    assert np.argmax(router["by_category"]["trauma"]["mean_weights"]) == 2
    assert router["by_category"]["mass_lesions"] == {"studies": 0, "mean_weights": None}
    assert router["no_finding"]["studies"] == 20
    assert router["max_entropy"] == pytest.approx(math.log(k))

    uniform = Predictions("u", p.study_uids, labels, p.probabilities, np.full((n, k), 1 / k))
    assert router_analysis(uniform)["mean_study_entropy"] == pytest.approx(math.log(k))
    assert router_analysis(uniform)["usage_entropy"] == pytest.approx(math.log(k))
    one_hot = Predictions("h", p.study_uids, labels, p.probabilities, np.eye(k)[np.arange(n) % k])
    assert router_analysis(one_hot)["mean_study_entropy"] == pytest.approx(0.0)
    assert router_analysis(one_hot)["usage_entropy"] == pytest.approx(math.log(k))


def test_predictions_reject_bad_shapes_and_values() -> None:
    p = synthetic_run("run", 10)
    with pytest.raises(ValueError, match="probabilities has shape"):
        Predictions("x", p.study_uids, p.labels, p.probabilities[:, :74])
    with pytest.raises(ValueError, match="1, 0 or NaN"):
        Predictions("x", p.study_uids, np.full(p.labels.shape, 2.0), p.probabilities)
    with pytest.raises(ValueError, match="sum to 1"):
        Predictions("x", p.study_uids, p.labels, p.probabilities, np.ones((10, 4)))


def test_predictions_round_trip(tmp_path: Path) -> None:
    for p in (synthetic_run("molre", 12, router_k=3), synthetic_run("probe", 12)):
        p.save(tmp_path / f"{p.run_name}.npz")
        back = Predictions.load(tmp_path / f"{p.run_name}.npz")
        assert back.run_name == p.run_name
        assert back.study_uids == p.study_uids
        np.testing.assert_array_equal(back.labels, p.labels)  # NaN where NaN
        np.testing.assert_array_equal(back.probabilities, p.probabilities)
        if p.router_weights is None:
            assert back.router_weights is None
        else:
            np.testing.assert_array_equal(back.router_weights, p.router_weights)


def assert_real_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    image = imread(path)
    assert image.shape[0] >= 400 and image.shape[1] >= 400, (path, image.shape)
    assert image[..., :3].std() > 0.01, f"{path} is blank"


def test_write_report_writes_metrics_markdown_and_figures(tmp_path: Path) -> None:
    from training.report import write_report

    runs = [
        synthetic_run("molre", 80, seed=8, router_k=4),
        synthetic_run("lora", 80, seed=8, separation=1.0),
    ]
    metrics = write_report(
        runs, tmp_path, bootstrap=50, notes="Synthetic phantoms, not for clinical use"
    )

    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["runs"].keys() == {"molre", "lora"} == metrics["runs"].keys()
    for result in on_disk["runs"].values():
        assert {
            "macro_auc",
            "macro_auc_ci95",
            "per_finding_auc",
            "strata",
            "positives",
            "per_category_macro_auc",
            "router",
        } <= result.keys()
        low, high = result["macro_auc_ci95"]
        assert low <= result["macro_auc"] <= high
    assert on_disk["runs"]["lora"]["router"] is None

    report = (tmp_path / "report.md").read_text()
    assert report.splitlines()[2] == "> **Synthetic phantoms, not for clinical use**"
    assert "| `molre` |" in report and "Intracranial hemorrhage (any)" in report
    names = [
        "radar_molre_vs_lora.png",
        "roc_critical_molre.png",
        "roc_critical_lora.png",
        "router_molre.png",
        "auc_strata.png",
    ]
    for name in names:
        assert f"]({name})" in report
        assert_real_png(tmp_path / name)
    assert not (tmp_path / "router_lora.png").exists()
