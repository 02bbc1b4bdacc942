"""Evaluation metrics for one run on one evaluation set: the engine behind ``headct evaluate``.

A run's output is a ``Predictions``: per-study labels (1, 0 or NaN for unknown), probabilities
for the 75 findings in ``service.findings`` order, and, for MoLRE, the study-mean router weights.
Every metric here is a plain function of it so that the report, the tests and notebooks agree.
Discrimination is measured per finding by ROC AUC, the figure of merit of the MoLRE paper; a
finding whose known labels hold only one class has no AUC and is left out of every mean.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from service.evaluation import resampled_auc
from service.findings import FINDING_CODES, FINDINGS, NUM_FINDINGS, Category

# The paper's Figure 2 strata: excellent, good, and below 0.80.
STRATUM_HIGH = 0.90
STRATUM_MID = 0.80
STRATA_KEYS = ("auc_ge_0.90", "auc_0.80_to_0.90", "auc_lt_0.80", "undefined")


@dataclass
class Predictions:
    """What one run produced on one evaluation set, row ``i`` being study ``study_uids[i]``."""

    run_name: str
    study_uids: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    router_weights: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.study_uids = [str(uid) for uid in self.study_uids]
        self.labels = np.asarray(self.labels, dtype=np.float64)
        self.probabilities = np.asarray(self.probabilities, dtype=np.float64)
        n = len(self.study_uids)
        if not self.run_name:
            raise ValueError("run_name is empty; give the run a name such as 'molre' or 'probe'")
        for field, array in (("labels", self.labels), ("probabilities", self.probabilities)):
            if array.shape != (n, NUM_FINDINGS):
                raise ValueError(
                    f"{field} has shape {array.shape}; expected ({n}, {NUM_FINDINGS}): one row "
                    f"per study uid, one column per finding in service.findings order"
                )
        known = self.labels[~np.isnan(self.labels)]
        if not np.isin(known, (0.0, 1.0)).all():
            raise ValueError("labels must be 1, 0 or NaN (unknown); found other values")
        if not np.isfinite(self.probabilities).all():
            raise ValueError("probabilities contain NaN or infinite values")
        if self.router_weights is not None:
            weights = np.asarray(self.router_weights, dtype=np.float64)
            if weights.ndim != 2 or weights.shape[0] != n or weights.shape[1] < 1:
                raise ValueError(
                    f"router_weights has shape {weights.shape}; expected ({n}, K): one row of "
                    f"study-mean expert weights per study"
                )
            # Softmax outputs averaged over slices still sum to one; anything else is most
            # likely router logits or per-slice weights passed by mistake.
            if (weights < 0).any() or not np.allclose(weights.sum(axis=1), 1.0, atol=1e-3):
                raise ValueError("router_weights rows must be non-negative and sum to 1")
            self.router_weights = weights

    @property
    def num_studies(self) -> int:
        return len(self.study_uids)

    def save(self, path: Path) -> None:
        """Write an ``.npz`` (no pickles) that ``load`` reads back, finding order included."""
        arrays: dict[str, np.ndarray] = {
            "run_name": np.array(self.run_name),
            "study_uids": np.array(self.study_uids, dtype=str),
            "finding_codes": np.array(FINDING_CODES),
            "labels": self.labels,
            "probabilities": self.probabilities,
        }
        if self.router_weights is not None:
            arrays["router_weights"] = self.router_weights
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:  # a handle, so numpy does not append ".npz"
            np.savez_compressed(handle, **arrays)

    @classmethod
    def load(cls, path: Path) -> Predictions:
        with np.load(path, allow_pickle=False) as data:
            codes = tuple(str(code) for code in data["finding_codes"])
            if codes != FINDING_CODES:
                raise ValueError(
                    f"{path}: its findings are not those of service.findings in that order; "
                    f"re-run inference with this version of the finding list"
                )
            return cls(
                run_name=str(data["run_name"]),
                study_uids=[str(uid) for uid in data["study_uids"]],
                labels=data["labels"],
                probabilities=data["probabilities"],
                router_weights=data.get("router_weights"),
            )


def per_finding_auc(p: Predictions) -> dict[str, float | None]:
    """ROC AUC per finding over the studies whose label is known; None with only one class."""
    aucs: dict[str, float | None] = {}
    for j, code in enumerate(FINDING_CODES):
        known = ~np.isnan(p.labels[:, j])
        y = p.labels[known, j]
        if np.unique(y).size < 2:
            aucs[code] = None
        else:
            aucs[code] = float(roc_auc_score(y, p.probabilities[known, j]))
    return aucs


def _mean_defined(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def macro_auc(p: Predictions, findings: Sequence[str] | None = None) -> float:
    """Mean AUC over the findings (default all) that have one; NaN when none has."""
    aucs = per_finding_auc(p)
    mean = _mean_defined(
        [aucs[code] for code in findings] if findings is not None else list(aucs.values())
    )
    return float("nan") if mean is None else mean


def bootstrap_macro_auc(p: Predictions, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the macro AUC, resampling studies with replacement.

    The macro of each resample averages the findings that have an AUC on the full set; a finding
    that loses all its positives (or negatives) in a resample is left out of that resample only.
    """
    if n < 1:
        raise ValueError(f"n={n}: the bootstrap needs at least one resample")
    aucs = per_finding_auc(p)
    defined = [j for j, code in enumerate(FINDING_CODES) if aucs[code] is not None]
    if not defined:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(p.num_studies, np.full(p.num_studies, 1.0 / p.num_studies), size=n)
    replicate_aucs = np.empty((n, len(defined)))
    for column, j in enumerate(defined):
        known = ~np.isnan(p.labels[:, j])
        replicate_aucs[:, column] = resampled_auc(
            p.probabilities[known, j], p.labels[known, j], counts[:, known]
        )
    with np.errstate(invalid="ignore"):
        macros = np.nanmean(replicate_aucs, axis=1)
    macros = macros[~np.isnan(macros)]
    if macros.size == 0:
        return float("nan"), float("nan")
    low, high = np.percentile(macros, [2.5, 97.5])
    return float(low), float(high)


