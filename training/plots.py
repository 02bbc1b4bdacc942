"""Evaluation figures: per-finding AUC radar, critical-finding ROC curves, router use, AUC strata.

Figures are drawn on ``matplotlib.figure.Figure`` objects (the Agg canvas, no pyplot and no
global backend state), and matplotlib is imported inside each function so that importing
``training`` stays light. Each function writes one PNG and returns its path.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.findings import FINDINGS, Category

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from training.evaluate import Predictions

DPI = 120
CATEGORY_LABELS = {
    Category.HEMORRHAGE: "Hemorrhage",
    Category.INFARCTION: "Infarction / ischemia",
    Category.TRAUMA: "Trauma",
    Category.MASS: "Mass lesions",
    Category.STRUCTURAL: "Structural",
    Category.CHRONIC: "Chronic changes",
    Category.OTHER: "Other",
}
STRATA_LABELS = ("AUC ≥ 0.90", "0.80 to 0.90", "AUC < 0.80", "undefined")


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def _category_colors() -> dict[Category, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {category: cmap(i) for i, category in enumerate(Category)}


def plot_auc_radar(
    runs: Mapping[str, Mapping[str, float | None]], path: Path, *, title: str
) -> Path:
    """Per-finding AUC of each run on 75 spokes grouped by category (the paper's Figure 3).

    Findings without an AUC leave a gap in the run's line; the coloured ring names the category.
    """
    angles = np.linspace(0.0, 2.0 * np.pi, len(FINDINGS), endpoint=False)
    defined = [a for aucs in runs.values() for a in aucs.values() if a is not None]
    r_min = min(0.5, math.floor(min(defined, default=0.5) * 10) / 10)
    ring = 1.0 + 0.025 * (1.0 - r_min) / 0.5
    colors = _category_colors()

    fig = _figure(13, 13)
    ax = fig.add_subplot(projection="polar")
    ax.set_theta_zero_location("N")
    ax.set_theta_direction(-1)
    step = angles[1] - angles[0]
    for category in Category:
        idx = [j for j, f in enumerate(FINDINGS) if f.category is category]
        ax.bar(
            angles[idx],
            ring - 1.0,
            width=step,
            bottom=1.0,
            color=colors[category],
            edgecolor="none",
            label=CATEGORY_LABELS[category],
        )
    line_colors = ("#1f3b73", "#d1495b", "#2a9d8f", "#6c757d")
    for i, (name, aucs) in enumerate(runs.items()):
        values = np.array([np.nan if aucs[f.code] is None else aucs[f.code] for f in FINDINGS])
        closed_angles, closed = np.r_[angles, angles[0]], np.r_[values, values[0]]
        color = line_colors[i % len(line_colors)]
        ax.plot(closed_angles, closed, color=color, linewidth=1.6, label=name)
        ax.scatter(angles, values, color=color, s=9, zorder=3)
    ax.set_ylim(r_min, ring)
    # The 1.0 circle is the inner edge of the category ring, so its label would sit under it.
    ticks = np.arange(r_min + 0.1, 1.0001, 0.1)
    ax.set_yticks(
        ticks, [f"{t:.1f}" if t < 0.999 else "" for t in ticks], fontsize=8, color="#555555"
    )
    ax.set_rlabel_position(2)
    ax.set_xticks(angles, [""] * len(angles))
    ax.grid(linewidth=0.4, alpha=0.6)
    for angle, finding in zip(angles, FINDINGS, strict=True):
        # Labels run outward along their spoke and read left to right on both halves.
        right_half = np.sin(angle) >= 0
        rotation = 90.0 - np.degrees(angle) + (0.0 if right_half else 180.0)
        ax.text(
            angle,
            ring + 0.012,
            finding.name,
            rotation=rotation,
            rotation_mode="anchor",
            ha="left" if right_half else "right",
            va="center",
            fontsize=6.5,
            color=colors[finding.category],
            clip_on=False,
        )
    handles = dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    labels = [*runs, *(CATEGORY_LABELS[c] for c in Category)]
    fig.legend(
        [handles[label] for label in labels],
        labels,
        loc="outside lower center",
        ncols=len(labels),
        fontsize=10,
        frameon=False,
        columnspacing=1.2,
    )
    fig.suptitle(
        f"{title}\nradius: ROC AUC from {r_min:.1f} (centre) to 1.0 (category ring); "
        "gaps: no AUC (one class)",
        fontsize=13,
    )
    return _save(fig, path)


def plot_roc_critical(p: Predictions, path: Path, *, title: str) -> Path:
    """ROC curve of every critical finding with both classes among its known labels, one panel
    each, AUC in the corner: how the run would trade sensitivity for false alarms at triage."""
    from sklearn.metrics import roc_auc_score, roc_curve

    panels = []
    for j, finding in enumerate(FINDINGS):
        known = ~np.isnan(p.labels[:, j])
        y = p.labels[known, j]
        if finding.critical and np.unique(y).size == 2:
            panels.append((finding, y, p.probabilities[known, j]))
    columns = 6
    rows = max(1, math.ceil(len(panels) / columns))
    fig = _figure(2.3 * columns, 2.3 * rows + 0.6)
    fig.suptitle(title, fontsize=13)
    if not panels:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(
            0.5,
            0.5,
            "No critical finding has both positive and negative studies.",
            ha="center",
            va="center",
            fontsize=11,
        )
        return _save(fig, path)
    axes = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False)
    for ax, (finding, y, scores) in zip(axes.flat, panels, strict=False):
        fpr, tpr, _ = roc_curve(y, scores)
        ax.plot([0, 1], [0, 1], color="#bbbbbb", linewidth=0.8, linestyle="--")
        ax.plot(fpr, tpr, color="#1f3b73", linewidth=1.4)
        ax.set_title(textwrap.fill(finding.name, 30), fontsize=8)
        ax.text(
            0.97,
            0.04,
            f"AUC {roc_auc_score(y, scores):.3f}\n{int(y.sum())} pos",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7.5,
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("1 - specificity", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("sensitivity", fontsize=8)
    return _save(fig, path)


def plot_router(router: Mapping[str, Any], path: Path, *, title: str) -> Path:
    """Heatmap of the mean expert weight per finding category (rows) and expert (columns)."""
    k = router["K"]
    row_labels, rows = [], []
    for category in Category:
        entry = router["by_category"][category.value]
        row_labels.append(f"{CATEGORY_LABELS[category]} (n={entry['studies']})")
        rows.append(entry["mean_weights"] or [np.nan] * k)
    row_labels.append(f"No positive finding (n={router['no_finding']['studies']})")
    rows.append(router["no_finding"]["mean_weights"] or [np.nan] * k)
    row_labels.append("All studies")
    rows.append(router["expert_usage"] or [np.nan] * k)
    matrix = np.array(rows, dtype=np.float64)

    fig = _figure(max(6.0, 1.6 + 0.75 * k), 5.2)
    ax = fig.add_subplot()
    image = ax.imshow(
        np.ma.masked_invalid(matrix),
        cmap="viridis",
        vmin=0.0,
        vmax=max(float(np.nanmax(matrix, initial=0.0)), 1e-6),
        aspect="auto",
    )
    ax.axhline(len(Category) - 0.5, color="white", linewidth=2)
    ax.set_xticks(range(k), [f"E{e}" for e in range(k)], fontsize=9)
    ax.set_yticks(range(len(row_labels)), row_labels, fontsize=9)
    ax.set_xlabel("expert")
    threshold = 0.6 * np.nanmax(matrix, initial=0.0)
    for r, row in enumerate(matrix):
        if np.isnan(row).all():
            ax.text(
                (k - 1) / 2, r, "no studies", ha="center", va="center", fontsize=8, color="#777777"
            )
        elif k <= 16:
            for c, value in enumerate(row):
                ax.text(
                    c,
                    r,
                    f"{value:.2f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if value > threshold else "white",
                )
    fig.colorbar(image, ax=ax, label="mean router weight", shrink=0.85)
    entropy = (
        f"per-study entropy {router['mean_study_entropy']:.3f}, usage entropy "
        f"{router['usage_entropy']:.3f} (max log K = {router['max_entropy']:.3f})"
        if router["mean_study_entropy"] is not None
        else "no studies"
    )
    ax.set_title(f"{title}\n{entropy}", fontsize=11)
    return _save(fig, path)


def plot_auc_strata(strata: Mapping[str, Mapping[str, int]], path: Path, *, title: str) -> Path:
    """Grouped bars: how many of the 75 findings each run puts in each AUC stratum (Figure 2)."""
    from training.evaluate import STRATA_KEYS

    names = list(strata)
    fig = _figure(max(7.0, 2.0 + 1.2 * len(names) * len(STRATA_KEYS) / 2), 4.8)
    ax = fig.add_subplot()
    x = np.arange(len(STRATA_KEYS))
    width = 0.8 / max(1, len(names))
    colors = ("#1f3b73", "#d1495b", "#2a9d8f", "#e9c46a", "#6c757d")
    for i, name in enumerate(names):
        counts = [strata[name][key] for key in STRATA_KEYS]
        bars = ax.bar(
            x + (i - (len(names) - 1) / 2) * width,
            counts,
            width,
            label=name,
            color=colors[i % len(colors)],
        )
        ax.bar_label(bars, fontsize=9, padding=2)
    ax.set_xticks(x, STRATA_LABELS, fontsize=10)
    ax.set_ylabel("number of findings")
    ax.set_ylim(0, max(max(s.values()) for s in strata.values()) * 1.15 + 1)
    ax.legend(frameon=False)
    ax.set_title(title, fontsize=12)
    ax.spines[["top", "right"]].set_visible(False)
    return _save(fig, path)
