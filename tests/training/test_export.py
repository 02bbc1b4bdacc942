"""``headct export``: a tiny trained run becomes a checked ONNX model, a model card that agrees in
all three places, and Triton configs that match the graph; thresholds; failures write nothing.

One real export (tiny DINOv2 MoLRE on an 8x64x64 grid, fp16 and int8 variants, validation
studies from the ingest cache) serves the module; the CLI tests reuse its ONNX file.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from typer.testing import CliRunner

from service.contract import INPUT_NAME, OUTPUT_NAMES
from service.findings import FINDINGS, NUM_FINDINGS
from service.model_card import CARD_FILENAME, CARD_METADATA_KEY, NOT_FOR_CLINICAL_USE, ModelCard
from service.preprocess import ModelGrid
from testing.onnx_fixture import build_graph, fixture_card
from testing.tiny_run import EXPERTS, GRID, ONNX_TYPES, make_tiny_run, make_validation_data
from training import export as export_module
from training.export import ExportError, export_run, synthetic_volumes
from training.repository import CPU_MODEL_SOURCE
from training.runs import load_run
from training.thresholds import (
    FALLBACK_THRESHOLD,
    choose_thresholds,
    high_sensitivity_threshold,
    router_reference,
    youden_threshold,
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("export")
    data = make_validation_data(root / "data", GRID, 12)
    run = make_tiny_run(root / "run", data=data)
    result = export_run(
        run, root / "repository", validation_data=data, fp16=True, int8=True, parity_studies=4
    )
    return root, run, result


def _config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_export_writes_a_new_version_with_variants(exported) -> None:
    root, _, result = exported
    folder = root / "repository" / "headct_molre" / "1"
    assert result.version.folder == folder
    assert {p.name for p in folder.iterdir()} == {
        "model.onnx", "model.fp16.onnx", "model.int8.onnx", CARD_FILENAME,
    }  # fmt: skip
    assert (root / "repository" / "headct_molre_cpu" / "1" / "model.py").read_text() == (
        CPU_MODEL_SOURCE.read_text()
    )
    metrics = result.card.provenance.metrics
    assert metrics["onnx_max_abs_difference"] < 1e-4
    assert metrics["onnx_max_scaled_difference"] <= metrics["onnx_max_abs_difference"]
    assert metrics["validation_studies"] == 6  # the run's validation half of the 12 studies
    assert metrics["onnx_parity_studies"] == 4  # PyTorch ran on the first batch only
    for kind in ("fp16", "int8"):
        assert metrics[f"{kind}_macro_auc_delta"] is not None
        assert abs(metrics[f"{kind}_macro_auc_delta"]) < 0.2
    # Priority thresholds come from each finding's negatives: none falls back to 0.5.
    assert metrics["threshold_fallbacks"] == 0
    card = result.card
    assert card.intended_use == NOT_FOR_CLINICAL_USE and card.provenance.synthetic
    assert (card.grid.depth, card.grid.height, card.grid.width) == GRID
    assert card.adapter.kind == "molre" and card.adapter.experts == EXPERTS
    assert card.adapter.added_fraction and card.adapter.added_parameters
    assert [w.name for w in card.windows] == ["brain", "subdural", "bone"]
    assert card.provenance.trained == "2026-01-02"


def test_onnx_matches_pytorch_on_a_new_batch(exported) -> None:
    _, run, result = exported
    model, _ = load_run(run)
    volumes = synthetic_volumes(ModelGrid(*GRID), 3, seed=11)
    with torch.no_grad():
        expected = export_module.ServingGraph(model)(torch.from_numpy(volumes))
    session = ort.InferenceSession(result.version.model, providers=["CPUExecutionProvider"])
    got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: volumes})
    for name, value, reference in zip(OUTPUT_NAMES, got, expected, strict=True):
        np.testing.assert_allclose(value, reference.numpy(), atol=1e-5, err_msg=name)
    assert got[1].shape == (3, EXPERTS) and got[2].shape == (3, GRID[0], EXPERTS)


def test_the_card_agrees_in_metadata_file_and_both_configs(exported) -> None:
    result = exported[2]
    version = result.version
    cards = {"file": ModelCard.from_json(version.card.read_text())}
    for path in version.folder.glob("*.onnx"):
        metadata = {p.key: p.value for p in onnx.load(path).metadata_props}
        cards[path.name] = ModelCard.from_json(metadata[CARD_METADATA_KEY])
    for config in (version.config, version.cpu_config):
        text = _config(config).parameters[CARD_METADATA_KEY].string_value
        cards[config.parent.name] = ModelCard.from_json(text)
    assert len(cards) == 6
    assert all(card == result.card for card in cards.values())
    session = ort.InferenceSession(version.model, providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map[CARD_METADATA_KEY] == result.card.to_json()


def test_configs_match_the_onnx_graph(exported) -> None:
    result = exported[2]
    graph = onnx.load(result.version.model).graph
    shapes = {}
    for value in [*graph.input, *graph.output]:
        tensor = value.type.tensor_type
        shapes[value.name] = (ONNX_TYPES[tensor.elem_type], [d.dim_value for d in tensor.shape.dim])
    assert list(shapes) == [INPUT_NAME, *OUTPUT_NAMES]
    for config_path in (result.version.config, result.version.cpu_config):
        config = _config(config_path)
        assert config.max_batch_size == 8
        for tensor in [*config.input, *config.output]:
            dtype, dims = shapes[tensor.name]
            assert model_config_pb2.DataType.Name(tensor.data_type) == dtype, tensor.name
            assert dims[0] == 0 and list(tensor.dims) == dims[1:], tensor.name  # batch dynamic
        assert [t.name for t in config.output] == list(OUTPUT_NAMES)
        batching = config.dynamic_batching
        assert batching.max_queue_delay_microseconds > 0 and batching.preferred_batch_size
        policy = batching.default_queue_policy
        assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
        assert policy.default_timeout_microseconds > 0 and policy.allow_timeout_override
        for warmup in config.model_warmup:
            sample = warmup.inputs[INPUT_NAME]
            assert list(sample.dims) == list(GRID) and sample.zero_data
            assert 1 <= warmup.batch_size <= config.max_batch_size

    gpu, cpu = _config(result.version.config), _config(result.version.cpu_config)
    assert (gpu.name, gpu.platform) == ("headct_molre", "onnxruntime_onnx")
    assert [g.kind for g in gpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert "tensorrt" in result.version.config.read_text()  # the commented accelerator stanza
    assert (cpu.name, cpu.backend) == ("headct_molre_cpu", "python")
    assert [g.kind for g in cpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    onnx_model = cpu.parameters["ONNX_MODEL"].string_value
    cpu_folder = result.version.cpu_config.parent
    assert (cpu_folder / onnx_model).resolve() == result.version.model.resolve()
    assert cpu.parameters["EXECUTION_ENV_PATH"].string_value.startswith("$$TRITON_MODEL_DIRECTORY")


def test_thresholds_and_router_reference_come_from_validation(exported) -> None:
    """The default policy chooses thresholds for the study-level priority; the card records the
    operating points it measured on the validation data."""
    _, _, result = exported
    for finding, choice, card_finding in zip(
        FINDINGS, result.thresholds, result.card.findings, strict=True
    ):
        assert card_finding.threshold == choice.threshold
        expected = "false_positive_rate" if finding.triage.value == "none" else "priority"
        assert choice.method == expected
    points = {p.level: p for p in result.card.operating_points or []}
    assert set(points) == {"critical", "urgent"}
    for point in points.values():
        assert point.positives + point.negatives == 6  # the run's validation half of the data
        assert point.validation.startswith("6 studies of")
        if point.positives:
            assert point.sensitivity is not None
            assert point.sensitivity >= point.target_sensitivity
            low, high = point.sensitivity_ci95 or (2.0, -1.0)
            assert low <= point.sensitivity <= high
    reference = result.card.router_reference
    assert len(reference) == EXPERTS and abs(sum(reference) - 1) < 1e-6


def test_study_score_policy_fits_scores_or_says_it_fell_back(caplog) -> None:
    """With enough validation studies on each side of both levels the default policy fits the
    study-level scores (points measured out of fold); with too few it falls back to the findings
    rule and says so in the log, naming the studies and the minimum."""
    from training.operating_points import MIN_SCORE_STUDIES, true_levels

    rng = np.random.default_rng(3)
    labels = (rng.random((400, NUM_FINDINGS)) < 0.02).astype(np.int64)
    probabilities = np.clip(0.6 * labels + 0.4 * rng.random(labels.shape), 0.001, 0.999)
    levels = true_levels(labels)
    assert min((levels >= 2).sum(), (levels < 1).sum()) >= MIN_SCORE_STUDIES
    with caplog.at_level("WARNING", logger="training.export"):
        _, points, scores = export_module.card_thresholds(labels, probabilities, "study-score", "X")
    assert scores and {s.level for s in scores} == {"critical", "urgent"}
    assert points and all(p.validation == "X, out of fold" for p in points)
    assert not caplog.records

    with caplog.at_level("WARNING", logger="training.export"):
        thresholds, points, scores = export_module.card_thresholds(
            labels[:30], probabilities[:30], "study-score", "30 studies of V"
        )
    assert scores == [] and points and all(p.validation == "30 studies of V" for p in points)
    assert {c.method for c in thresholds} >= {"priority"}
    (record,) = caplog.records
    assert (
        "30 studies of V" in record.getMessage() and str(MIN_SCORE_STUDIES) in record.getMessage()
    )


def test_high_sensitivity_and_youden_thresholds() -> None:
    scores = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95])
    labels = np.array([0, 0, 1, 0, 0, 1, 1, 1, 1, 1])
    # 6 positives: sensitivity >= 0.95 needs all 6, so the lowest positive score.
    assert high_sensitivity_threshold(scores, labels) == 0.3
    assert high_sensitivity_threshold(scores, labels, 0.8) == 0.6  # 5 of 6
    # Above 0.4 everything is positive and nothing below is, save the 0.3: J = 5/6 + 1 - 1.
    assert youden_threshold(scores, labels) == 0.6

    all_labels = np.zeros((10, NUM_FINDINGS))
    all_labels[:, 0] = labels  # a critical finding
    all_labels[:, -1] = labels  # a non-critical one
    probabilities = np.tile(scores[:, None], (1, NUM_FINDINGS))
    choices = choose_thresholds(all_labels, probabilities)
    assert (choices[0].method, choices[0].threshold) == ("sensitivity", 0.3)
    assert (choices[-1].method, choices[-1].threshold) == ("youden", 0.6)
    assert choices[1].method == "fallback" and choices[1].threshold == FALLBACK_THRESHOLD
    assert router_reference(np.array([[0.2, 0.8], [0.4, 0.6]]), 2) == pytest.approx([0.3, 0.7])
    assert router_reference(None, 4) == [0.25] * 4


def _copy_export(source: Path):
    def fake_export(model, grid, path: Path) -> None:
        shutil.copy(source, path)

    return fake_export


def test_cli_exports_the_next_version(exported, monkeypatch) -> None:
    from training.cli import app

    root, run, result = exported
    # The same graph again (no second torch export): parity holds, version 2 is published.
    monkeypatch.setattr(export_module, "export_onnx", _copy_export(result.version.model))
    repository = root / "repository"
    outcome = CliRunner().invoke(
        app, ["export", "--run", str(run), "--repository", str(repository)]
    )
    assert outcome.exit_code == 0, outcome.output
    assert json.loads(outcome.stdout[outcome.stdout.index("{") :])["version"] == 2
    second = repository / "headct_molre" / "2"
    assert {p.name for p in second.iterdir()} == {"model.onnx", CARD_FILENAME}
    assert (repository / "headct_molre" / "1" / "model.int8.onnx").is_file()  # untouched
    cpu = _config(repository / "headct_molre_cpu" / "config.pbtxt")
    assert cpu.parameters["ONNX_MODEL"].string_value == "../headct_molre/2/model.onnx"
    card = ModelCard.from_json(cpu.parameters[CARD_METADATA_KEY].string_value)
    assert card.version == 2 and card.provenance.metrics["onnx_max_abs_difference"] < 1e-4
    # Without validation data, the thresholds come from the run's validation predictions.
    assert card.provenance.metrics["threshold_fallbacks"] < 75


def test_a_graph_that_breaks_the_serving_contract_fails_and_writes_nothing(
    exported, tmp_path, monkeypatch
) -> None:
    _, run, _ = exported
    wrong = tmp_path / "wrong.onnx"  # the card's grid, one expert too many
    onnx.save(build_graph(fixture_card(*GRID, experts=EXPERTS + 1)), wrong)
    monkeypatch.setattr(export_module, "export_onnx", _copy_export(wrong))
    repository = tmp_path / "repository"
    with pytest.raises(ExportError, match="onnx graph breaks the serving contract: ROUTER_WEIGHTS"):
        export_run(run, repository)
    assert not repository.exists()


def test_a_graph_that_disagrees_with_pytorch_fails_and_writes_nothing(
    exported, tmp_path, monkeypatch
) -> None:
    from training.cli import app

    root, _, result = exported
    other_run = make_tiny_run(tmp_path / "other", seed=1)  # different weights, same shapes
    monkeypatch.setattr(export_module, "export_onnx", _copy_export(result.version.model))
    repository = tmp_path / "repository"
    outcome = CliRunner().invoke(
        app, ["export", "--run", str(other_run), "--repository", str(repository)]
    )
    assert outcome.exit_code == 1
    assert "differs from PyTorch" in outcome.output
    assert not repository.exists()
    with pytest.raises(ExportError, match="exists"):
        export_run(other_run, root / "repository", version=1)


def test_the_card_follows_the_training_data_the_run_recorded(
    exported, tmp_path, monkeypatch
) -> None:
    """No flag needed for a run that recorded its data; a run that did not (trained before runs
    recorded it) is refused until told; phantoms are never labelled real."""
    from training.cli import app

    _, run, result = exported
    monkeypatch.setattr(export_module, "export_onnx", _copy_export(result.version.model))
    repository = tmp_path / "repository"

    def export(folder: Path, *flags: str):
        return CliRunner().invoke(
            app, ["export", "--run", str(folder), "--repository", str(repository), *flags]
        )

    outcome = export(run, "--no-synthetic")  # the tiny run recorded synthetic data
    assert outcome.exit_code == 1 and "leave out --no-synthetic" in outcome.output

    older = tmp_path / "older"
    shutil.copytree(run, older)
    recorded = json.loads((older / "config.json").read_text())
    del recorded["synthetic"]
    (older / "config.json").write_text(json.dumps(recorded))
    outcome = export(older)
    assert outcome.exit_code == 1, outcome.output
    assert "--synthetic" in outcome.output and "--no-synthetic" in outcome.output
    assert not repository.exists()

    outcome = export(older, "--no-synthetic")
    assert outcome.exit_code == 0, outcome.output
    card = ModelCard.from_json((repository / "headct_molre" / "1" / CARD_FILENAME).read_text())
    assert not card.provenance.synthetic and card.intended_use != NOT_FOR_CLINICAL_USE
    assert "synthetic" not in card.description and recorded["train"]["data"] in (
        card.provenance.training_data
    )


def _export_and_match(model: torch.nn.Module, path: Path, seed: int) -> list[np.ndarray]:
    """Export ``model`` on a 4x32x32 grid to ``path``; its probabilities and slice router
    weights on 3 new volumes match PyTorch's. Returns the ONNX outputs."""
    grid = ModelGrid(4, 32, 32)
    export_module.export_onnx(model, grid, path)
    volume = export_module.synthetic_volumes(grid, 3, seed=seed)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {INPUT_NAME: volume})
    with torch.no_grad():
        expected = model(torch.from_numpy(volume))
    np.testing.assert_allclose(outputs[0], expected.probabilities.numpy(), atol=1e-4)
    np.testing.assert_allclose(outputs[2], expected.slice_router_weights.numpy(), atol=1e-4)
    return outputs


