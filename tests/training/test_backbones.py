"""The backbone registry: local checkpoints load and match, wrong ones fail clearly, and every
family resolves MoLRE's target roles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.backbones import (
    FAMILIES,
    REGISTRY,
    BackboneWeightsError,
    create_backbone,
)
from training.molre import MoLREConfig
from training.molre.injector import inject_molre

TINY = ("tiny_dinov2", "tiny_dinov3", "tiny_siglip", "tiny_resnet3d")


def _input(name: str) -> torch.Tensor:
    backbone_input = (2, 3, 32, 32) if REGISTRY[name].family != "resnet3d" else (1, 3, 8, 32, 32)
    return torch.randn(*backbone_input)


@pytest.mark.parametrize("name", TINY)
def test_saved_checkpoint_loads_and_matches(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = create_backbone(name).eval()
    assert not original.pretrained
    original.save_pretrained(tmp_path)
    loaded = create_backbone(name, weights=tmp_path).eval()
    assert loaded.pretrained
    pixels = _input(name)
    with torch.no_grad():
        expected, actual = original(pixels), loaded(pixels)
    assert expected.shape[-1] == original.feature_dim
    assert torch.allclose(actual, expected, atol=1e-6)


def test_patch_max_features_keep_one_bright_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``patch_max`` the slice feature is [CLS, patch mean, patch max]: one outlying patch
    token moves the max by its full value and the mean by 1/patches of it."""
    from dataclasses import replace

    monkeypatch.setitem(REGISTRY, "tiny_max", replace(REGISTRY["tiny_dinov2"], patch_max=True))
    torch.manual_seed(0)
    plain = create_backbone("tiny_dinov2").eval()
    with_max = create_backbone("tiny_max", weights=None).eval()
    with_max.encoder.load_state_dict(plain.encoder.state_dict())
    hidden = plain.encoder.config.hidden_size
    assert with_max.feature_dim == 3 * hidden == plain.feature_dim * 3 // 2
    tokens = torch.zeros(1, 1 + 16, hidden)
    tokens[0, 5] = 8.0  # one patch token

    class Encoder(torch.nn.Module):
        def forward(self, pixel_values: torch.Tensor) -> object:
            return type("Out", (), {"last_hidden_state": tokens})()

    trained_encoder = with_max.encoder
    with_max.encoder = Encoder()
    features = with_max(torch.zeros(1, 3, 32, 32))[0]
    with_max.encoder = trained_encoder
    assert torch.allclose(features[hidden : 2 * hidden], torch.full((hidden,), 0.5))
    assert torch.allclose(features[2 * hidden :], torch.full((hidden,), 8.0))
    pixels = _input("tiny_dinov2")
    with torch.no_grad():  # the same encoder: the first two parts are the plain features
        assert torch.allclose(with_max(pixels)[:, : 2 * hidden], plain(pixels), atol=1e-6)


def test_conv_stem_checkpoint_round_trips_with_its_batch_norm_statistics(tmp_path: Path) -> None:
    """A stemmed DINOv2 keeps the plain model's token grid, and its folder (written by HF's
    save_pretrained) reloads the stem's weights and batch-norm statistics exactly."""
    from training.backbones import ConvStem

    torch.manual_seed(0)
    stemmed = create_backbone("tiny_dinov2_conv")
    plain = create_backbone("tiny_dinov2")
    stem = stemmed.encoder.embeddings.patch_embeddings.projection
    assert isinstance(stem, ConvStem)
    pixels = _input("tiny_dinov2_conv")
    with torch.no_grad():
        stemmed.train()(pixels * 3 + 1)  # moves the running statistics off 0 and 1
        grid = stem(pixels).shape
        assert grid == plain.encoder.embeddings.patch_embeddings.projection(pixels).shape
    stemmed.eval().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["conv_stem"] == [8, 16, 32]
    loaded = create_backbone("tiny_dinov2_conv", weights=tmp_path).eval()
    norm = loaded.encoder.embeddings.patch_embeddings.projection.layers[1]
    assert norm.running_mean.abs().sum() > 0
    assert torch.equal(norm.running_mean, stem.layers[1].running_mean)
    with torch.no_grad():
        assert torch.allclose(loaded(pixels), stemmed(pixels), atol=1e-6)


@pytest.mark.parametrize(
    ("saved", "loaded"), [("tiny_dinov2", "tiny_dinov2_conv"), ("tiny_dinov2_conv", "tiny_dinov2")]
)
def test_stemmed_and_plain_checkpoints_do_not_load_into_each_other(
    saved: str, loaded: str, tmp_path: Path
) -> None:
    create_backbone(saved).save_pretrained(tmp_path)
    with pytest.raises(BackboneWeightsError, match="conv_stem") as error:
        create_backbone(loaded, weights=tmp_path)
    assert str(tmp_path) in str(error.value)