def stratified_counts(aucs: Mapping[str, float | None]) -> dict[str, int]:
    """How many findings reach AUC >= 0.90, 0.80 to 0.90, below 0.80, or have none (Figure 2)."""
    counts = dict.fromkeys(STRATA_KEYS, 0)
    for auc in aucs.values():
        if auc is None or np.isnan(auc):
            counts["undefined"] += 1
        elif auc >= STRATUM_HIGH:
            counts["auc_ge_0.90"] += 1
        elif auc >= STRATUM_MID:
            counts["auc_0.80_to_0.90"] += 1
        else:
            counts["auc_lt_0.80"] += 1
    return counts


def _entropy(weights: np.ndarray) -> np.ndarray:
    """Shannon entropy (nats) along the last axis, 0 log 0 taken as 0."""
    safe = np.where(weights > 0, weights, 1.0)
    return -(weights * np.log(safe)).sum(axis=-1)


def category_positive(labels: np.ndarray) -> np.ndarray:
    """[N, categories] in ``Category`` order: whether each study is positive for at least one
    finding of each category (an unknown label is not positive)."""
    positive = labels == 1.0  # NaN compares False
    return np.stack(
        [
            positive[:, [j for j, f in enumerate(FINDINGS) if f.category is category]].any(axis=1)
            for category in Category
        ],
        axis=1,
    )


def router_analysis(p: Predictions) -> dict:
    """Which experts each kind of pathology uses, and how spread the routing is.

    ``by_category`` averages the router weights over the studies positive for at least one
    finding of that category (a study with findings in two categories counts in both);
    ``no_finding`` over the studies with no positive label. Entropies are in nats, at most
    ``log K``: a low ``mean_study_entropy`` means each study leans on few experts, a high
    ``usage_entropy`` that the experts share the load across studies (no collapse).
    """
    if p.router_weights is None:
        raise ValueError(f"run {p.run_name!r} has no router weights (a baseline without a router)")
    weights = p.router_weights
    k = weights.shape[1]

    def summary(mask: np.ndarray) -> dict:
        studies = int(mask.sum())
        mean = weights[mask].mean(axis=0).tolist() if studies else None
        return {"studies": studies, "mean_weights": mean}

    in_category = category_positive(p.labels)
    by_category = {
        category.value: summary(in_category[:, c]) for c, category in enumerate(Category)
    }
    usage = weights.mean(axis=0) if p.num_studies else None
    return {
        "K": k,
        "expert_usage": None if usage is None else usage.tolist(),
        "mean_study_entropy": float(_entropy(weights).mean()) if usage is not None else None,
        "usage_entropy": float(_entropy(usage)) if usage is not None else None,
        "max_entropy": float(np.log(k)),
        "by_category": by_category,
        "no_finding": summary(~in_category.any(axis=1)),
    }


def evaluate(p: Predictions) -> dict:
    """Every metric of one run: AUCs per finding, category and overall, strata, label counts."""
    aucs = per_finding_auc(p)
    known = ~np.isnan(p.labels)
    positives = (p.labels == 1.0).sum(axis=0)
    negatives = (p.labels == 0.0).sum(axis=0)
    per_category = {
        category.value: _mean_defined([aucs[f.code] for f in FINDINGS if f.category is category])
        for category in Category
    }
    return {
        "run_name": p.run_name,
        "n_studies": p.num_studies,
        "n_findings": NUM_FINDINGS,
        "n_findings_with_auc": sum(auc is not None for auc in aucs.values()),
        "macro_auc": _mean_defined(list(aucs.values())),
        "critical_macro_auc": _mean_defined([aucs[f.code] for f in FINDINGS if f.critical]),
        "per_category_macro_auc": per_category,
        "strata": stratified_counts(aucs),
        "per_finding_auc": aucs,
        "positives": dict(zip(FINDING_CODES, positives.tolist(), strict=True)),
        "negatives": dict(zip(FINDING_CODES, negatives.tolist(), strict=True)),
        "unknown": dict(zip(FINDING_CODES, (~known).sum(axis=0).tolist(), strict=True)),
        "router": router_analysis(p) if p.router_weights is not None else None,
    }
