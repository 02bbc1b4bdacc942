"""The demo's markdown report (``three_way.md``), written from its summary."""

from __future__ import annotations

from typing import Any

from service.findings import FINDINGS, Category

SYNTHETIC_NOTE = (
    "Synthetic phantoms made by `headct synth`: not patient data. The demo model is a "
    "demonstration, not for clinical use."
)


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None or value != value else f"{value:.{digits}f}"


def _ci(values: Any) -> str:
    return "" if not values else f" [{_f(values[0])}, {_f(values[1])}]"


def demo_markdown(summary: dict[str, Any], metrics: dict[str, Any] | None = None) -> str:
    comparison = summary["fair_comparison"]
    lines = [
        f"# {summary['model']}: MoLRE, LoRA and a linear probe on a pretrained stand-in backbone",
        "",
        f"> **{SYNTHETIC_NOTE}**",
        "",
        f"Test set: {comparison['studies']} held-out phantoms at clinical prevalence. Macro AUC "
        f"over the {comparison['findings_scored']} findings with at least "
        f"{comparison['min_positives']} positives; 95% intervals by bootstrap over studies "
        f"(mean over {len(summary['sizes']['seeds'])} seed(s)).",
        "",
        "| arm | macro AUC [95% CI] | per seed | AUC >= 0.90 | 0.80-0.90 | < 0.80 | added params | "
        "added % | s/step |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, row in summary["three_way"].items():
        fair = comparison["arms"][arm]
        strata = row["strata"]
        lines.append(
            f"| {arm} | {_f(fair['macro_auc'])}{_ci(fair['macro_auc_ci95'])} | "
            f"{', '.join(_f(x) for x in fair['per_seed'])} | {strata['auc_ge_0.90']} | "
            f"{strata['auc_0.80_to_0.90']} | {strata['auc_lt_0.80']} | "
            f"{row['added_parameters']:,} | {100 * row['added_fraction']:.2f}% | "
            f"{_f(row['seconds_per_step'])} |"
        )
    lines += ["", f"Paired bootstrap, {comparison['reference']} minus each arm:", ""]
    reference = comparison["arms"].get(comparison["reference"], {}).get("per_seed", [])
    for arm, d in comparison["differences_vs"].items():
        # Seed s of every arm trains with the same seed (data order, initial draw): the per-seed
        # differences show how much the seed moves the comparison, which the interval (over
        # studies) does not.
        seeds = comparison["arms"][arm]["per_seed"]
        paired = [a - b for a, b in zip(reference, seeds, strict=True)]
        by_seed = f"; per seed {', '.join(f'{x:+.3f}' for x in paired)}" if len(paired) > 1 else ""
        lines.append(
            f"- vs {arm}: {d['difference']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] "
            f"({d['reading']}{by_seed})"
        )
    lines += [
        "",
        "## Triage at the study-level operating points",
        "",
        "The rule the export chooses, fitted on the calibration set (clinical prevalence): every "
        "finding at a 2% false-positive rate, and a study-level score per level (a logistic "
        "regression on the 75 logits) whose threshold gives critical-study sensitivity >= 0.95 "
        "and urgent-or-critical >= 0.90 out of fold; a level fires on a positive finding of it "
        "or on its score. Measured on the test set; beside it, the findings rule alone (one "
        "false-positive rate per level, chosen for the same sensitivities) on the same studies.",
        "",
        "| arm | critical sens. [95% CI] | critical spec. [95% CI] | normals called critical | "
        "set by the score | findings rule alone: sens. / spec. / normals critical | "
        "positives per study (true) | critical / urgent / routine |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, t in summary["triage"].items():
        critical = next(p for p in t["test"] if p["level"] == "critical")
        counts = t["priority_counts"]
        alone = t.get("findings_rule") or {}
        alone_critical = next((p for p in alone.get("test", []) if p["level"] == "critical"), {})
        by_score = t.get("critical_set_by_score")
        lines.append(
            f"| {arm} | {_f(critical['sensitivity'])}{_ci(critical['sensitivity_ci95'])} | "
            f"{_f(critical['specificity'])}{_ci(critical['specificity_ci95'])} | "
            f"{_f(t['normal_called_critical'])} of {t['normal_studies']} | "
            f"{'-' if by_score is None else f'{100 * by_score:.0f}% of critical calls'} | "
            f"{_f(alone_critical.get('sensitivity'))} / {_f(alone_critical.get('specificity'))} / "
            f"{_f(alone.get('normal_called_critical'))} | "
            f"{_f(t['positives_per_study'], 1)} ({_f(t['true_positives_per_study'], 1)}) | "
            f"{counts['critical']} / {counts['urgent']} / {counts['routine']} |"
        )
    margins = {
        a: t["critical_margins"] for a, t in summary["triage"].items() if "critical_margins" in t
    }
    if margins:
        lines += [
            "",
            "### The cost of a margin on critical sensitivity",
            "",
            "A sensitivity target met on the calibration set is met on new studies only about "
            "half the time (the calibration estimate has its own error). Choosing the critical "
            "threshold for a higher calibration target buys a margin; what it costs on the test "
            "set:",
            "",
            "| arm | calibration target | calibration sens. (out of fold) | test sens. [95% CI] | "
            "test spec. [95% CI] | normals called critical |",
            "|---|---|---|---|---|---|",
        ]
        for arm, rows in margins.items():
            for row in rows:
                cal, test = row["calibration"], row["test"]
                lines.append(
                    f"| {arm} | {row['target']:.2f} | {_f(cal['sensitivity'])} | "
                    f"{_f(test['sensitivity'])}{_ci(test['sensitivity_ci95'])} | "
                    f"{_f(test['specificity'])}{_ci(test['specificity_ci95'])} | "
                    f"{_f(row['normal_called_critical'])} |"
                )
    separation = {
        a: t["critical_separation"]
        for a, t in summary["triage"].items()
        if t.get("critical_separation")
    }
    if separation:
        lines += [
            "",
            "### Separation, apart from the threshold",
            "",
            "How well each rule's critical decision tells the test studies with a critical "
            "finding from the rest, whatever its threshold: the AUC of its critical score (a "
            "study with a positive critical finding ranked above every score), and the "
            "specificity had the threshold been placed on the test set itself at 0.95 "
            "sensitivity. When this specificity is low too, the score's separation, not the "
            "threshold's placement, is what calls normal studies critical.",
            "",
            "| arm | critical AUC (score alone) | spec. at 0.95 sens. (threshold on test) | "
            "normals called critical |",
            "|---|---|---|---|",
        ]
        for arm, row in separation.items():
            lines.append(
                f"| {arm} | {_f(row['auc'])} ({_f(row['score_auc'])}) | "
                f"{_f(row['specificity'])} | {_f(row['normal_called_critical'])} |"
            )
        ceiling_triage = (summary.get("ceiling") or {}).get("critical_triage")
        if ceiling_triage:
            lines += [
                "",
                "The reference CNN of `ceiling.md` (slice-level targets on all 75 findings), its "
                "highest critical-finding score on its own held-out phantoms: AUC "
                f"{_f(ceiling_triage['auc'])}, specificity {_f(ceiling_triage['specificity'])} "
                f"and {_f(ceiling_triage['normal_called_critical'])} of normal studies called "
                "critical at 0.95 sensitivity (threshold placed on those studies).",
            ]
    lines += [
        "",
        "## Key slice",
        "",
        "The gateway's key slice shows the key finding: the triage finding furthest above its "
        "threshold (when the study score alone set the priority, the finding of its level that "
        "adds the most to the score). In a model with a slice head it is the slice the slice head "
        "scores highest for that finding (SLICE_SCORES); otherwise the slice with the most "
        "evidence (attention times the head's score of the slice's features). How often it lies "
        "in an annotated focal lesion of a positive test study:",
        "",
    ]
    for arm, key in summary["key_slice"].items():
        attention = key.get("attention_slice_in_lesion")
        evidence = key.get("evidence_slice_in_lesion")
        beside = (
            f"; the highest-attention slice {100 * attention:.0f}%" if attention is not None else ""
        )
        if evidence is not None and key.get("key_slice_from") == "slice scores":
            beside += f"; the slice with the most evidence {100 * evidence:.0f}%"
        true = key.get("true_finding_slice_in_lesion")
        if true is not None and true == true:
            beside += (
                f"; the key slice of the study's true focal finding the model scores highest "
                f"{100 * true:.0f}%"
            )
        lines.append(
            f"- {arm}: {100 * key['key_slice_in_lesion']:.0f}% of {key['studies']} studies "
            f"(a random slice: {100 * key['chance']:.0f}%{beside})."
        )
    router = summary["router"]
    if router:
        lines += [
            "",
            "## Router (MoLRE)",
            "",
            "- Standard deviation of each expert's study weight across test studies: "
            + ", ".join(_f(x) for x in router["study_weight_std"])
            + f" (within a study, across slices: {_f(router['within_study_slice_std'])}).",
            f"- Mutual information between the top expert and the finding category: "
            f"{_f(router['top_expert_category_mi_bits'])} bits (shuffled categories: "
            f"{_f(router['top_expert_category_mi_bits_shuffled'])}), over "
            f"{router['studies_with_one_category']} studies with one category or none.",
            f"- Category predicted from the study weights (cross-validated logistic regression): "
            f"{_f(router['category_from_weights_accuracy'])} accuracy, against "
            f"{_f(router['category_majority_rate'])} for the commonest category.",
            "",
            "| category | "
            + " | ".join(f"E{k}" for k in range(len(router["study_weight_std"])))
            + " |",
            "|---|" + "---|" * len(router["study_weight_std"]),
        ]
        for name, weights in router["by_category"].items():
            lines.append(f"| {name} | " + " | ".join(_f(w) for w in weights) + " |")
        positions = router["by_slice_position"]
        lines += [
            "",
            "Mean expert weights by slice position (inferior to superior, every 4th slice):",
            "",
            "| slice | " + " | ".join(f"E{k}" for k in range(len(positions[0]))) + " |",
            "|---|" + "---|" * len(positions[0]),
        ]
        for index in range(0, len(positions), 4):
            lines.append(f"| {index} | " + " | ".join(_f(w) for w in positions[index]) + " |")
    per_category = dict(summary["per_category_macro_auc"])
    same = summary.get("ceiling_same_studies")
    if same:
        per_category["reference CNN"] = same["per_category_macro_auc"]
    lines += ["", "## Per-category macro AUC (all findings with an AUC)", ""]
    arms = list(per_category)
    lines += ["| category | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for category in Category:
        lines.append(
            f"| {category.value} | "
            + " | ".join(_f(per_category[a][category.value]) for a in arms)
            + " |"
        )
    if same:
        critical = next(p for p in same["triage"]["test"] if p["level"] == "critical")
        difference = same["molre_minus_ceiling"]
        separation = same["triage"].get("critical_separation") or {}
        lines += [
            "",
            "## The reference CNN on these same studies",
            "",
            "The ceiling's reference CNN (`ceiling.md`: not the product, slice-level targets on "
            f"all 75 findings; run `{same['run']}`), scored on this report's calibration and "
            "test studies as if it were an arm (each finding's study score is its highest slice "
            "probability) and triaged by the same rule, fitted on its calibration predictions. "
            "What it reaches is a reference for what these phantoms allow at this budget.",
            "",
            f"- Macro AUC {_f(same['macro_auc'])}{_ci(same['macro_auc_ci95'])}; MoLRE minus it "
            f"{difference['difference']:+.3f}{_ci(difference['ci95'])} "
            f"({difference['reading']}).",
            f"- Critical sensitivity {_f(critical['sensitivity'])}"
            f"{_ci(critical['sensitivity_ci95'])}, specificity {_f(critical['specificity'])}"
            f"{_ci(critical['specificity_ci95'])}; normal studies called critical "
            f"{_f(same['triage']['normal_called_critical'])} of "
            f"{same['triage']['normal_studies']}.",
        ]
        if separation:
            lines.append(
                f"- Separation apart from the threshold: critical AUC {_f(separation['auc'])}, "
                f"specificity {_f(separation['specificity'])} at 0.95 sensitivity with the "
                "threshold placed on the test set."
            )
    ceiling = summary.get("ceiling")
    if ceiling and metrics is not None:
        molre = metrics["runs"].get("molre", {}).get("per_finding_auc", {})
        lines += [
            "",
            "## Against the ceiling (what the phantoms allow, `ceiling.md`)",
            "",
            "Reference CNN with slice-level targets, study macro AUC "
            f"{_f(ceiling['study_macro_auc'])}. Weak at the grid: "
            + (", ".join(f"`{c}`" for c in ceiling["weak_findings"]) or "none")
            + ".",
            "",
            "| finding | ceiling AUC | MoLRE AUC |",
            "|---|---|---|",
        ]
        for finding in FINDINGS:
            lines.append(
                f"| `{finding.code}` | {_f(ceiling['per_finding'].get(finding.code))} | "
                f"{_f(molre.get(finding.code))} |"
            )
    lines += [
        "",
        "Stage times of this invocation (s): "
        + ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in summary["stages"].items()),
        "",
    ]
    if summary.get("training_s"):
        lines += [
            "Training time of each run (s; its steps times its measured seconds per step, "
            "whichever invocation trained it): "
            + ", ".join(f"{k} {v:.0f}" for k, v in summary["training_s"].items()),
            "",
        ]
    if summary.get("stages_note"):
        lines += [summary["stages_note"], ""]
    return "\n".join(lines)