def test_molre_adapts_a_conv_stem_at_its_last_1x1_convolution() -> None:
    """The stem's patch-embedding role is its 1x1 ``out`` convolution (a 1 px "patch"), routed on
    the image mean of the stem's features: the experts change the output, per input."""
    from training.molre.layer import MoLREPatchConv

    torch.manual_seed(0)
    backbone = create_backbone("tiny_dinov2_conv").eval()
    pixels = _input("tiny_dinov2_conv")
    with torch.no_grad():
        before = backbone(pixels)
    wrapped = inject_molre(backbone, MoLREConfig(experts=4, rank=2))
    stem_targets = [n for n in wrapped if "patch_embeddings" in n]
    assert stem_targets == ["encoder.embeddings.patch_embeddings.projection.out"]
    layer = backbone.encoder.get_submodule(stem_targets[0].removeprefix("encoder."))
    assert isinstance(layer, MoLREPatchConv) and layer.patch == (1, 1)
    with torch.no_grad():
        assert torch.allclose(backbone(pixels), before, atol=1e-6)  # B starts at zero
        for _, module in backbone.named_modules():
            if isinstance(module, MoLREPatchConv):
                module.lora_B.normal_()
        after = backbone(pixels)
    assert not torch.allclose(after, before, atol=1e-3)
    gates = layer.last_gates
    assert gates is not None and gates.shape == (2, 4)
    assert not torch.allclose(gates[0], gates[1])


def test_checkpoint_of_another_family_is_rejected(tmp_path: Path) -> None:
    create_backbone("tiny_dinov2").save_pretrained(tmp_path)
    with pytest.raises(BackboneWeightsError, match=str(tmp_path)) as error:
        create_backbone("tiny_siglip", weights=tmp_path)
    assert "dinov2" in str(error.value)


def test_checkpoint_with_another_hidden_size_is_rejected(tmp_path: Path) -> None:
    from transformers import Dinov2Config, Dinov2Model

    architecture = REGISTRY["tiny_dinov2"].architecture | {"hidden_size": 48}
    Dinov2Model(Dinov2Config(**architecture)).save_pretrained(tmp_path)
    with pytest.raises(BackboneWeightsError, match=str(tmp_path)) as error:
        create_backbone("tiny_dinov2", weights=tmp_path)
    assert "hidden_size 48 (expected 32)" in str(error.value)


def test_3d_checkpoint_with_other_widths_is_rejected(tmp_path: Path) -> None:
    create_backbone("tiny_resnet3d").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["block_inplanes"] = [8, 16, 32, 64]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(BackboneWeightsError, match="block_inplanes"):
        create_backbone("tiny_resnet3d", weights=tmp_path)


@pytest.mark.parametrize("name", ["tiny_dinov3", "tiny_resnet3d"])
def test_missing_weights_folder_is_an_error_naming_it(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_checkpoint"
    with pytest.raises(BackboneWeightsError, match="no_such_checkpoint"):
        create_backbone(name, weights=missing)


def test_unknown_backbone_name_lists_the_registered_ones() -> None:
    with pytest.raises(KeyError, match="dinov2_base"):
        create_backbone("dinov5_huge")


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_backbone_resolves_its_target_roles(name: str) -> None:
    """Built on the meta device: full-size architectures without allocating their weights."""
    with torch.device("meta"):
        backbone = create_backbone(name)
        roles = tuple(FAMILIES[REGISTRY[name].family].target_patterns)
        wrapped = inject_molre(backbone, MoLREConfig(target_modules=roles))
    if backbone.kind == "2d":
        assert backbone.default_targets == ("patch_embedding", "q", "v")
        layers = backbone.encoder.config.num_hidden_layers
        assert len(wrapped) == 1 + layers * 6  # patch + q, k, v, o + two MLP projections
    else:
        assert wrapped == ["projection"]
    assert backbone.input_size > 0 and backbone.feature_dim > 0
    assert len(backbone.mean) == len(backbone.std) == 3


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline Hugging Face cache laid out as the hub client writes it:
    models--OWNER--NAME/{refs/main, snapshots/<commit>/...}."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _cache_model(cache: Path, repo_id: str, name: str) -> Path:
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    create_backbone(name).save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_hub_model_id_loads_from_the_cache_with_the_same_checks(hub_cache: Path) -> None:
    from training.runs import weights_sha256

    torch.manual_seed(0)
    snapshot = _cache_model(hub_cache, "acme/tiny-dino", "tiny_dinov2")
    from_hub = create_backbone("tiny_dinov2", weights="acme/tiny-dino").eval()
    from_folder = create_backbone("tiny_dinov2", weights=snapshot).eval()
    assert from_hub.pretrained
    pixels = _input("tiny_dinov2")
    with torch.no_grad():
        assert torch.equal(from_hub(pixels), from_folder(pixels))
    assert weights_sha256("acme/tiny-dino") == weights_sha256(str(snapshot))
    # The architecture check applies to a hub checkpoint as to a folder.
    _cache_model(hub_cache, "acme/tiny-siglip", "tiny_siglip")
    with pytest.raises(BackboneWeightsError, match="dinov2"):
        create_backbone("tiny_dinov2", weights="acme/tiny-siglip")


def test_hub_model_id_missing_from_an_offline_cache_is_a_clear_error(hub_cache: Path) -> None:
    with pytest.raises(BackboneWeightsError, match=r"acme/not-cached.*HF_HUB_CACHE"):
        create_backbone("tiny_dinov2", weights="acme/not-cached")
