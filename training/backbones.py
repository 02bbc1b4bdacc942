"""Foundation backbones by name: ``create_backbone("dinov3_base", weights=Path(...))``.

2D backbones (DINOv2, DINOv3, SigLIP: MedGemma's image encoder is a SigLIP so400m) are HF
``transformers`` modules built from their architecture and run on each CT slice; the 3D one is
MONAI's ResNet-18 run on the whole volume. Weights come from a local folder in the format
``save_pretrained`` writes (``config.json`` + ``model.safetensors``) or from a hub model id
(``facebook/dinov2-base``) through the Hugging Face cache (see ``resolve_weights``); without them
the backbone is randomly initialised and says so (``pretrained`` is False, and a warning is
logged).

Each family also names, per MoLRE target role (``q``, ``patch_embedding``...), the regular
expression of its modules, so one ``MoLREConfig`` resolves on every family. The ``tiny_*`` entries
are test-sized models of each kind.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch
from torch import nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# SigLIP's normalisation (pixels to [-1, 1]); the 3D ResNet uses it too.
CENTRED_MEAN = (0.5, 0.5, 0.5)
CENTRED_STD = (0.5, 0.5, 0.5)


class BackboneWeightsError(ValueError):
    """A weights folder that is missing, unreadable, or holds another architecture."""


class SliceBackbone(Protocol):
    """What the model needs of a backbone. 2D: ``forward(pixels [N, 3, S, S]) -> [N, F]`` (one
    vector per slice). 3D: ``forward(volume [B, 3, D, S, S]) -> [B, D', F]`` (one vector per
    depth position of the feature map)."""

    name: str
    kind: Literal["2d", "3d"]
    feature_dim: int
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    default_targets: tuple[str, ...]
    target_patterns: dict[str, str]
    pretrained: bool
    encoder: nn.Module

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def save_pretrained(self, path: Path) -> None: ...


@dataclass(frozen=True)
class _Family:
    """How to build, load, check and adapt one kind of backbone."""

    model_types: tuple[str, ...]  # ``model_type`` values a checkpoint of this family may carry
    checked_fields: tuple[str, ...]  # architecture fields a checkpoint must match
    target_patterns: dict[str, str]
    default_targets: tuple[str, ...]
    config_overrides: dict[str, Any] = field(default_factory=dict)


_VIT_DEFAULT_TARGETS = ("patch_embedding", "q", "v")

FAMILIES: dict[str, _Family] = {
    "dinov2": _Family(
        model_types=("dinov2",),
        checked_fields=(
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "mlp_ratio",
            "patch_size",
            "image_size",
            "num_channels",
            "use_swiglu_ffn",
            "qkv_bias",
        ),
        target_patterns={
            "patch_embedding": r"embeddings\.patch_embeddings\.projection",
            "q": r"encoder\.layer\.\d+\.attention\.q_proj",
            "k": r"encoder\.layer\.\d+\.attention\.k_proj",
            "v": r"encoder\.layer\.\d+\.attention\.v_proj",
            "o": r"encoder\.layer\.\d+\.attention\.o_proj",
            "mlp": r"encoder\.layer\.\d+\.mlp\.(fc1|fc2|weights_in|weights_out)",
        },
        default_targets=_VIT_DEFAULT_TARGETS,
    ),
    "dinov3": _Family(
        model_types=("dinov3_vit",),
        checked_fields=(
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "patch_size",
            "num_channels",
            "num_register_tokens",
            "use_gated_mlp",
            "key_bias",
        ),
        target_patterns={
            "patch_embedding": r"embeddings\.patch_embeddings",
            "q": r"layer\.\d+\.attention\.q_proj",
            "k": r"layer\.\d+\.attention\.k_proj",
            "v": r"layer\.\d+\.attention\.v_proj",
            "o": r"layer\.\d+\.attention\.o_proj",
            "mlp": r"layer\.\d+\.mlp\.(up_proj|down_proj|gate_proj)",
        },
        default_targets=_VIT_DEFAULT_TARGETS,
    ),
    "siglip": _Family(
        model_types=("siglip_vision_model", "siglip"),
        checked_fields=(
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "patch_size",
            "image_size",
            "num_channels",
        ),
        target_patterns={
            "patch_embedding": r"embeddings\.patch_embedding",
            "q": r"encoder\.layers\.\d+\.self_attn\.q_proj",
            "k": r"encoder\.layers\.\d+\.self_attn\.k_proj",
            "v": r"encoder\.layers\.\d+\.self_attn\.v_proj",
            "o": r"encoder\.layers\.\d+\.self_attn\.out_proj",
            "mlp": r"encoder\.layers\.\d+\.mlp\.(fc1|fc2)",
        },
        default_targets=_VIT_DEFAULT_TARGETS,
        # Features are the mean of the final tokens, as MedGemma reads them; a checkpoint's
        # attention-pooling head, if any, is left out.
        config_overrides={"vision_use_head": False},
    ),
    "resnet3d": _Family(
        model_types=("headct_resnet3d",),
        checked_fields=("layers", "block_inplanes", "n_input_channels", "conv1_t_size"),
        target_patterns={"projection": r"projection"},
        default_targets=("projection",),
    ),
}


@dataclass(frozen=True)
class BackboneSpec:
    """One registered backbone: its family, architecture and preprocessing."""

    family: str
    architecture: dict[str, Any]
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # DINOv2/DINOv3 slice features: the CLS token and the mean of the patch tokens, and with
    # ``patch_max`` also their elementwise max (a small focal lesion moves a few patches: the max
    # keeps it, the mean dilutes it by the patch count).
    patch_max: bool = False
    # A convolutional stem in place of the patch projection (DINOv2 only): one stride-2 3x3
    # convolution (batch norm, ReLU) per width, then a 1x1 convolution to the hidden size. The
    # strides multiply to the patch size, so the tokens are the same; a stem sees edges and small
    # blobs that a single 16 px linear patch map averages away (Xiao et al., 2021, "Early
    # convolutions help transformers see better").
    conv_stem: tuple[int, ...] = ()


def _vit(hidden: int, layers: int, heads: int, **extra: Any) -> dict[str, Any]:
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
    } | extra


# DINOv2 checkpoints carry image_size 518 (their position-embedding grid); they run at 224 by
# interpolating it. DINOv3 uses RoPE and four register tokens. The so400m entry is MedGemma's
# encoder (896 px grid, no pooling head), run at 448 px with interpolated position embeddings:
# a 256 px CT grid gains nothing from 896 px slices, and it costs 4x the tokens.
REGISTRY: dict[str, BackboneSpec] = {
    "dinov2_small": BackboneSpec("dinov2", _vit(384, 12, 6, patch_size=14, image_size=518), 224),
    "dinov2_base": BackboneSpec("dinov2", _vit(768, 12, 12, patch_size=14, image_size=518), 224),
    "dinov2_large": BackboneSpec("dinov2", _vit(1024, 24, 16, patch_size=14, image_size=518), 224),
    "dinov3_small": BackboneSpec(
        "dinov3", _vit(384, 12, 6, intermediate_size=1536, num_register_tokens=4), 224
    ),
    "dinov3_base": BackboneSpec(
        "dinov3", _vit(768, 12, 12, intermediate_size=3072, num_register_tokens=4), 224
    ),
    "siglip_base": BackboneSpec(
        "siglip",
        _vit(768, 12, 12, intermediate_size=3072, patch_size=16, image_size=224),
        224,
        CENTRED_MEAN,
        CENTRED_STD,
    ),
    "siglip_so400m": BackboneSpec(
        "siglip",
        _vit(1152, 27, 16, intermediate_size=4304, patch_size=14, image_size=896),
        448,
        CENTRED_MEAN,
        CENTRED_STD,
    ),
    "resnet3d_18": BackboneSpec(
        "resnet3d",
        {"layers": [2, 2, 2, 2], "block_inplanes": [64, 128, 256, 512]},
        224,
        CENTRED_MEAN,
        CENTRED_STD,
    ),
    # The demo model's backbone: small enough to pretrain from scratch on synthetic studies on a
    # 2-core CPU in minutes, standing in for a foundation model that cannot be downloaded here.
    "demo_dinov2": BackboneSpec(
        "dinov2", _vit(128, 4, 4, mlp_ratio=2, patch_size=16, image_size=128), 128
    ),
    # The demo model's backbone: a ViT-Tiny-sized DINOv2 (hidden 192, 6 blocks, 3 heads) on the
    # 128 px grid in 16 px patches, pretrained by ``headct pretrain`` on streamed phantoms with
    # slice-level targets (training/weights/demo_vit holds the result).
    "demo_vit": BackboneSpec(
        "dinov2", _vit(192, 6, 3, mlp_ratio=4, patch_size=16, image_size=128), 128
    ),
    # A candidate for demo model v3: 8 px patches (15 mm at the 1.875 mm grid, 256 tokens a slice)
    # for the small focal signatures that 16 px patches (30 mm) average away, made affordable by
    # a narrower, shallower encoder (0.59M parameters; 43 against 64 slices/s for demo_vit in a
    # training step on 2 cores). Not pretrained yet: the committed weights are demo_vit's.
    "demo_vit_p8": BackboneSpec(
        "dinov2", _vit(128, 4, 4, mlp_ratio=2, patch_size=8, image_size=128), 128
    ),
    # Demo model v3's backbone: demo_vit's encoder whose slice features add the max over patch
    # tokens to the CLS token and the patch mean (576 wide), as the ceiling's CNN pools with mean
    # and max: pretrained alike, demo_vit trailed that CNN by about 0.1 study macro AUC.
    "demo_vit_max": BackboneSpec(
        "dinov2",
        _vit(192, 6, 3, mlp_ratio=4, patch_size=16, image_size=128),
        128,
        patch_max=True,
    ),
    # A candidate for demo model v8: demo_vit with a convolutional stem (24, 48, 96, 192 wide,
    # 0.26M parameters) instead of its 16 px patch projection. Pretrained alike for 1,500 steps
    # without a teacher it reached study macro AUC 0.682 against demo_vit's 0.651
    # (bench/results/demo_model/candidates/v7_measurements).
    "demo_vit_conv": BackboneSpec(
        "dinov2",
        _vit(192, 6, 3, mlp_ratio=4, patch_size=16, image_size=128),
        128,
        conv_stem=(24, 48, 96, 192),
    ),
    "tiny_dinov2": BackboneSpec(
        "dinov2", _vit(32, 2, 2, mlp_ratio=2, patch_size=8, image_size=32), 32
    ),
    "tiny_dinov2_conv": BackboneSpec(
        "dinov2",
        _vit(32, 2, 2, mlp_ratio=2, patch_size=8, image_size=32),
        32,
        conv_stem=(8, 16, 32),
    ),
    "tiny_dinov3": BackboneSpec(
        "dinov3",
        _vit(32, 2, 2, intermediate_size=64, patch_size=8, image_size=32, num_register_tokens=2),
        32,
    ),
    "tiny_siglip": BackboneSpec(
        "siglip",
        _vit(32, 2, 2, intermediate_size=64, patch_size=8, image_size=32),
        32,
        CENTRED_MEAN,
        CENTRED_STD,
    ),
    "tiny_resnet3d": BackboneSpec(
        "resnet3d",
        {"layers": [1, 1, 1, 1], "block_inplanes": [8, 16, 32, 32]},
        32,
        CENTRED_MEAN,
        CENTRED_STD,
    ),
}


def backbone_names() -> list[str]:
    return list(REGISTRY)


# A hub model id: "owner/name" (letters, digits, "-", "_", "."), never an existing path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_weights(weights: str | Path) -> Path:
    """The local folder of ``weights``: itself when it is a path that exists (or does not look
    like a hub id), else the snapshot of the hub model id ``owner/name`` in the Hugging Face cache
    (``HF_HUB_CACHE``), fetched through ``huggingface_hub`` when the hub can be reached and read
    from the cache alone when it cannot (or with ``HF_HUB_OFFLINE=1``). Only the config and the
    safetensors weights are fetched. The snapshot then goes through the same architecture check
    as a local folder."""
    path = Path(weights)
    text = str(weights)
    if path.exists() or not _HUB_ID.match(text):
        return path
    from huggingface_hub import snapshot_download

    patterns = ["config.json", "*.safetensors", "*.safetensors.index.json"]
    try:
        return Path(snapshot_download(text, allow_patterns=patterns))
    except Exception as online_error:  # no network, no such repo, gated...: try the cache alone
        try:
            return Path(snapshot_download(text, allow_patterns=patterns, local_files_only=True))
        except Exception as error:
            raise BackboneWeightsError(
                f"weights {text!r} is not a local folder, and the hub model {text!r} is neither "
                f"reachable ({type(online_error).__name__}) nor in the Hugging Face cache "
                f"({type(error).__name__}): download it where the hub is reachable (the cache "
                "is HF_HUB_CACHE), or give the folder that save_pretrained wrote"
            ) from error


def create_backbone(name: str, *, weights: Path | str | None = None) -> SliceBackbone:
    """The registered backbone ``name``, with weights from the folder (or hub model id, see
    ``resolve_weights``) ``weights`` or, without it,
    randomly initialised. Raises ``BackboneWeightsError`` for a missing folder or a checkpoint
    of another architecture, ``KeyError`` for an unknown name."""
    if name not in REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; registered: {', '.join(REGISTRY)}")
    spec = REGISTRY[name]
    if weights is None:
        log.warning("backbone %s is randomly initialised (no weights folder given)", name)
    else:
        weights = resolve_weights(weights)
        if not (weights / "config.json").is_file():
            raise BackboneWeightsError(
                f"backbone weights folder {weights} does not exist or has no config.json; give the "
                f"folder that save_pretrained wrote for a {name} model"
            )
    if spec.family == "resnet3d":
        return ResNet3dBackbone(name=name, spec=spec, weights=weights)
    return HFSliceBackbone(name=name, spec=spec, weights=weights)


def _hf_classes(family: str) -> tuple[Any, Any]:
    from transformers import (
        Dinov2Config,
        Dinov2Model,
        DINOv3ViTConfig,
        DINOv3ViTModel,
        SiglipVisionConfig,
        SiglipVisionModel,
    )

    return {
        "dinov2": (Dinov2Config, Dinov2Model),
        "dinov3": (DINOv3ViTConfig, DINOv3ViTModel),
        "siglip": (SiglipVisionConfig, SiglipVisionModel),
    }[family]


def _check_architecture(
    path: Path, name: str, family: _Family, found: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Raise ``BackboneWeightsError`` listing every architecture field that differs."""
    model_type = found.get("model_type")
    if model_type not in family.model_types:
        raise BackboneWeightsError(
            f"{path} holds a {model_type!r} checkpoint, but backbone {name!r} needs one of "
            f"{family.model_types}"
        )
    differences = [
        f"{key} {found.get(key)!r} (expected {expected.get(key)!r})"
        for key in family.checked_fields
        if found.get(key) != expected.get(key)
    ]
    if differences:
        raise BackboneWeightsError(
            f"checkpoint {path} does not match backbone {name!r}: {', '.join(differences)}"
        )


