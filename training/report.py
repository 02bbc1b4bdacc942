"""The evaluation report: metrics.json, report.md and its figures for one or more runs.

The first run is the one under study and the second its comparator (MoLRE against plain LoRA or
a probe, as in the paper); the radar and the per-finding differences are drawn between those two.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.findings import FINDINGS, Category
from training import plots
from training.evaluate import STRATA_KEYS, Predictions, bootstrap_macro_auc, evaluate

DEFAULT_TITLE = "headct-triage evaluation"


def write_report(
    runs: list[Predictions],
    out: Path,
    *,
    bootstrap: int = 1000,
    title: str = DEFAULT_TITLE,
    notes: str = "",
) -> dict:
    """Evaluate every run, write ``out/metrics.json``, ``out/report.md`` and the PNGs; return the
    metrics. ``notes`` (for instance that the data are synthetic) opens the report and the JSON.
    ``bootstrap=0`` skips the confidence intervals."""
    if not runs:
        raise ValueError("write_report needs at least one run")
    names = [p.run_name for p in runs]
    if len(set(names)) != len(names):
        raise ValueError(f"run names must be unique, got {names}; they name columns and files")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    results: dict[str, dict] = {}
    for p in runs:
        result = evaluate(p)
        ci = bootstrap_macro_auc(p, n=bootstrap) if bootstrap > 0 and p.num_studies else None
        result["macro_auc_ci95"] = None if ci is None or math.isnan(ci[0]) else list(ci)
        results[p.run_name] = result

    figures = _write_figures(runs, results, out, title)
    metrics = {
        "title": title,
        "notes": notes,
        "generated_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "bootstrap_resamples": bootstrap,
        "same_studies": all(p.study_uids == runs[0].study_uids for p in runs),
        "finding_codes": [f.code for f in FINDINGS],
        "runs": results,
        "figures": figures,
    }
    # allow_nan=False: a NaN that slipped through would make the file invalid JSON.
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    (out / "report.md").write_text(_markdown(metrics))
    return metrics


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "run"


def _write_figures(
    runs: list[Predictions], results: dict[str, dict], out: Path, title: str
) -> dict[str, Any]:
    """Draw every figure; return their file names, keyed by figure and run."""
    figures: dict[str, Any] = {"roc_critical": {}, "router": {}}
    compared = runs[:2]
    radar_name = "radar_" + "_vs_".join(_slug(p.run_name) for p in compared) + ".png"
    plots.plot_auc_radar(
        {p.run_name: results[p.run_name]["per_finding_auc"] for p in compared},
        out / radar_name,
        title=f"{title}: per-finding AUC, " + " vs ".join(p.run_name for p in compared),
    )
    figures["radar"] = radar_name
    for p in runs:
        roc_name = f"roc_critical_{_slug(p.run_name)}.png"
        plots.plot_roc_critical(
            p, out / roc_name, title=f"{p.run_name}: ROC curves of the critical findings"
        )
        figures["roc_critical"][p.run_name] = roc_name
        router = results[p.run_name]["router"]
        if router is not None:
            router_name = f"router_{_slug(p.run_name)}.png"
            plots.plot_router(
                router,
                out / router_name,
                title=f"{p.run_name}: mean expert weight by finding category",
            )
            figures["router"][p.run_name] = router_name
    plots.plot_auc_strata(
        {name: r["strata"] for name, r in results.items()},
        out / "auc_strata.png",
        title="Findings by AUC stratum (of 75)",
    )
    figures["auc_strata"] = "auc_strata.png"
    return figures


def _auc(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _macro_with_ci(result: dict) -> str:
    ci = result["macro_auc_ci95"]
    text = _auc(result["macro_auc"])
    return text if ci is None else f"{text} [{ci[0]:.3f}, {ci[1]:.3f}]"


def _table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _markdown(metrics: dict) -> str:
    runs: dict[str, dict] = metrics["runs"]
    names = list(runs)
    figures = metrics["figures"]
    lines = [f"# {metrics['title']}", ""]
    if metrics["notes"]:
        lines += [f"> **{metrics['notes']}**", ""]
    studies = ", ".join(f"{name}: {r['n_studies']}" for name, r in runs.items())
    lines += [
        f"Generated {metrics['generated_utc']}. Studies per run: {studies}"
        + ("" if metrics["same_studies"] else " (**the runs were evaluated on different studies**)")
        + ".",
        "",
        "AUC is the per-finding ROC AUC over the studies whose label is known; macro AUC is its "
        "mean over the findings with both classes present (a finding with one class has no AUC, "
        "shown as n/a). "
        + (
            f"The 95% intervals are bootstrap percentiles over {metrics['bootstrap_resamples']} "
            "resamples of studies."
            if metrics["bootstrap_resamples"] > 0
            else "No bootstrap intervals were computed."
        ),
        "",
        "## Summary",
        "",
    ]
    lines += _table(
        [
            "run",
            "studies",
            "macro AUC [95% CI]",
            "critical findings",
            "AUC ≥ 0.90",
            "0.80 to 0.90",
            "AUC < 0.80",
            "undefined",
        ],
        [
            [f"`{name}`", str(r["n_studies"]), _macro_with_ci(r), _auc(r["critical_macro_auc"])]
            + [str(r["strata"][key]) for key in STRATA_KEYS]
            for name, r in runs.items()
        ],
    )
    lines += ["", f"![Findings by AUC stratum]({figures['auc_strata']})", ""]
    lines += [f"![Per-finding AUC radar]({figures['radar']})", ""]

    for name, r in runs.items():
        lines += [f"## Run `{name}`", ""]
        rows = [
            ["studies", str(r["n_studies"])],
            ["macro AUC [95% CI]", _macro_with_ci(r)],
            ["findings with an AUC", f"{r['n_findings_with_auc']} of {r['n_findings']}"],
            ["critical findings, macro AUC", _auc(r["critical_macro_auc"])],
        ]
        rows += [
            [f"findings {label}", str(r["strata"][key])]
            for key, label in zip(STRATA_KEYS, plots.STRATA_LABELS, strict=True)
        ]
        rows += [
            [f"{plots.CATEGORY_LABELS[c]}, macro AUC", _auc(r["per_category_macro_auc"][c.value])]
            for c in Category
        ]
        lines += _table(["metric", "value"], rows)
        lines += ["", f"![ROC curves, critical findings]({figures['roc_critical'][name]})", ""]
        lines += _router_section(r["router"], figures["router"].get(name))

    lines += ["## Per-finding AUC", ""]
    first = runs[names[0]]
    delta = len(names) >= 2
    header = ["finding", "category", "triage", "positives / known"] + [f"`{n}`" for n in names]
    if delta:
        header.append(f"Δ `{names[0]}` − `{names[1]}`")
    rows = []
    for f in FINDINGS:
        known = first["positives"][f.code] + first["negatives"][f.code]
        row = [
            f.name,
            plots.CATEGORY_LABELS[f.category],
            f.triage.value,
            f"{first['positives'][f.code]} / {known}",
        ]
        row += [_auc(runs[n]["per_finding_auc"][f.code]) for n in names]
        if delta:
            a, b = (runs[n]["per_finding_auc"][f.code] for n in names[:2])
            row.append("n/a" if a is None or b is None else f"{a - b:+.3f}")
        rows.append(row)
    lines += _table(header, rows, align="lllr" + "r" * (len(header) - 4))
    lines.append("")
    return "\n".join(lines)


def _router_section(router: dict | None, figure: str | None) -> list[str]:
    if router is None:
        return ["No router weights (a baseline without a router).", ""]
    k = router["K"]
    lines = [
        f"### Router ({k} experts)",
        "",
        "Mean expert weight over the studies positive for a finding of each category (a study "
        "counts in every category it has a positive finding in). Entropies in nats, at most "
        f"log K = {router['max_entropy']:.3f}: mean per-study entropy "
        f"{_auc(router['mean_study_entropy'])} (low: each study leans on few experts), entropy "
        f"of the mean usage {_auc(router['usage_entropy'])} (high: no expert collapse).",
        "",
    ]
    rows = []
    entries = [(plots.CATEGORY_LABELS[c], router["by_category"][c.value]) for c in Category]
    entries.append(("No positive finding", router["no_finding"]))
    for label, entry in entries:
        weights = entry["mean_weights"] or [None] * k
        rows.append([label, str(entry["studies"])] + [_auc(w) for w in weights])
    usage = router["expert_usage"] or [None] * k
    rows.append(["All studies", "", *(_auc(w) for w in usage)])
    lines += _table(["category", "studies"] + [f"E{e}" for e in range(k)], rows)
    lines.append("")
    if figure:
        lines += [f"![Router weights by category]({figure})", ""]
    return lines
