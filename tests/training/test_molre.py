"""MoLRE config, expert layers and injector: the maths by hand, against PEFT's LoRA, and on a
tiny backbone."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from training.backbones import create_backbone
from training.model import HeadCTModel, is_router
from training.molre import MoLREConfig
from training.molre.injector import expert_layers, inject_molre
from training.molre.layer import MoLRELinear, MoLREPatchConv


def test_config_round_trips_through_json() -> None:
    config = MoLREConfig(experts=3, rank=4, alpha=8.0, target_modules=("q", "v"))
    again = MoLREConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    assert again.scaling == 2.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("experts", 0),
        ("rank", 0),
        ("alpha", -1.0),
        ("dropout", 1.0),
        ("router_temperature", 0.0),
        ("load_balancing_weight", -0.1),
        ("target_modules", ()),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        MoLREConfig(**{field: value})


def test_config_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="rnak"):
        MoLREConfig.from_dict({"rnak": 4})


def _hand_layer(temperature: float) -> MoLRELinear:
    """3 -> 2 linear, zero base, two rank-1 experts: A_1 = e1, A_2 = e2, B_1 = e1, B_2 = e2, and
    a router that ignores its input with logits (0, ln 3)."""
    base = nn.Linear(3, 2)
    config = MoLREConfig(
        experts=2,
        rank=1,
        alpha=2.0,
        dropout=0.0,
        router_temperature=temperature,
        router="per_layer",
    )
    layer = MoLRELinear(base, config)
    with torch.no_grad():
        base.weight.zero_()
        base.bias.zero_()
        layer.lora_A.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
        layer.lora_B.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        assert layer.router is not None
        layer.router.proj.weight.zero_()
        layer.router.proj.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    return layer


@pytest.mark.parametrize(
    ("temperature", "gates", "expected"),
    # gates = softmax((0, ln 3) / T); out = (alpha/r) * (g1 * [x1, 0] + g2 * [0, x2]), x = (1, 2, 3)
    [(1.0, (0.25, 0.75), (0.5, 3.0)), (0.5, (0.1, 0.9), (0.2, 3.6))],
)
def test_linear_experts_match_hand_computation(
    temperature: float, gates: tuple[float, float], expected: tuple[float, float]
) -> None:
    layer = _hand_layer(temperature)
    x = torch.tensor([[[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]])  # one item, two identical tokens
    out = layer(x)
    assert torch.allclose(layer.last_gates, torch.tensor([gates]), atol=1e-6)
    assert torch.allclose(out, torch.tensor([[expected, expected]]), atol=1e-6)


def test_linear_experts_match_a_per_expert_loop() -> None:
    torch.manual_seed(0)
    config = MoLREConfig(
        experts=3, rank=2, alpha=3.0, dropout=0.0, router_temperature=0.7, router="per_layer"
    )
    layer = MoLRELinear(nn.Linear(5, 4), config)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 7, 5)  # two items of seven tokens
    assert layer.router is not None
    layer.eval()  # the router's input statistics stay as they are
    layer.router.norm.running_mean.copy_(torch.randn(5))
    layer.router.norm.running_var.copy_(torch.rand(5) + 0.5)
    norm = layer.router.norm
    standardised = (x.mean(dim=1) - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
    gates = torch.softmax(layer.router.proj(standardised) / 0.7, dim=-1)
    expected = layer.base_layer(x)
    for k in range(3):
        rows = slice(2 * k, 2 * k + 2)
        update = x @ layer.lora_A[rows].T @ layer.lora_B[:, rows].T
        expected = expected + (3.0 / 2) * gates[:, k, None, None] * update
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert torch.allclose(layer.last_gates, gates, atol=1e-6)


def test_patch_convolution_experts_equal_linear_experts_on_flattened_patches() -> None:
    torch.manual_seed(0)
    config = MoLREConfig(experts=2, rank=3, alpha=6.0, dropout=0.0, router="per_layer")
    conv = MoLREPatchConv(nn.Conv2d(3, 8, kernel_size=4, stride=4), config)
    nn.init.normal_(conv.lora_B)
    linear = MoLRELinear(nn.Linear(3 * 16, 8), config)
    with torch.no_grad():
        linear.base_layer.weight.copy_(conv.base_layer.weight.flatten(1))
        linear.base_layer.bias.copy_(conv.base_layer.bias)
        linear.lora_A.copy_(conv.lora_A.flatten(1))
        linear.lora_B.copy_(conv.lora_B)
        linear.router.load_state_dict(conv.router.state_dict())
    images = torch.randn(2, 3, 8, 12)
    patches = F.unfold(images, kernel_size=4, stride=4).transpose(1, 2)  # [2, 6 patches, 48]
    expected = linear(patches).transpose(1, 2).reshape(2, 8, 2, 3)
    assert torch.allclose(conv(images), expected, atol=1e-5)
    assert torch.allclose(conv.last_gates, linear.last_gates, atol=1e-6)


def test_non_patch_convolution_is_rejected() -> None:
    with pytest.raises(ValueError, match="patch embedding"):
        MoLREPatchConv(nn.Conv2d(3, 8, kernel_size=3, padding=1), MoLREConfig())


class _TinyViTPieces(nn.Module):
    """A patch embedding and two projections, enough to compare with PEFT."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 6, kernel_size=4, stride=4)
        self.q = nn.Linear(6, 6)
        self.v = nn.Linear(6, 6)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(images).flatten(2).transpose(1, 2)
        return self.v(torch.relu(self.q(tokens)))


