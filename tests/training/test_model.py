"""HeadCTModel: output shapes for every adapter and backbone kind, what trains, the trainable
state, HU windowing, export with the router gates, and the parameter budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from service.contract import ADAPTER_KINDS, DEFAULT_WINDOWS
from service.findings import FINDING_CODES, NUM_FINDINGS
from training.model import (
    PRETRAINING_CARD,
    PRETRAINING_HEADS,
    HeadCTModel,
    HUWindowing,
    build_model,
    is_router,
)
from training.molre import MoLREConfig
from training.molre.injector import expert_layers
from training.params import count_for


def _volume(batch: int = 2, depth: int = 6, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-1000, 2000, (batch, depth, 64, 64), generator=generator).to(torch.int16)


def _activate_experts(model: HeadCTModel) -> None:
    """Give B non-zero values so that the experts (and so the routers) affect the output."""
    torch.manual_seed(1)
    for _, layer in expert_layers(model.backbone):
        torch.nn.init.normal_(layer.lora_B, std=0.2)


@pytest.mark.parametrize("adapter", ADAPTER_KINDS)
@pytest.mark.parametrize(
    "name", ["tiny_dinov2", "tiny_dinov2_conv", "tiny_dinov3", "tiny_siglip", "tiny_resnet3d"]
)
def test_forward_gives_the_documented_shapes(name: str, adapter: str) -> None:
    model = build_model(name, adapter)
    output = model(_volume())
    k = 4 if adapter == "molre" else 1
    layers = len(model.expert_layer_names) or 1
    assert output.logits.shape == output.probabilities.shape == (2, NUM_FINDINGS)
    assert output.router_weights.shape == (2, k)
    assert output.slice_router_weights.shape == (2, 6, k)
    assert output.slice_attention.shape == (2, 6)
    assert output.gates.shape == (2, 6, layers, k)
    assert torch.allclose(output.gates.sum(-1), torch.ones(2, 6, layers), atol=1e-5)
    assert torch.allclose(output.slice_attention.sum(-1), torch.ones(2), atol=1e-5)
    assert ((output.probabilities > 0) & (output.probabilities < 1)).all()
    # Each slice's evidence is its additive share of the logits: over the slices, plus the
    # head's bias, it gives them back.
    assert output.slice_evidence.shape == (2, 6, NUM_FINDINGS)
    rebuilt = output.slice_evidence.sum(1) + model.head.bias
    assert torch.allclose(rebuilt, output.logits, atol=1e-4)


@pytest.mark.parametrize("name", ["tiny_siglip", "tiny_resnet3d"])
def test_gradients_reach_only_the_trainable_parts(name: str) -> None:
    model = build_model(name, "molre").train()
    _activate_experts(model)
    model(_volume()).logits.sum().backward()
    for parameter_name, parameter in model.named_parameters():
        added = is_router(parameter_name) or any(
            part in parameter_name for part in (".lora_", "feature_norm.", "pooling.", "head.")
        )
        if added:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, parameter_name
        else:
            assert parameter.grad is None, parameter_name


def test_probe_trains_only_pooling_and_head_and_full_trains_all() -> None:
    probe = build_model("tiny_dinov2", "probe")
    trainable = {n.split(".")[0] for n, p in probe.named_parameters() if p.requires_grad}
    assert trainable == {"feature_norm", "pooling", "head"}
    full = build_model("tiny_dinov2", "full")
    assert all(p.requires_grad for p in full.parameters())


def test_frozen_3d_backbone_keeps_batch_norm_statistics() -> None:
    model = build_model("tiny_resnet3d", "molre").train()
    before = model.backbone.encoder.bn1.running_mean.clone()
    model(_volume())
    assert not model.backbone.encoder.bn1.training
    assert torch.equal(model.backbone.encoder.bn1.running_mean, before)


def test_trainable_state_dict_round_trips() -> None:
    torch.manual_seed(0)
    trained = build_model("tiny_dinov2", "molre").eval()
    _activate_experts(trained)
    state = trained.trainable_state_dict()
    parts = (".lora_", "feature_norm.", "pooling.", "head.")
    assert state and all(is_router(n) or any(part in n for part in parts) for n in state)
    torch.manual_seed(0)  # the same random backbone, as a checkpoint folder would give
    fresh = build_model("tiny_dinov2", "molre").eval()
    fresh.load_trainable_state_dict(state)
    volume = _volume()
    assert torch.allclose(fresh(volume).logits, trained(volume).logits, atol=1e-6)
    with pytest.raises(ValueError, match="missing"):
        fresh.load_trainable_state_dict({k: v for k, v in state.items() if "head" not in k})
    assert set(build_model("tiny_dinov2", "full").trainable_state_dict()) >= {
        "backbone.encoder.embeddings.cls_token",
        "head.weight",
    }


def test_windows_map_hu_to_unit_range() -> None:
    windowing = HUWindowing(DEFAULT_WINDOWS)
    hu = torch.tensor([[[[40, -2000], [3000, 80]]]], dtype=torch.int16)  # [1, 1, 2, 2]
    channels = windowing(hu)[0, 0]  # brain, subdural, bone
    assert torch.allclose(channels[:, 0, 0], torch.tensor([0.5, 0.3, 0.3]))
    assert torch.allclose(channels[:, 0, 1], torch.zeros(3))
    assert torch.allclose(channels[:, 1, 0], torch.ones(3))


def test_padded_slices_get_no_attention() -> None:
    model = build_model("tiny_dinov2", "molre").eval()
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    output = model(_volume(), slice_mask=mask)
    assert torch.all(output.slice_attention[1, 4:] == 0)
    assert torch.all(output.slice_evidence[1, 4:] == 0)
    assert torch.allclose(output.slice_attention.sum(-1), torch.ones(2), atol=1e-6)


def test_adapter_and_config_must_agree() -> None:
    with pytest.raises(ValueError, match="experts=1"):
        build_model("tiny_dinov2", "lora", MoLREConfig(experts=4))
    with pytest.raises(ValueError, match="probe"):
        build_model("tiny_dinov2", "probe", MoLREConfig())
    with pytest.raises(ValueError, match="adapter"):
        build_model("tiny_dinov2", "prefix")  # type: ignore[arg-type]


def test_export_returns_the_same_gates_as_eager(tmp_path) -> None:
    """Gates leave through ``forward`` as outputs; torch.export and ONNX Runtime must reproduce
    them for inputs other than the traced one (another batch size and slice count)."""
    import onnxruntime

    torch.manual_seed(0)
    model = build_model("tiny_dinov2", "molre").eval()
    _activate_experts(model)
    traced, other = _volume(2, 6, seed=0), _volume(3, 5, seed=1)
    with torch.no_grad():
        expected = [model(traced), model(other)]
    assert not torch.allclose(expected[0].gates[0, 0], expected[0].gates[1, 1], atol=1e-4)

    batch, depth = torch.export.Dim("batch", max=64), torch.export.Dim("depth", min=2, max=256)
    program = torch.export.export(model, (traced,), dynamic_shapes={"volume": {0: batch, 1: depth}})
    for volume, eager in zip((traced, other), expected, strict=True):
        exported = program.module()(volume)
        assert torch.allclose(exported.gates, eager.gates, atol=1e-6)
        assert torch.allclose(exported.logits, eager.logits, atol=1e-5)

    path = tmp_path / "model.onnx"
    # No slice head: its output (slice_scores) is None, which the graph does not return.
    fields = [f for f in expected[0]._fields if getattr(expected[0], f) is not None]
    assert fields == [f for f in expected[0]._fields if f != "slice_scores"]
    torch.onnx.export(
        model, (traced,), path, dynamo=True, external_data=False, input_names=["CT_VOLUME"],
        output_names=fields,
        dynamic_shapes={"volume": {0: "batch", 1: "depth"}},
    )  # fmt: skip
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for volume, eager in zip((traced, other), expected, strict=True):
        outputs = dict(zip(fields, session.run(None, {"CT_VOLUME": volume.numpy()}), strict=True))
        np.testing.assert_allclose(outputs["gates"], eager.gates.numpy(), atol=1e-5)
        np.testing.assert_allclose(
            outputs["router_weights"], eager.router_weights.numpy(), atol=1e-5
        )
        np.testing.assert_allclose(outputs["probabilities"], eager.probabilities.numpy(), atol=1e-5)


def test_default_molre_adds_under_half_a_percent_to_vit_base() -> None:
    count = count_for("dinov2_base", "molre")
    assert 80_000_000 < count.backbone < 90_000_000
    assert 0 < count.added_fraction < 0.005


@pytest.mark.parametrize("adapter", ["probe", "molre"])
@pytest.mark.parametrize("name", ["tiny_dinov2", "tiny_resnet3d"])
def test_the_slice_head_adds_a_smooth_maximum_of_the_slices_scores(name: str, adapter: str) -> None:
    model = build_model(name, adapter, slice_head=True).eval()
    assert model.slice_head is not None
    torch.manual_seed(3)
    torch.nn.init.normal_(model.slice_head.weight, std=0.5)
    torch.nn.init.normal_(model.slice_head.bias)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False  # study 1 has four real slices and two padded ones
    with torch.no_grad():
        output = model(_volume(), mask)
        head = model.slice_head
        model.slice_head = None
        without = model(_volume(), mask)
        model.slice_head = head
    # The evidence still adds up to the logits, now less both heads' biases, and padded slices
    # still have none.
    rebuilt = output.slice_evidence.sum(1) + model.head.bias + head.bias
    assert torch.allclose(rebuilt, output.logits, atol=1e-4)
    assert output.slice_evidence[1, 4:].abs().max() == 0
    # What the slice head adds to a logit lies between the mean and the largest of the real
    # slices' scores for that finding (plus its bias): a softmax-weighted mean of them.
    added = output.logits - without.logits - head.bias
    share = output.slice_evidence - without.slice_evidence
    torch.testing.assert_close(share.sum(1), added, atol=1e-4, rtol=0)
    assert added.abs().sum() > 0
    if model.backbone.kind == "2d":
        # Each slice's score is the slice head on its raw features; the added logit is their
        # softmax-weighted mean over the real slices, so it lies between their mean and maximum.
        with torch.no_grad():
            raw = model.backbone(model.pixels(_volume())).unflatten(0, (2, 6))
        scores = raw @ head.weight.T
        real = scores[1, :4]
        expected = (torch.softmax(real, dim=0) * real).sum(0)
        torch.testing.assert_close(added[1], expected, atol=1e-4, rtol=0)
        assert (added[1] >= real.mean(0) - 1e-5).all() and (added[1] <= real.max(0).values).all()
        # SLICE_SCORES: each slice's score plus the head's bias, a logit of the slice alone.
        assert output.slice_scores is not None
        torch.testing.assert_close(output.slice_scores, scores + head.bias, atol=1e-4, rtol=0)
    assert without.slice_scores is None
    assert output.slice_scores is not None and output.slice_scores.shape == (2, 6, 75)


def test_the_slice_head_starts_from_the_pretraining_head(tmp_path: Path) -> None:
    model = build_model("tiny_dinov2", "probe", slice_head=True)
    assert model.slice_head is not None
    width = model.slice_head.in_features
    weight = torch.arange(2 * width, dtype=torch.float32).reshape(2, width) + 1
    save_file(
        {
            "findings.weight": weight.half(),
            "findings.bias": torch.tensor([0.5, -0.5]).half(),
            "position.weight": torch.zeros(8, width),
            "position.bias": torch.zeros(8),
        },
        tmp_path / PRETRAINING_HEADS,
    )
    card = {"findings": ["scalp_hematoma", "ich_any"]}
    (tmp_path / PRETRAINING_CARD).write_text(json.dumps(card))
    assert model.init_slice_head(tmp_path) == ["scalp_hematoma", "ich_any"]
    rows = [FINDING_CODES.index("scalp_hematoma"), FINDING_CODES.index("ich_any")]
    torch.testing.assert_close(model.slice_head.weight[rows], weight.half().float())
    torch.testing.assert_close(model.slice_head.bias[rows], torch.tensor([0.5, -0.5]))
    others = [i for i in range(NUM_FINDINGS) if i not in rows]
    assert model.slice_head.weight[others].abs().max() == 0  # the rest start at zero
    assert model.slice_head.bias[others].abs().max() == 0

    # A head of another width does not fit these features: it is left alone, and so is a
    # folder without one.
    narrow = build_model("tiny_dinov2", "probe", slice_head=True)
    save_file(
        {"findings.weight": torch.ones(2, width + 1), "findings.bias": torch.zeros(2)},
        tmp_path / PRETRAINING_HEADS,
    )
    assert narrow.init_slice_head(tmp_path) == []
    assert narrow.init_slice_head(tmp_path / "missing") == []
    assert narrow.slice_head is not None and narrow.slice_head.weight.abs().max() == 0


def test_the_committed_backbone_starts_the_slice_head_on_its_pretrained_findings() -> None:
    weights = Path(__file__).parents[2] / "training" / "weights" / "demo_vit"
    findings = json.loads((weights / PRETRAINING_CARD).read_text())["findings"]
    model = build_model("demo_vit", "molre", weights=weights, slice_head=True)
    assert model.slice_head is not None
    started = (model.slice_head.weight.abs().sum(1) > 0).nonzero().flatten().tolist()
    assert started == sorted(FINDING_CODES.index(code) for code in findings)
    assert model.adapter_summary()["slice_head"] is True
    plain = build_model("demo_vit", "molre", weights=weights)
    assert plain.slice_head is None and plain.adapter_summary()["slice_head"] is False