class ConvStem(nn.Module):
    """A convolutional stem in a DINOv2 patch embedding's place: stride-2 3x3 convolutions (batch
    norm, ReLU) of the given widths, then a 1x1 convolution (``out``) to the hidden size, whose
    output grid is the patch grid. ``weight`` is ``out``'s, which is what the HF embeddings read
    for the input dtype; ``out`` is the stem's MoLRE ``patch_embedding`` target (a 1x1 "patch"
    map of the stem's features, routed on their image mean)."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], hidden: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            layers += [
                nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.layers = nn.Sequential(*layers)
        self.out = nn.Conv2d(channels, hidden, 1)

    @property
    def weight(self) -> torch.Tensor:
        return self.out.weight

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.out(self.layers(pixels))


def _install_stem(encoder: nn.Module, config: Any) -> None:
    """Replace the DINOv2 ``encoder``'s patch projection with the ``ConvStem`` its config names."""
    widths = tuple(config.conv_stem)
    if 2 ** len(widths) != config.patch_size:
        raise ValueError(
            f"a conv stem of {len(widths)} stride-2 layers makes {2 ** len(widths)} px tokens, "
            f"not the patch size {config.patch_size}"
        )
    patches = encoder.get_submodule("embeddings.patch_embeddings")
    patches.projection = ConvStem(config.num_channels, widths, config.hidden_size)