def test_one_expert_equals_peft_lora() -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    original = _TinyViTPieces()
    peft_model = get_peft_model(
        copy.deepcopy(original),
        LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["patch", "q", "v"]),
    )
    ours = copy.deepcopy(original)
    config = MoLREConfig(
        experts=1, rank=4, alpha=8.0, dropout=0.0, target_modules=("patch", "q", "v")
    )
    assert inject_molre(ours, config) == ["patch", "q", "v"]
    with torch.no_grad():
        for name in ("patch", "q", "v"):
            peft_layer = peft_model.base_model.model.get_submodule(name)
            nn.init.normal_(peft_layer.lora_B["default"].weight)  # PEFT also starts B at zero
            layer = ours.get_submodule(name)
            assert layer.router is None
            layer.lora_A.copy_(peft_layer.lora_A["default"].weight)
            layer.lora_B.copy_(peft_layer.lora_B["default"].weight.flatten(1))
    images = torch.randn(3, 3, 8, 8)
    assert not torch.allclose(peft_model(images), original(images), atol=1e-3)
    assert torch.allclose(ours(images), peft_model(images), atol=1e-6)


def test_zero_initialised_experts_leave_the_backbone_unchanged() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("tiny_dinov2")
    original = copy.deepcopy(backbone)
    names = inject_molre(
        backbone,
        MoLREConfig(
            target_modules=("patch_embedding", "q", "k", "v", "o", "mlp"), router="per_layer"
        ),
    )
    assert len(names) == 1 + 2 * 6
    pixels = torch.randn(4, 3, 32, 32)
    assert torch.allclose(backbone(pixels), original(pixels), atol=1e-6)


def test_injector_freezes_the_backbone_and_trains_only_experts() -> None:
    backbone = create_backbone("tiny_siglip")
    inject_molre(backbone, MoLREConfig())
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable
    assert all(".lora_" in n or ".router." in n for n in trainable)


def test_gates_sum_to_one_and_differ_between_slices() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("tiny_dinov3")
    inject_molre(backbone, MoLREConfig(experts=4, router="per_layer"))
    pixels = torch.randn(5, 3, 32, 32) * torch.arange(1, 6).view(5, 1, 1, 1)
    backbone(pixels)
    for _, layer in expert_layers(backbone):
        gates = layer.last_gates
        assert gates.shape == (5, 4)
        assert torch.allclose(gates.sum(-1), torch.ones(5), atol=1e-6)
        assert (gates.max(0).values - gates.min(0).values).max() > 1e-4


def test_unknown_target_is_an_error_naming_it() -> None:
    with pytest.raises(ValueError, match="attention_typo"):
        inject_molre(
            create_backbone("tiny_dinov2"), MoLREConfig(target_modules=("attention_typo",))
        )


def test_injecting_twice_is_an_error() -> None:
    backbone = create_backbone("tiny_dinov2")
    inject_molre(backbone, MoLREConfig())
    with pytest.raises(ValueError, match="already"):
        inject_molre(backbone, MoLREConfig())


def test_role_the_family_lacks_is_an_error() -> None:
    with pytest.raises(ValueError, match="projection"):
        inject_molre(create_backbone("tiny_dinov2"), MoLREConfig(target_modules=("projection",)))


def test_non_adaptable_target_is_rejected_before_anything_changes() -> None:
    backbone = create_backbone("tiny_dinov2")
    with pytest.raises(ValueError, match="LayerNorm"):
        inject_molre(backbone, MoLREConfig(target_modules=(r"layer\.0\.norm1",)))
    assert not expert_layers(backbone)
    assert all(p.requires_grad for p in backbone.parameters())


def test_router_reads_the_differences_between_inputs_not_their_common_offset() -> None:
    """The summaries a router reads share a large offset (demo v1's router saw nearly the same
    vector for every slice and gave the same gates). Standardised by running statistics, small
    differences between inputs move the gates from the first step on."""
    torch.manual_seed(0)
    layer = MoLRELinear(nn.Linear(64, 64), MoLREConfig(experts=4, rank=2, router="per_layer"))
    offset = 5.0 * torch.randn(64)
    x = offset + 0.01 * torch.randn(32, 10, 64)  # 32 slices that differ by 1/500 of the offset
    layer.train()
    layer(x)
    assert layer.last_gates is not None
    assert layer.last_gates.std(dim=0).min() > 0.05  # every expert's gate varies across slices
    raw = torch.softmax(layer.router.proj(x.mean(dim=1)), dim=-1)
    assert raw.std(dim=0).max() < 0.01  # the same router on the raw summary: a constant