def test_a_shared_router_exports_with_its_frozen_pass(tmp_path: Path) -> None:
    """MoLRE with the shared router (two backbone passes per slice) exports to one ONNX graph
    that matches PyTorch on a batch size it was not traced with."""
    from training.model import build_model
    from training.molre import MoLREConfig

    torch.manual_seed(0)
    model = build_model("tiny_dinov2", "molre", MoLREConfig(experts=3, router="shared")).eval()
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.3)  # experts that change the output
    outputs = _export_and_match(model, tmp_path / "shared.onnx", seed=7)
    assert outputs[1].shape == (3, 3) and np.ptp(outputs[2], axis=1).max() > 1e-3


def test_parity_is_relative_for_large_outputs_and_absolute_for_small() -> None:
    from training.export import max_abs_difference, max_scaled_difference

    probabilities = np.array([[0.2, 0.9]])
    logits = np.array([[40.0, -25.0]])
    a = (probabilities + 5e-5, logits + 2e-3)  # float32 rounding at 40 is about 4e-6 per op
    assert max_abs_difference(a, (probabilities, logits)) == pytest.approx(2e-3)
    assert max_scaled_difference(a, (probabilities, logits)) == pytest.approx(5e-5)
    off = (probabilities + 2e-4, logits)
    assert max_scaled_difference(off, (probabilities, logits)) == pytest.approx(2e-4)


def test_a_conv_stem_backbone_exports_with_its_stem_experts(tmp_path: Path) -> None:
    """MoLRE on a conv-stem backbone (experts on the stem's 1x1 convolution, batch norms in
    inference mode) exports to ONNX and matches PyTorch on a new batch."""
    from training.model import build_model
    from training.molre import MoLREConfig

    torch.manual_seed(0)
    model = build_model("tiny_dinov2_conv", "molre", MoLREConfig(experts=3)).train()
    with torch.no_grad():  # running statistics that are not the initial 0 and 1
        stem = model.backbone.encoder.embeddings.patch_embeddings.projection
        for layer in stem.layers:
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
    model.eval()
    for name, parameter in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.3)
    assert any("projection.out" in name for name in model.expert_layer_names)
    _export_and_match(model, tmp_path / "stem.onnx", seed=11)
