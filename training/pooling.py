"""Gated attention pooling of slice features into one study vector (Ilse et al., 2018).

    a_d = softmax_d( w^T (tanh(V h_d) * sigmoid(U h_d)) )        z = sum_d a_d h_d

A study is a bag of slices and most findings live on a few of them; the attention weights say
which, and the service reports them as the slices that drove the decision.
"""

from __future__ import annotations

import torch
from torch import nn


class GatedAttentionPooling(nn.Module):
    """Pool [B, D, F] slice features to [B, F], returning the per-slice attention [B, D] too."""

    def __init__(self, in_features: int, hidden_features: int = 128) -> None:
        super().__init__()
        self.V = nn.Linear(in_features, hidden_features)
        self.U = nn.Linear(in_features, hidden_features)
        # No bias: the softmax over slices ignores a constant added to every score, so a bias
        # here could never learn (its gradient is zero by construction).
        self.w = nn.Linear(hidden_features, 1, bias=False)

    def forward(
        self, features: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``mask`` [B, D], True for real slices: padded slices get zero attention."""
        scores = self.w(torch.tanh(self.V(features)) * torch.sigmoid(self.U(features))).squeeze(-1)
        if mask is not None:
            # The most negative finite value, not -inf, so an all-padded row cannot give NaN.
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        attention = torch.softmax(scores, dim=-1)
        study = torch.einsum("bd,bdf->bf", attention, features)
        return study, attention