def test_router_statistics_learn_in_training_only_and_travel_with_the_trainable_state() -> None:
    torch.manual_seed(0)
    model = HeadCTModel(create_backbone("tiny_dinov2"), adapter="molre")
    volume = torch.randint(-1000, 1000, (2, 3, 32, 32)).float()
    model.train()
    model(volume)
    state = model.trainable_state_dict()
    norms = [k for k in state if is_router(k) and k.endswith("norm.running_mean")]
    assert norms and all(state[k].abs().sum() > 0 for k in norms)
    model.eval()
    before = {k: state[k].clone() for k in norms}
    model(volume + 100)
    assert all(torch.equal(model.trainable_state_dict()[k], before[k]) for k in norms)
    torch.manual_seed(0)  # the same initialisation: only the learnt statistics differ
    other = HeadCTModel(create_backbone("tiny_dinov2"), adapter="molre").eval()
    assert not torch.allclose(other(volume).router_weights, model(volume).router_weights)
    other.load_trainable_state_dict(model.trainable_state_dict())
    assert torch.allclose(other(volume).router_weights, model(volume).router_weights, atol=1e-6)


def _shared_model(temperature: float = 1.0) -> HeadCTModel:
    torch.manual_seed(0)
    model = HeadCTModel(
        create_backbone("tiny_dinov2"),
        adapter="molre",
        molre=MoLREConfig(experts=4, router_temperature=temperature, router="shared"),
    )
    for _, layer in expert_layers(model.backbone):
        nn.init.normal_(layer.lora_B, std=0.5)  # experts that change the output
    return model


def test_shared_router_reads_the_frozen_backbone_and_drives_every_layer_alike() -> None:
    """The shared router: one per model, on each slice's frozen features (the backbone with the
    experts off), its gates the same in every adapted layer, so expert k is one expert."""
    model = _shared_model().eval()
    assert model.molre is not None and model.molre.router == "shared"
    assert model.router is not None
    assert all(layer.router is None for layer in model._expert_layers)
    volume = torch.randint(-1000, 1000, (2, 5, 32, 32)).float()
    out = model(volume)
    assert out.gates.shape[:2] == (2, 5) and out.gates.shape[2] == len(model._expert_layers)
    assert torch.allclose(out.gates, out.gates[:, :, :1].expand_as(out.gates))
    assert torch.allclose(out.gates.sum(-1), torch.ones(out.gates.shape[:-1]), atol=1e-6)
    assert out.slice_router_weights.std(dim=1).min() > 1e-3  # slices route differently
    # The router's input is exactly the frozen backbone: the same weights without experts.
    pixels = model.pixels(volume)
    torch.manual_seed(0)
    plain = create_backbone("tiny_dinov2").eval()
    frozen = plain(pixels)
    expected = model.router(frozen).unflatten(0, (2, 5))
    assert torch.allclose(out.slice_router_weights, expected, atol=1e-5)
    # Nothing of this forward stays on the layers.
    assert all(layer.routed_gates is None and layer.enabled for layer in model._expert_layers)


def test_shared_router_learns_from_the_task_and_not_the_frozen_pass() -> None:
    model = _shared_model().train()
    volume = torch.randint(-1000, 1000, (2, 4, 32, 32)).float()
    model(volume).logits.sum().backward()
    assert model.router is not None
    assert model.router.proj.weight.grad is not None
    assert model.router.proj.weight.grad.abs().sum() > 0
    frozen = [p for n, p in model.backbone.named_parameters() if not p.requires_grad]
    assert frozen and all(p.grad is None for p in frozen)
    state = model.trainable_state_dict()
    assert {"router.proj.weight", "router.norm.running_mean"} <= set(state)


def test_a_layer_of_a_shared_router_refuses_to_run_without_its_gates() -> None:
    layer = MoLRELinear(nn.Linear(8, 8), MoLREConfig(experts=2, router="shared"))
    with pytest.raises(RuntimeError, match="routed_gates"):
        layer(torch.randn(3, 4, 8))


def test_the_router_is_per_layer_by_default_and_shared_only_on_2d_backbones() -> None:
    default = HeadCTModel(create_backbone("tiny_siglip"), adapter="molre")
    assert default.molre is not None and default.molre.router == "per_layer"
    assert default.router is None and all(x.router is not None for x in default._expert_layers)
    assert default.adapter_summary()["router"] == "per_layer"
    with pytest.raises(ValueError, match="3D backbone"):
        HeadCTModel(
            create_backbone("tiny_resnet3d"), adapter="molre", molre=MoLREConfig(router="shared")
        )
    with pytest.raises(ValueError, match="router must be one of"):
        MoLREConfig(router="global")
