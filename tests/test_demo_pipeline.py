"""The demo-model pipeline runs end to end at tiny sizes (the full run takes minutes, not CI)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx

from service.model_card import CARD_METADATA_KEY, ModelCard
from training.demo import PRETRAINING_FINDINGS, QUICK, run_demo


def test_quick_demo_pipeline(tmp_path: Path) -> None:
    repository = tmp_path / "repository"
    report = tmp_path / "report"
    summary = run_demo(tmp_path / "work", repository, QUICK, report=report)

    assert set(summary["three_way"]) == {"probe", "lora", "molre"}
    molre, lora = summary["three_way"]["molre"], summary["three_way"]["lora"]
    assert molre["added_parameters"] > lora["added_parameters"] > 0
    assert summary["three_way"]["probe"]["added_parameters"] == 0
    assert 0 <= summary["key_slice"]["chance"] <= 1
    for name in ("metrics.json", "report.md", "three_way.md", "demo_summary.json"):
        assert (report / name).is_file(), name
    assert any(p.name.startswith("radar_molre_vs_lora") for p in report.glob("*.png"))
    assert "not for clinical use" in (report / "three_way.md").read_text()

    # The pretraining labels hide the findings the backbone must not see.
    header, first = (tmp_path / "work/data/pretrain/labels.csv").read_text().splitlines()[:2]
    values = dict(zip(header.split(","), first.split(","), strict=True))
    hidden = [c for c in values if c != "study_uid" and c not in PRETRAINING_FINDINGS]
    assert hidden and all(values[c] == "" for c in hidden)

    # The exported model carries a card that says it is synthetic.
    model = onnx.load(repository / "headct_molre" / "1" / "model.onnx")
    metadata = {p.key: p.value for p in model.metadata_props}
    card = ModelCard.from_json(metadata[CARD_METADATA_KEY])
    assert card.provenance.synthetic and "clinical" in card.intended_use.lower()
    assert card.adapter.kind == "molre" and len(card.router_reference) == card.adapter.experts
    assert json.loads((repository / "headct_molre" / "1" / "model_card.json").read_text())