def _stem_model_class() -> Any:
    """``Dinov2Model`` with the ``ConvStem`` its config names built in, so that HF's own
    ``from_pretrained`` (and its checkpoint key conversions) loads a stemmed checkpoint."""
    from transformers import Dinov2Model

    class Dinov2ConvStemModel(Dinov2Model):
        def __init__(self, config: Any) -> None:
            super().__init__(config)
            _install_stem(self, config)

    return Dinov2ConvStemModel


# The stem's last (1x1) convolution is where MoLRE adapts the patch embedding.
_STEM_PATCH_TARGET = r"embeddings\.patch_embeddings\.projection\.out"


class HFSliceBackbone(nn.Module):
    """A 2D HF vision transformer applied per slice. DINOv2/DINOv3: the final-norm CLS token
    concatenated with the mean of the patch tokens (DINOv2's own linear-evaluation recipe: the
    patch mean carries the local detail a CLS token summarises away, and a small backbone trained
    from scratch leans on it), and where the spec says ``patch_max`` their max as well. SigLIP,
    which has no CLS token: the mean of the final tokens."""

    kind: Literal["2d", "3d"] = "2d"

    def __init__(self, *, name: str, spec: BackboneSpec, weights: Path | None) -> None:
        super().__init__()
        family = FAMILIES[spec.family]
        config_class, model_class = _hf_classes(spec.family)
        expected = config_class(**spec.architecture, **family.config_overrides)
        if spec.conv_stem:
            if spec.family != "dinov2":
                raise ValueError(f"backbone {name!r}: a conv stem is built for DINOv2 only")
            expected.conv_stem = list(spec.conv_stem)
            model_class = _stem_model_class()
        if weights is None:
            self.encoder = model_class(expected)
        else:
            self.encoder = self._load(weights, name, family, expected)
        self.name = name
        self.family = spec.family
        self.pretrained = weights is not None
        self._prefix_tokens = 1 + int(getattr(expected, "num_register_tokens", 0) or 0)
        with_patch_mean = spec.family in ("dinov2", "dinov3")
        self.patch_max = with_patch_mean and spec.patch_max
        parts = 1 + int(with_patch_mean) + int(self.patch_max)
        self.feature_dim: int = expected.hidden_size * parts
        self.input_size = spec.input_size
        self.mean, self.std = spec.mean, spec.std
        self.default_targets = family.default_targets
        self.target_patterns = dict(family.target_patterns)
        if spec.conv_stem:
            self.target_patterns["patch_embedding"] = _STEM_PATCH_TARGET
        image_size = getattr(expected, "image_size", spec.input_size)
        self._interpolate = spec.family == "siglip" and image_size != spec.input_size

    @staticmethod
    def _load(path: Path, name: str, family: _Family, expected: Any) -> nn.Module:
        config_class, model_class = _hf_classes(REGISTRY[name].family)
        raw = json.loads((path / "config.json").read_text())
        try:
            found = config_class.from_pretrained(path)
        except (OSError, ValueError, TypeError) as error:
            raise BackboneWeightsError(f"cannot read the config in {path}: {error}") from error
        found_fields = found.to_dict() | {"model_type": raw.get("model_type")}
        _check_architecture(path, name, family, found_fields, expected.to_dict())
        stem = getattr(expected, "conv_stem", None)
        if raw.get("conv_stem") != stem:
            raise BackboneWeightsError(
                f"checkpoint {path} does not match backbone {name!r}: conv_stem "
                f"{raw.get('conv_stem')!r} (expected {stem!r})"
            )
        for key, value in family.config_overrides.items():
            setattr(found, key, value)
        if stem:
            model_class = _stem_model_class()
        try:
            model, info = model_class.from_pretrained(
                path, config=found, dtype=torch.float32, output_loading_info=True
            )
        except (OSError, ValueError, RuntimeError) as error:
            raise BackboneWeightsError(f"cannot load the weights in {path}: {error}") from error
        if info["missing_keys"] or info["mismatched_keys"]:
            raise BackboneWeightsError(
                f"checkpoint {path} lacks weights of backbone {name!r}: "
                f"missing {sorted(info['missing_keys'])[:5]}, "
                f"mismatched {sorted(info['mismatched_keys'])[:5]}"
            )
        return model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.family == "siglip":
            output = self.encoder(pixel_values=pixels, interpolate_pos_encoding=self._interpolate)
            return output.last_hidden_state.mean(dim=1)
        tokens = self.encoder(pixel_values=pixels).last_hidden_state  # final norm applied
        patches = tokens[:, self._prefix_tokens :]
        parts = [tokens[:, 0], patches.mean(dim=1)]
        if self.patch_max:
            parts.append(patches.amax(dim=1))
        return torch.cat(parts, dim=-1)

    def save_pretrained(self, path: Path) -> None:
        """Write the HF folder (config.json + model.safetensors) that ``weights=`` reads."""
        self.encoder.save_pretrained(path)


