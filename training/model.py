"""``HeadCTModel``: HU volume in, 75 finding probabilities and the router's weights out.

    CT_VOLUME [B, D, H, W] HU ─► three HU windows as channels ─► resize slices to the backbone's
    input ─► normalise ─► backbone (+ MoLRE experts) per slice (2D) or per volume (3D)
    ─► gated attention over slices ─► Linear(F, 75)
    (+ with ``slice_head``: Linear(F, 75) on each slice ─► per finding, the slices' logits
    averaged with their own softmax over slices, a smooth maximum ─► added to the logits)

Windowing and normalisation live inside ``forward`` so the exported ONNX graph takes raw HU (the
serving contract: the gateway sends HU and the model owns its windows). Adapters:

- ``probe``: frozen backbone, train pooling and head (linear-probe baseline);
- ``lora``: MoLRE with one expert and no router, i.e. plain LoRA;
- ``molre``: K routed LoRA experts (Yoo et al., 2026). With ``router="shared"`` a 2D backbone
  runs twice per slice: once frozen (experts off, no gradient) to give the router its
  input, the slice's foundation features, then with the experts mixed by those gates in every
  adapted layer;
- ``full``: everything trains (used to make the demo backbone).

The slice head reads each slice on its own, so a finding that lives on a few slices is not
diluted by the attention's average over the study. When the backbone's weights folder holds the
slice-level head it was pretrained with (``pretraining_heads.safetensors``), the slice head starts
from it for the findings it was pretrained on, and from zero (no contribution) for the others.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from service.contract import ADAPTER_KINDS, DEFAULT_WINDOWS, AdapterKind, HUWindow
from service.findings import FINDING_CODES, NUM_FINDINGS
from training.backbones import SliceBackbone, create_backbone
from training.molre import MoLREConfig
from training.molre.injector import expert_layers, inject_molre
from training.molre.layer import ExpertRouter
from training.pooling import GatedAttentionPooling

# The slice-level head ``headct pretrain`` exports beside the backbone (``training.pretrain``).
PRETRAINING_HEADS = "pretraining_heads.safetensors"
PRETRAINING_CARD = "pretraining.json"


def is_router(name: str) -> bool:
    """Whether a parameter or buffer name belongs to a router (the model's shared one or a
    layer's own)."""
    return name.startswith("router.") or ".router." in name


class HUWindowing(nn.Module):
    """HU [B, D, H, W] (int16 or float) to windowed channels [B, D, C, H, W] in [0, 1]."""

    def __init__(self, windows: Sequence[HUWindow]) -> None:
        super().__init__()
        lows = [w.low for w in windows]
        widths = [w.width for w in windows]
        self.register_buffer("low", torch.tensor(lows).view(-1, 1, 1), persistent=False)
        self.register_buffer("width", torch.tensor(widths).view(-1, 1, 1), persistent=False)

    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        return ((hu.float().unsqueeze(2) - self.low) / self.width).clamp(0.0, 1.0)


class SlicePixels(nn.Module):
    """HU [B, D, H, W] to what the backbone reads, slice by slice: the windows as channels,
    resized to its input size and normalised with its mean and std, [B*D, 3, S, S]. The one
    path from HU to pixels, for the product model and for the backbone's pretraining."""

    def __init__(self, windows: Sequence[HUWindow], backbone: SliceBackbone) -> None:
        super().__init__()
        self.windowing = HUWindowing(windows)
        self.size = backbone.input_size
        shape = (1, 3, 1, 1)
        self.register_buffer("mean", torch.tensor(backbone.mean).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(backbone.std).view(shape), persistent=False)

    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        slices = self.windowing(hu).flatten(0, 1)
        if tuple(slices.shape[-2:]) != (self.size, self.size):
            # antialias off: the ONNX Resize op has no antialiasing; downsampling is mild here.
            slices = F.interpolate(
                slices,
                size=(self.size, self.size),
                mode="bilinear",
                align_corners=False,
                antialias=False,
            )
        return (slices - self.mean) / self.std


class ModelOutput(NamedTuple):
    """Everything one forward returns. K is 1 (all ones) for adapters without a router."""

    logits: torch.Tensor  # [B, 75]
    probabilities: torch.Tensor  # [B, 75]
    router_weights: torch.Tensor  # [B, K]: mean over layers and slices
    slice_router_weights: torch.Tensor  # [B, D, K]: mean over layers
    slice_attention: torch.Tensor  # [B, D]
    gates: torch.Tensor  # [B, D, L, K]: per adapted layer (load-balancing loss, analysis)
    # [B, D, 75]: each slice's additive share of each logit (attention times the head on the
    # slice's features, plus the slice head's softmax weight times its score of the slice); over
    # the slices it sums to the logit less the heads' biases.
    slice_evidence: torch.Tensor
    # [B, D, 75] with a slice head: its logit of each finding on each slice alone (the
    # contract's SLICE_SCORES, where the gateway finds the key slice); None without one.
    slice_scores: torch.Tensor | None = None


class HeadCTModel(nn.Module):
    """A backbone with its adapter, gated attention pooling and the 75-finding head."""

    def __init__(
        self,
        backbone: SliceBackbone,
        *,
        adapter: AdapterKind,
        molre: MoLREConfig | None = None,
        windows: Sequence[HUWindow] = DEFAULT_WINDOWS,
        pooling_hidden: int = 128,
        slice_head: bool = False,
    ) -> None:
        super().__init__()
        if adapter not in ADAPTER_KINDS:
            raise ValueError(f"adapter must be one of {ADAPTER_KINDS}, not {adapter!r}")
        if len(windows) != 3:
            raise ValueError(f"windows must be 3 (the backbone's RGB channels), not {len(windows)}")
        self.adapter = adapter
        self.molre = _adapter_config(adapter, molre)
        self.windows = tuple(windows)
        self.pixels = SlicePixels(self.windows, backbone)
        self.backbone = backbone
        assert isinstance(backbone, nn.Module)

        if self.molre is not None:
            self.expert_layer_names = inject_molre(backbone, self.molre)
        else:
            self.expert_layer_names = []
            backbone.requires_grad_(adapter == "full")
        # A plain tuple, not registered again: the layers already live inside the backbone.
        self._expert_layers = tuple(layer for _, layer in expert_layers(backbone))
        self.router: ExpertRouter | None = None
        if self.molre is not None and self.molre.experts > 1 and self.molre.router == "shared":
            if backbone.kind != "2d":
                raise ValueError(
                    "the shared router reads each slice's frozen features, which a 3D backbone "
                    "does not give per slice: use router per_layer with a 3D backbone"
                )
            self.router = ExpertRouter(
                backbone.feature_dim, self.molre.experts, self.molre.router_temperature
            )
        # Per-channel standardisation of slice features (running statistics at inference). A
        # frozen backbone's features vary far less between slices than their offsets, which a
        # linear head on raw features learns only slowly.
        self.feature_norm = nn.BatchNorm1d(backbone.feature_dim)
        self.pooling = GatedAttentionPooling(backbone.feature_dim, pooling_hidden)
        self.head = nn.Linear(backbone.feature_dim, NUM_FINDINGS)
        # Reads the raw (un-normalised) slice features, as the backbone's pretraining head did.
        self.slice_head: nn.Linear | None = None
        if slice_head:
            self.slice_head = nn.Linear(backbone.feature_dim, NUM_FINDINGS)
            nn.init.zeros_(self.slice_head.weight)
            nn.init.zeros_(self.slice_head.bias)

    def init_slice_head(self, weights: Path) -> list[str]:
        """Start the slice head from the pretraining head in the backbone's weights folder, for
        the findings it was pretrained on; returns them (none when the folder has no head, or its
        head does not fit these features)."""
        heads, card = weights / PRETRAINING_HEADS, weights / PRETRAINING_CARD
        if self.slice_head is None or not heads.is_file() or not card.is_file():
            return []
        findings = list(json.loads(card.read_text())["findings"])
        state = load_file(heads)
        weight, bias = state["findings.weight"].float(), state["findings.bias"].float()
        if weight.shape != (len(findings), self.slice_head.in_features):
            return []
        rows = [FINDING_CODES.index(code) for code in findings]
        with torch.no_grad():
            self.slice_head.weight[rows] = weight
            self.slice_head.bias[rows] = bias
        return findings

    @property
    def experts(self) -> int:
        return self.molre.experts if self.molre is not None else 1

    def adapter_summary(self) -> dict[str, Any]:
        """The adapter as the model card describes it: kind, experts K, rank and the targets."""
        return {
            "kind": self.adapter,
            "experts": self.experts,
            "rank": self.molre.rank if self.molre else None,
            "alpha": self.molre.alpha if self.molre else None,
            "router": self.molre.router if self.molre and self.molre.experts > 1 else None,
            "targets": list(self.expert_layer_names),
            "slice_head": self.slice_head is not None,
        }

    def train(self, mode: bool = True) -> HeadCTModel:
        """Train mode, except that a frozen backbone's batch norms keep their statistics."""
        super().train(mode)
        if self.adapter != "full":
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def _collect_gates(self, batch: int, items: int, like: torch.Tensor) -> torch.Tensor:
        """The gates the expert layers computed in this forward, [batch, items, L, K]."""
        if not self._expert_layers:
            return like.new_ones((batch, items, 1, 1))
        gates = []
        for layer in self._expert_layers:
            if layer.last_gates is None:
                raise RuntimeError("an expert layer did not run in this forward")
            gates.append(layer.last_gates.reshape(batch, items, -1))
            layer.last_gates = None  # do not keep the graph alive past this call
        return torch.stack(gates, dim=2)

    def _route(self, pixels: torch.Tensor) -> None:
        """The shared router's gates for each slice of ``pixels`` [N, 3, S, S], from the frozen
        backbone's features of that slice, handed to every expert layer for the next forward."""
        assert self.router is not None
        for layer in self._expert_layers:
            layer.enabled = False
        try:
            with torch.no_grad():
                frozen = self.backbone(pixels)  # [N, F]
        finally:
            for layer in self._expert_layers:
                layer.enabled = True
        gates = self.router(frozen)
        for layer in self._expert_layers:
            layer.routed_gates = gates

    def forward(self, volume: torch.Tensor, slice_mask: torch.Tensor | None = None) -> ModelOutput:
        """``volume``: HU [B, D, H, W]; ``slice_mask`` [B, D], True for real (unpadded) slices."""
        batch, depth = volume.shape[0], volume.shape[1]
        pixels = self.pixels(volume)
        if self.backbone.kind == "2d":
            if self.router is not None:
                self._route(pixels)
            features = self.backbone(pixels).unflatten(0, (batch, depth))  # [B, D, F]
            gates = self._collect_gates(batch, depth, features)
            for layer in self._expert_layers:
                layer.routed_gates = None  # do not keep the graph alive past this call
        else:
            stacked = pixels.unflatten(0, (batch, depth)).transpose(1, 2)  # [B, 3, D, S, S]
            tokens = self.backbone(stacked)  # [B, D', F]
            gates = self._collect_gates(batch, tokens.shape[1], tokens)
            features = _to_depth(tokens, depth)
            # Linear interpolation mixes neighbouring gates convexly, so they still sum to 1.
            gates = _to_depth(gates.flatten(2), depth).unflatten(2, gates.shape[2:])

        raw = features
        slice_scores = None
        features = self.feature_norm(features.flatten(0, 1)).unflatten(0, features.shape[:2])
        study, attention = self.pooling(features, slice_mask)
        logits = self.head(study)
        evidence = attention.unsqueeze(-1) * (features @ self.head.weight.T)
        if self.slice_head is not None:
            scores = raw @ self.slice_head.weight.T  # [B, D, 75], without the bias
            weights = scores
            if slice_mask is not None:
                lowest = torch.finfo(scores.dtype).min
                weights = scores.masked_fill(~slice_mask.unsqueeze(-1), lowest)
            # Per finding, a softmax over the slices weights each slice's score: a smooth maximum
            # whose weights sum to one, so each slice's share is its weight times its score.
            share = torch.softmax(weights, dim=1) * scores
            logits = logits + share.sum(dim=1) + self.slice_head.bias
            evidence = evidence + share
            slice_scores = scores + self.slice_head.bias
        slice_router = gates.mean(dim=2)
        if slice_mask is None:
            router = slice_router.mean(dim=1)
        else:
            weights = slice_mask.to(slice_router.dtype).unsqueeze(-1)
            router = (slice_router * weights).sum(1) / weights.sum(1).clamp(min=1)
        return ModelOutput(
            logits,
            torch.sigmoid(logits),
            router,
            slice_router,
            attention,
            gates,
            evidence,
            slice_scores if self.slice_head is not None else None,
        )

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes: adapters, routers, pooling and head (everything for
        ``full``). With the backbone checkpoint, this rebuilds the trained model."""
        state = self.state_dict()
        if self.adapter == "full":
            return state
        trainable = {name for name, p in self.named_parameters() if p.requires_grad}
        # The feature norm's and the routers' running statistics are buffers, not parameters,
        # but training sets them.
        return {
            name: tensor
            for name, tensor in state.items()
            if name in trainable or name.startswith("feature_norm.") or is_router(name)
        }

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load what ``trainable_state_dict`` returned; any missing or extra key is an error."""
        expected = set(self.trainable_state_dict())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(
                f"trainable state does not fit this model ({self.adapter}, "
                f"{self.backbone.name}): missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        self.load_state_dict(state, strict=False)


def _adapter_config(adapter: AdapterKind, molre: MoLREConfig | None) -> MoLREConfig | None:
    if adapter in ("probe", "full"):
        if molre is not None:
            raise ValueError(f"adapter {adapter!r} takes no MoLREConfig; use 'lora' or 'molre'")
        return None
    if adapter == "lora":
        molre = molre if molre is not None else MoLREConfig(experts=1)
        if molre.experts != 1:
            raise ValueError(
                f"adapter 'lora' is MoLRE with experts=1, got experts={molre.experts}; "
                "use adapter 'molre' for a mixture"
            )
        return molre
    return molre if molre is not None else MoLREConfig()


def _to_depth(sequence: torch.Tensor, depth: int) -> torch.Tensor:
    """Linearly resample [B, D', C] along D' to [B, depth, C]."""
    resized = F.interpolate(
        sequence.transpose(1, 2), size=depth, mode="linear", align_corners=False
    )
    return resized.transpose(1, 2)


def build_model(
    backbone_name: str,
    adapter: AdapterKind = "molre",
    molre: MoLREConfig | None = None,
    weights: Path | None = None,
    *,
    windows: Sequence[HUWindow] = DEFAULT_WINDOWS,
    pooling_hidden: int = 128,
    slice_head: bool = False,
) -> HeadCTModel:
    """The registered backbone (weights from ``weights`` or random) with its adapter and head,
    and the slice head (started from the weights folder's pretraining head, if it has one)."""
    backbone = create_backbone(backbone_name, weights=weights)
    model = HeadCTModel(
        backbone,
        adapter=adapter,
        molre=molre,
        windows=windows,
        pooling_hidden=pooling_hidden,
        slice_head=slice_head,
    )
    if slice_head and weights is not None and Path(weights).is_dir():
        model.init_slice_head(Path(weights))
    return model
