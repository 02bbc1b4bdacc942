"""The demo-model pipeline runs end to end at tiny sizes (the full run takes an hour, not CI)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import onnx

from service.findings import Category
from service.model_card import CARD_METADATA_KEY, ModelCard
from training.ceiling import ceiling_config
from training.demo import ARMS, QUICK, DemoSizes, arm_config, run_demo
from training.pretrain import pretrain


def test_quick_demo_pipeline(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    old = repository / "headct_molre" / "1"
    old.mkdir(parents=True)  # a previous demo version: it leaves when the new one ships
    report = tmp_path / "report"
    # A tiny ceiling run at the quick grid: its CNN is read on the demo's own studies.
    ceiling = tmp_path / "ceiling"
    pretrain(
        ceiling_config(
            ceiling,
            steps=2,
            grid=QUICK.grid,
            source_matrix=64,
            slices_per_step=8,
            buffer_studies=2,
            validation_studies=4,
            workers=0,
        )
    )
    summary = run_demo(tmp_path / "work", repository, QUICK, report=report, ceiling_run=ceiling)

    arms = {"probe", "lora", "lora_matched", "molre"}
    assert set(summary["three_way"]) == arms
    table = summary["three_way"]
    assert table["molre"]["added_parameters"] > table["lora"]["added_parameters"] > 0
    # LoRA at rank 10 has about as many added parameters as MoLRE (K=4, r=2, with routers).
    ratio = table["lora_matched"]["added_parameters"] / table["molre"]["added_parameters"]
    assert 0.75 < ratio < 1.25
    assert table["probe"]["added_parameters"] == 0

    comparison = summary["fair_comparison"]
    assert set(comparison["arms"]) == arms and set(comparison["differences_vs"]) == arms - {"molre"}
    for arm in comparison["arms"].values():
        assert len(arm["per_seed"]) == len(QUICK.seeds)
        low, high = arm["macro_auc_ci95"]
        assert low <= high
    for triage in summary["triage"].values():
        assert {p["level"] for p in triage["test"]} == {"critical", "urgent"}
        assert sum(triage["priority_counts"].values()) == QUICK.test_studies
        assert [m["target"] for m in triage["critical_margins"]] == [0.95, 0.97, 0.99]
        separation = triage["critical_separation"]  # None: the findings rule alone (no score)
        assert separation is None or (
            0 <= separation["specificity"] <= 1 and separation["sensitivity"] >= 0.95
        )
    assert all(0 <= k["chance"] <= 1 for k in summary["key_slice"].values())
    for key in summary["key_slice"].values():
        for measure in (
            "key_slice_in_lesion",
            "attention_slice_in_lesion",
            "true_finding_slice_in_lesion",
        ):
            assert key[measure] != key[measure] or 0 <= key[measure] <= 1  # NaN: no focal study
    router = summary["router"]
    assert len(router["study_weight_std"]) == 4 and len(router["by_slice_position"]) == 16

    for name in ("metrics.json", "report.md", "three_way.md", "demo_summary.json"):
        assert (report / name).is_file(), name
    # With two seeds, each difference also shows the paired difference of each seed.
    lines = [x for x in (report / "three_way.md").read_text().splitlines() if x.startswith("- vs ")]
    assert len(lines) == 3 and all(x.count("per seed") == 1 for x in lines)
    assert any(p.name.startswith("radar_molre_vs_lora") for p in report.glob("*.png"))
    text = (report / "three_way.md").read_text()
    same = summary["ceiling_same_studies"]
    assert 0 <= same["macro_auc"] <= 1 and same["run"] == str(ceiling)
    assert {p["level"] for p in same["triage"]["test"]} == {"critical", "urgent"}
    assert set(same["per_category_macro_auc"]) == {c.value for c in Category}
    assert "## The reference CNN on these same studies" in text
    headers = [x for x in text.splitlines() if x.startswith("| category |")]
    assert sum(x.endswith(" | probe | reference CNN |") for x in headers) == 1  # per category
    assert "not for clinical use" in text and "Paired bootstrap" in text
    margins = text.split("### The cost of a margin")[1].split("\n## ")[0].splitlines()
    assert [x.split(" | ")[1] for x in margins if x.startswith("| molre |")] == [
        "0.95",
        "0.97",
        "0.99",
    ]
    # The report names the version the export wrote (one above the newest in the repository).
    assert summary["model"] == "Demo model v2" and text.startswith("# Demo model v2:")
    assert summary["export"]["version"] == 2

    # The backbone was pretrained by `headct pretrain` and exported with its card.
    card = json.loads((tmp_path / "work/backbone/pretraining.json").read_text())
    assert card["synthetic"] and card["steps"] == QUICK.pretrain_steps

    # The exported model is the only version left, with a synthetic card and operating points.
    assert not old.exists()
    versions = [p.name for p in (repository / "headct_molre").iterdir() if p.is_dir()]
    assert versions == ["2"]
    assert (repository / "headct_molre_cpu" / "1" / "model.py").is_file()
    model = onnx.load(repository / "headct_molre" / "2" / "model.onnx")
    metadata = {p.key: p.value for p in model.metadata_props}
    card = ModelCard.from_json(metadata[CARD_METADATA_KEY])
    assert card.provenance.synthetic and "clinical" in card.intended_use.lower()
    assert card.adapter.kind == "molre" and len(card.router_reference) == card.adapter.experts
    # Every arm has the slice head, started from the quick backbone's pretraining head.
    assert card.adapter.slice_head and "slice head" in card.description
    assert card.operating_points and {p.level for p in card.operating_points} == {
        "critical",
        "urgent",
    }


def test_the_demo_sets_the_router_of_its_molre_arm_only(tmp_path: Path) -> None:
    shared = replace(DemoSizes(), router="shared")
    args = (0, tmp_path / "data", tmp_path / "run", tmp_path / "weights", shared)
    molre = arm_config("molre", *args)
    assert molre.molre.router == "shared" and molre.molre.experts == 4
    assert molre.router_lr_scale == ARMS["molre"]["router_lr_scale"]
    assert arm_config("lora", *args).molre.router == "per_layer"  # LoRA: no router to set
    assert arm_config("molre", *args[:-1], DemoSizes()).molre.router == "per_layer"