class ResNet3dBackbone(nn.Module):
    """MONAI's 3D ResNet on the whole volume (three HU windows as channels). The feature map is
    pooled in-plane, leaving one vector per depth position; a square ``projection`` (identity at
    init, so a frozen one changes nothing) is where MoLRE's experts adapt a 3D model."""

    kind: Literal["2d", "3d"] = "3d"

    def __init__(self, *, name: str, spec: BackboneSpec, weights: Path | None) -> None:
        super().__init__()
        from monai.networks.nets.resnet import ResNet

        family = FAMILIES[spec.family]
        self.architecture = {"n_input_channels": 3, "conv1_t_size": 7} | spec.architecture
        self.encoder = ResNet(
            block="basic", spatial_dims=3, feed_forward=False, **self.architecture
        )
        self.feature_dim: int = self.architecture["block_inplanes"][-1]
        self.projection = nn.Linear(self.feature_dim, self.feature_dim)
        with torch.no_grad():
            self.projection.weight.copy_(torch.eye(self.feature_dim))
            self.projection.bias.zero_()
        if weights is not None:
            self._load(weights, name, family)
        self.name = name
        self.family = spec.family
        self.pretrained = weights is not None
        self.input_size = spec.input_size
        self.mean, self.std = spec.mean, spec.std
        self.default_targets = family.default_targets
        self.target_patterns = dict(family.target_patterns)

    def _load(self, path: Path, name: str, family: _Family) -> None:
        from safetensors.torch import load_file

        found = json.loads((path / "config.json").read_text())
        _check_architecture(path, name, family, found, self._config())
        try:
            state = load_file(path / "model.safetensors")
        except (OSError, RuntimeError) as error:
            raise BackboneWeightsError(f"cannot load the weights in {path}: {error}") from error
        try:
            result = self.load_state_dict(state, strict=False)
        except RuntimeError as error:  # shape mismatches
            raise BackboneWeightsError(
                f"checkpoint {path} does not fit {name!r}: {error}"
            ) from error
        # A plain encoder checkpoint has no projection: it stays the identity.
        missing = [k for k in result.missing_keys if not k.startswith("projection.")]
        if missing or result.unexpected_keys:
            raise BackboneWeightsError(
                f"checkpoint {path} does not fit backbone {name!r}: missing {missing[:5]}, "
                f"unexpected {result.unexpected_keys[:5]}"
            )

    def _config(self) -> dict[str, Any]:
        return {"model_type": "headct_resnet3d", **self.architecture}

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        net = self.encoder
        x = net.act(net.bn1(net.conv1(volume)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        x = net.layer4(net.layer3(net.layer2(net.layer1(x))))
        tokens = x.mean(dim=(3, 4)).transpose(1, 2)  # [B, D', F]
        # Each depth position is one routed item with a single token.
        return self.projection(tokens.unsqueeze(2)).squeeze(2)

    def save_pretrained(self, path: Path) -> None:
        """Write config.json + model.safetensors, the folder format ``weights=`` reads."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps(self._config(), indent=2))
        state = {k: v.contiguous() for k, v in self.state_dict().items()}
        save_file(state, path / "model.safetensors")
