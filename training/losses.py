"""Losses: masked multi-label BCE or focal loss, and the router's load-balancing term."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def masked_multilabel_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    kind: str = "focal",
    gamma: float = 2.0,
) -> torch.Tensor:
    """Mean loss over known labels only (NaN = unknown). Focal loss (Lin et al., 2017) down-weights
    the many easy negatives of rare findings; the paper trained MoLRE with it."""
    known = ~torch.isnan(labels)
    targets = torch.nan_to_num(labels, nan=0.0)
    per_label = F.binary_cross_entropy_with_logits(
        logits, targets, pos_weight=pos_weight, reduction="none"
    )
    if kind == "focal":
        probabilities = torch.sigmoid(logits)
        p_true = probabilities * targets + (1 - probabilities) * (1 - targets)
        per_label = per_label * (1 - p_true).pow(gamma)
    elif kind != "bce":
        raise ValueError(f"loss must be 'bce' or 'focal', not {kind!r}")
    return (per_label * known).sum() / known.sum().clamp(min=1)


def load_balancing_loss(gates: torch.Tensor) -> torch.Tensor:
    """K * sum_k (mean gate of expert k)^2 - 1: zero when experts are used equally, growing as
    the router collapses onto few experts. ``gates``: [..., K]."""
    k = gates.shape[-1]
    usage = gates.reshape(-1, k).mean(dim=0)
    return k * usage.pow(2).sum() - 1
