"""Parameter accounting: what an adapter adds to a backbone and what training changes.

MoLRE's claim is a small footprint (under 0.5% extra parameters); ``parameter_table`` checks it
on the full-size backbones. Models are built on PyTorch's meta device (shapes without memory or
initialisation), so even SigLIP so400m counts in well under a second.

    python -m training.params

PyTorch is imported where a model is built or counted, so that on an install without the train
extra the command says what to install instead of failing on ``import torch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.contract import ADAPTER_KINDS, AdapterKind
from training import require_train_extra
from training.molre import MoLREConfig

if TYPE_CHECKING:
    from training.model import HeadCTModel

TABLE_BACKBONES = ("dinov2_base", "dinov3_base", "siglip_so400m")


@dataclass(frozen=True)
class ParameterCount:
    """Parameter counts of one model."""

    backbone_name: str
    adapter: str
    backbone: int  # the backbone's own parameters, without adapters
    added: int  # experts and routers injected into the backbone
    trainable: int  # everything training updates: added + pooling + head (+ backbone if full)

    @property
    def added_fraction(self) -> float:
        return self.added / self.backbone

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / self.backbone


def count_parameters(model: HeadCTModel) -> ParameterCount:
    """Count ``model``'s backbone, added (experts + routers) and trainable parameters."""
    from training.molre.injector import expert_layers

    added = 0
    for _, layer in expert_layers(model.backbone):
        base = sum(p.numel() for p in layer.base_layer.parameters())
        added += sum(p.numel() for p in layer.parameters()) - base
    if model.router is not None:  # the shared router lives in the model, not the backbone
        added += sum(p.numel() for p in model.router.parameters())
    total_backbone = sum(p.numel() for p in model.backbone.parameters())
    return ParameterCount(
        backbone_name=model.backbone.name,
        adapter=model.adapter,
        backbone=total_backbone - added,
        added=added,
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
    )


def count_for(
    backbone_name: str, adapter: AdapterKind, molre: MoLREConfig | None = None
) -> ParameterCount:
    """Count a model built on the meta device (no weights are allocated or initialised)."""
    import torch

    from training.model import build_model

    with torch.device("meta"):
        model = build_model(backbone_name, adapter, molre)
    return count_parameters(model)


def parameter_table(
    backbones: Sequence[str] = TABLE_BACKBONES,
    adapters: Sequence[AdapterKind] = ADAPTER_KINDS,
    molre: MoLREConfig | None = None,
) -> list[ParameterCount]:
    """Counts for every backbone x adapter; ``molre`` (default ``MoLREConfig()``) sets the
    experts of ``molre`` and, with experts=1, the rank and targets of ``lora``."""
    molre = molre or MoLREConfig()
    configs: dict[str, MoLREConfig | None] = {
        "probe": None,
        "full": None,
        "molre": molre,
        "lora": MoLREConfig.from_dict(molre.to_dict() | {"experts": 1}),
    }
    return [
        count_for(name, adapter, configs[adapter]) for name in backbones for adapter in adapters
    ]


def format_table(rows: Sequence[ParameterCount]) -> str:
    """A plain-text table, one row per model."""
    lines = [
        f"{'backbone':<15}{'adapter':<8}{'backbone params':>16}{'added':>11}{'added %':>9}"
        f"{'trainable':>12}{'trainable %':>13}"
    ]
    for row in rows:
        lines.append(
            f"{row.backbone_name:<15}{row.adapter:<8}{row.backbone:>16,}{row.added:>11,}"
            f"{100 * row.added_fraction:>8.3f}%{row.trainable:>12,}"
            f"{100 * row.trainable_fraction:>12.3f}%"
        )
    return "\n".join(lines)


def main() -> None:
    require_train_extra("python -m training.params")
    print(format_table(parameter_table()))


if __name__ == "__main__":
    main()
