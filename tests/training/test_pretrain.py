"""`headct pretrain`: the stand-in backbone's pretraining streams fresh phantoms with slice-level
targets, resumes from its checkpoint, refuses changed settings, exports a folder `--weights`
reads, and continues from that folder on another machine."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from service.findings import FINDING_CODES
from training.backbones import create_backbone
from training.ceiling import CEILING_SETTINGS, ceiling_config
from training.config import PRETRAINING_FINDINGS, PretrainConfig
from training.pretrain import TRAIN_STREAM, export_weights, load_pretrainer, make_study, pretrain

# A ceiling run small enough for a test (ceiling_config's other settings stay as the CLI's).
TINY_CEILING = {
    "grid": (8, 32, 32),
    "source_matrix": 64,
    "slices_per_step": 8,
    "buffer_studies": 2,
    "validation_studies": 4,
    "workers": 0,
}


def _config(out: Path, steps: int, backbone: str = "tiny_dinov2") -> PretrainConfig:
    return PretrainConfig(
        out=str(out),
        backbone=backbone,
        grid=(8, 32, 32),
        source_matrix=64,
        steps=steps,
        slices_per_step=8,
        buffer_studies=2,
        validation_studies=6,
        validate_every=2,
        warmup_steps=1,
        workers=0,
        prevalence_scale=4.0,
    )


def _curve(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "validation.jsonl").read_text().splitlines()]


def test_studies_are_reproducible_with_slice_targets_from_the_annotations() -> None:
    config = _config(Path("unused"), 1)
    first, again = make_study(config, TRAIN_STREAM, 3), make_study(config, TRAIN_STREAM, 3)
    assert np.array_equal(first.hu, again.hu) and first.hu.dtype == np.int16
    assert first.hu.shape == (8, 32, 32) and first.targets.shape == (8, len(PRETRAINING_FINDINGS))
    other = make_study(config, TRAIN_STREAM, 4)
    assert not np.array_equal(first.hu, other.hu)
    # A finding has slice targets only where its study label is positive.
    for column, code in enumerate(config.findings):
        if first.targets[:, column].any():
            assert first.labels[FINDING_CODES.index(code)] == 1


def test_resume_continues_the_stream_and_changed_settings_are_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    pretrain(_config(run, 4))
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["step"] == 4 and state["consumed"] > 0
    assert [row["step"] for row in _curve(run)] == [2, 4]
    pretrain(_config(run, 6))  # a longer schedule: resumes at step 4
    resumed = torch.load(run / "last.pt", weights_only=False)
    assert resumed["step"] == 6 and resumed["consumed"] > state["consumed"]
    assert [row["step"] for row in _curve(run)] == [2, 4, 6]
    with pytest.raises(ValueError, match="lr"):
        pretrain(replace(_config(run, 8), lr=0.5))


@pytest.mark.parametrize("name", ["tiny_dinov2", "tiny_dinov2_conv"])
def test_export_is_a_weights_folder_and_another_machine_continues_from_it(
    name: str, tmp_path: Path
) -> None:
    run, folder = tmp_path / "run", tmp_path / "weights"
    pretrain(_config(run, 4, name))
    card = export_weights(run, folder)
    assert card["synthetic"] and card["steps"] == 4 and card["dtype"] == "float16"
    text = (folder / "PRETRAINING.md").read_text()
    assert "not for clinical use" in text
    # The card's command remakes the run: the settings that differ from the defaults.
    command = next(line for line in text.splitlines() if line.startswith("- Command:"))
    for option in (f"--out {run}", f"--backbone {name}", "--steps 4", "--grid 8 32 32"):
        assert option in command
    assert f"--export {folder}" in command and "--lr" not in command
    backbone = create_backbone(name, weights=folder).eval()
    assert backbone.pretrained and next(backbone.parameters()).dtype == torch.float32
    trained, _ = load_pretrainer(run)  # the run's own backbone, fp32: the folder is it in fp16
    pixels = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(backbone(pixels), trained.backbone(pixels), atol=2e-2)

    elsewhere = tmp_path / "elsewhere"
    pretrain(_config(elsewhere, 6, name), init_from=folder)
    continued = torch.load(elsewhere / "last.pt", weights_only=False)
    assert continued["step"] == 6 and continued["consumed"] > card["studies_seen"]
    assert [row["step"] for row in _curve(elsewhere)] == [6]
    with pytest.raises(ValueError, match="grid"):
        pretrain(replace(_config(tmp_path / "third", 6, name), grid=(8, 64, 64)), init_from=folder)


def test_continuing_into_a_backbone_with_the_same_encoder_and_another_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """demo_vit -> demo_vit_max in miniature: the encoder carries over, the findings head (now
    fed 3 hidden wide, not 2) starts afresh, the position head too, and the exported card names
    the run it continued and its recipe."""
    from training.backbones import REGISTRY

    monkeypatch.setitem(REGISTRY, "tiny_max", replace(REGISTRY["tiny_dinov2"], patch_max=True))
    run, folder = tmp_path / "run", tmp_path / "weights"
    pretrain(_config(run, 4))
    export_weights(run, folder)
    first = create_backbone("tiny_dinov2", weights=folder).encoder.state_dict()

    elsewhere, again = tmp_path / "elsewhere", tmp_path / "again"
    config = replace(_config(elsewhere, 6), backbone="tiny_max", source_matrix=32, shift_px=2)
    # One step at lr 0 elsewhere: the encoder it holds is the one it continued.
    pretrain(replace(config, out=str(tmp_path / "lr0"), steps=5, lr=0.0), init_from=folder)
    continued = torch.load(tmp_path / "lr0" / "last.pt", weights_only=False)["model"]
    for key, value in first.items():
        assert torch.equal(continued[f"backbone.encoder.{key}"], value), key
    assert continued["findings.weight"].shape[1] == 3 * 32
    pretrain(config, init_from=folder)
    card = export_weights(elsewhere, again)
    assert card["backbone"] == "tiny_max" and card["steps"] == 6
    [earlier] = card["continued_from"]
    assert earlier["backbone"] == "tiny_dinov2" and earlier["steps"] == 4
    assert earlier["config"]["source_matrix"] == 64
    text = (again / "PRETRAINING.md").read_text()
    assert "Continued from `tiny_dinov2` after 4 steps" in text and "| tiny_max | 6 |" in text
    assert "validated on that matrix's held-out studies" in text  # 64 px, then 32
    with pytest.raises(ValueError, match="seed"):
        pretrain(replace(config, out=str(tmp_path / "third"), seed=1), init_from=folder)


def test_a_ceiling_run_can_be_extended_with_more_steps(tmp_path: Path) -> None:
    """The ceiling's warm-up is a fixed number of steps: a larger --steps resumes the run rather
    than being refused as other settings (a warm-up of steps // 20 was 1 step, then 2)."""
    first = ceiling_config(tmp_path, steps=1, **TINY_CEILING)
    longer = ceiling_config(tmp_path, steps=40, **TINY_CEILING)
    assert first.warmup_steps == longer.warmup_steps == CEILING_SETTINGS["warmup_steps"]
    pretrain(first)
    pretrain(longer, max_seconds=0)  # resumed: one more step, then out of time
    assert torch.load(tmp_path / "last.pt", weights_only=False)["step"] == 2
    assert [row["step"] for row in _curve(tmp_path)] == [1, 2]


def test_a_ceiling_run_reports_its_triage_of_critical_studies(tmp_path: Path) -> None:
    """ceiling.json and ceiling.md say how well the reference CNN's highest critical-finding
    score separates studies with a critical finding (the product's triage targets' reference)."""
    from training.ceiling import run_ceiling

    settings = TINY_CEILING | {"validation_studies": 24, "prevalence_scale": 8.0}
    summary = run_ceiling(ceiling_config(tmp_path, steps=2, **settings))
    triage = summary["critical_triage"]
    assert triage["critical_studies"] + triage["other_studies"] == 24
    assert triage["sensitivity"] >= 0.95 and 0 <= triage["specificity"] <= 1
    assert json.loads((tmp_path / "ceiling.json").read_text())["critical_triage"] == triage
    text = (tmp_path / "ceiling.md").read_text()
    assert "## Triage at the ceiling" in text and f"AUC **{triage['auc']:.3f}**" in text
    # A validation set without a normal study still reads (no share of normals to give).
    from training.ceiling import ceiling_markdown

    none = summary | {"critical_triage": triage | {"normal_called_critical": None}}
    assert "(no normal study among them)" in ceiling_markdown(none)


def test_only_a_ceiling_run_is_read_as_the_reference_on_demo_studies(tmp_path: Path) -> None:
    """A backbone pretraining run (slice targets on a subset of the findings) is refused, with
    the reason, before any study is read."""
    from training.demo_eval import ceiling_predictions

    run = tmp_path / "pretrain"
    pretrain(_config(run, steps=1))
    with pytest.raises(ValueError, match="a ceiling run"):
        ceiling_predictions(run, tmp_path / "no-such-set")


def test_augment_mirrors_and_shifts_by_at_most_shift_px() -> None:
    from training.pretrain import augment

    hu = torch.zeros(2, 32, 32, dtype=torch.int16)
    hu[:, 10, 20] = 1000  # one bright pixel
    moves = set()
    for seed in range(40):
        out = augment(hu, np.random.default_rng(seed), 3)
        assert out.shape == hu.shape and int(out.sum()) == int(hu.sum())  # rolled, not cropped
        y, x = (int(v) for v in torch.nonzero(out[0])[0])
        mirrored = abs(x - 20) > 3
        assert abs(y - 10) <= 3 and abs((31 - x if mirrored else x) - 20) <= 3
        moves.add((y, x))
    assert len(moves) > 5  # it does move
    still = {
        tuple(torch.nonzero(augment(hu, np.random.default_rng(s), 0)[0])[0].tolist())
        for s in range(20)
    }
    assert still == {(10, 20), (10, 11)}  # shift 0: only the mirror


def test_distillation_from_a_ceiling_run_in_the_students_finding_order(tmp_path: Path) -> None:
    """--teacher: a trained slice model (here a tiny ceiling CNN on all 75 findings) gives soft
    targets for the student's findings, mapped by code; the card says so. A teacher of another
    grid, or one that lacks a finding, is refused before any training."""
    from training.pretrain import _teacher, load_pretrainer

    teacher_run = tmp_path / "teacher"
    pretrain(ceiling_config(teacher_run, steps=1, **TINY_CEILING))
    config = replace(_config(tmp_path / "student", 2), teacher=str(teacher_run))
    teacher = _teacher(config)
    model, recorded = load_pretrainer(teacher_run)
    hu = torch.from_numpy(make_study(config, TRAIN_STREAM, 0).hu[:3])
    order = [recorded.findings.index(code) for code in config.findings]
    with torch.no_grad():
        assert torch.equal(teacher(hu), model(hu)[0][:, order])
    pretrain(config)
    assert [row["step"] for row in _curve(tmp_path / "student")] == [2]
    card = export_weights(tmp_path / "student", tmp_path / "weights")
    assert "distillation" in card["objective"] and str(teacher_run) in card["objective"]
    assert "distilled from" in (tmp_path / "weights" / "PRETRAINING.md").read_text()

    with pytest.raises(ValueError, match="grid"):
        _teacher(replace(config, grid=(8, 64, 64), source_matrix=128))
    narrow = tmp_path / "narrow"
    pretrain(replace(_config(narrow, 1), findings=config.findings[:3]))
    with pytest.raises(ValueError, match="does not predict"):
        _teacher(replace(config, teacher=str(narrow)))
    with pytest.raises(ValueError, match="distill_weight"):
        replace(config, distill_weight=1.5)
