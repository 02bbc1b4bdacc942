"""The MoLRE expert layers: a frozen ``nn.Linear`` or patch-embedding ``nn.Conv2d`` plus K routed
low-rank experts.

    out = base(x) + (alpha / r) * sum_k g_k * B_k(A_k(dropout(x)))
    g   = softmax(router(mean of x over its tokens) / temperature)

The gates are computed once per item of the layer's batch (one CT slice for a 2D backbone), so
every token of a slice uses the same mixture. With ``router="per_layer"`` (the default) each layer
has its own router on the mean of its input tokens; with ``router="shared"`` the model computes
the gates once per slice from the frozen backbone's features of that slice and hands the same
gates to every expert layer (``routed_gates``). The experts are stacked: one matmul down to K*r
channels, a per-expert scale by the gates, one matmul back up. With K = 1 there is no router and
the layer is plain LoRA (Hu et al., 2021).

Each forward stores its gates in ``last_gates``; the model that owns the layers reads them in the
same forward call and returns them as outputs (see ``training.model``), which ``torch.export`` and
ONNX export trace like any other tensor.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from training.molre.config import MoLREConfig


class RouterInputNorm(nn.Module):
    """Standardise each feature of the router's input by running statistics of that input.

    The summary a router reads (the mean of a slice's tokens after a layer norm, or the mean
    patch) is nearly the same vector for every slice: its offsets dwarf the differences between
    slices. A linear router on it gives the same gates whatever the input (measured on demo v1:
    a standard deviation of 0.001 per expert across studies). Standardised, the differences
    between inputs are what the router sees. The statistics are running means updated in
    training (no gradient through them) and used as they are in training and inference alike,
    so a gate does not depend on what else is in the batch. Not a ``_BatchNorm``: the model
    keeps a frozen backbone's batch norms in eval mode, and these statistics must still learn.
    """

    def __init__(self, features: int, momentum: float = 0.05, eps: float = 1e-5) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(features))
        self.register_buffer("running_var", torch.ones(features))
        self.register_buffer("batches", torch.zeros((), dtype=torch.long))

    def forward(self, summary: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                flat = summary.detach().reshape(-1, summary.shape[-1]).float()
                mean, var = flat.mean(0), flat.var(0, unbiased=False)
                # The first batch sets the statistics; later ones move them by ``momentum``.
                rate = 1.0 if int(self.batches) == 0 else self.momentum
                self.running_mean.lerp_(mean, rate)
                self.running_var.lerp_(var, rate)
                self.batches += 1
        return (summary - self.running_mean) * torch.rsqrt(self.running_var + self.eps)


class ExpertRouter(nn.Module):
    """Soft router: K expert gates from a standardised summary of the layer's input,

        g = softmax(W standardise(summary) / temperature)

    ``W`` is drawn with standard deviation 1/sqrt(features), so that at initialisation the gate
    logits of different inputs already differ by about one (the router starts input-dependent
    and training shapes it, instead of having to grow it out of a constant)."""

    def __init__(self, in_features: int, experts: int, temperature: float) -> None:
        super().__init__()
        self.norm = RouterInputNorm(in_features)
        self.proj = nn.Linear(in_features, experts)
        nn.init.normal_(self.proj.weight, std=in_features**-0.5)
        nn.init.zeros_(self.proj.bias)
        self.temperature = temperature

    def forward(self, summary: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.proj(self.norm(summary)) / self.temperature, dim=-1)


class _LowRankExperts(nn.Module):
    """What the linear and the patch-convolution wrappers share: the frozen base layer, the
    stacked up-projection ``lora_B`` [out, K*r], the router and the gate bookkeeping."""

    def __init__(self, base_layer: nn.Module, out_features: int, config: MoLREConfig) -> None:
        super().__init__()
        self.base_layer = base_layer
        for parameter in base_layer.parameters():
            parameter.requires_grad_(False)
        self.experts = config.experts
        self.rank = config.rank
        self.scaling = config.scaling
        self.dropout: nn.Module = nn.Dropout(config.dropout) if config.dropout else nn.Identity()
        # B starts at zero so the wrapped backbone starts exactly equal to the original.
        self.lora_B = nn.Parameter(torch.zeros(out_features, config.experts * config.rank))
        self.router: ExpertRouter | None = None
        self.last_gates: torch.Tensor | None = None
        # Set by the model for one forward when the router is shared: [items, K].
        self.routed_gates: torch.Tensor | None = None
        # False while the model reads the frozen backbone (the shared router's input).
        self.enabled = True

    def _init_router(self, summary_features: int, config: MoLREConfig) -> None:
        # A shared router lives in the model (``HeadCTModel``), not in its layers.
        if config.experts > 1 and config.router == "per_layer":
            self.router = ExpertRouter(summary_features, config.experts, config.router_temperature)

    def _init_down_projection(self) -> None:
        # The same uniform init as nn.Linear's weight (and PEFT's lora_A), per stacked row.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    @property
    def weight(self) -> torch.Tensor:
        """The frozen base weight; HF modules read ``.weight.dtype`` of their projections."""
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base_layer.bias

    def _gates(self, summary: Callable[[], torch.Tensor], items: torch.Size) -> torch.Tensor:
        """Gates [*items, K]: ones when K = 1, this layer's router on ``summary()``
        [*items, features], or the shared router's ``routed_gates``."""
        if self.experts == 1:
            return self.lora_B.new_ones((*items, 1))
        if self.router is not None:
            return self.router(summary())
        if self.routed_gates is None:
            raise RuntimeError(
                "a layer with a shared router needs the model to set its routed_gates before "
                "the forward (call it through HeadCTModel)"
            )
        return self.routed_gates

    def _mix(self, hidden: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """Scale each expert's r channels of ``hidden`` [..., K*r] by its gate [..., K]."""
        if self.experts == 1:
            return hidden
        hidden = hidden.unflatten(-1, (self.experts, self.rank))
        return (hidden * gates.unsqueeze(-1)).flatten(-2)

    def extra_repr(self) -> str:
        return f"experts={self.experts}, rank={self.rank}, scaling={self.scaling:g}"


class MoLRELinear(_LowRankExperts):
    """An ``nn.Linear`` with K routed LoRA experts. Input [items..., tokens, in] (gates per item
    from the token mean) or [items, in] (each row is an item)."""

    def __init__(self, base_layer: nn.Linear, config: MoLREConfig) -> None:
        super().__init__(base_layer, base_layer.out_features, config)
        self.lora_A = nn.Parameter(
            torch.empty(config.experts * config.rank, base_layer.in_features)
        )
        self._init_down_projection()
        self._init_router(base_layer.in_features, config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base_layer(x)
        has_tokens = x.dim() >= 3
        items = x.shape[:-2] if has_tokens else x.shape[:-1]
        gates = self._gates(lambda: x.mean(dim=-2) if has_tokens else x, items)
        self.last_gates = gates
        hidden = F.linear(self.dropout(x), self.lora_A)
        hidden = self._mix(hidden, gates.unsqueeze(-2) if has_tokens else gates)
        return self.base_layer(x) + self.scaling * F.linear(hidden, self.lora_B)


class MoLREPatchConv(_LowRankExperts):
    """A ViT patch embedding (``nn.Conv2d`` with kernel = stride = patch, no padding) with K routed
    LoRA experts. A patch convolution is a linear map of each flattened patch, so each expert's A
    is a patch convolution to r channels and its B a 1x1 map back; the router reads the mean
    patch of the image. Input [slices, channels, H, W]."""

    def __init__(self, base_layer: nn.Conv2d, config: MoLREConfig) -> None:
        _check_patch_conv(base_layer)
        super().__init__(base_layer, base_layer.out_channels, config)
        self.patch = tuple(base_layer.kernel_size)
        channels = base_layer.in_channels
        self.lora_A = nn.Parameter(torch.empty(config.experts * config.rank, channels, *self.patch))
        self._init_down_projection()
        self._init_router(channels * self.patch[0] * self.patch[1], config)

    def _mean_patch(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over the image's patches of each flattened patch: [slices, C*ph*pw], in the
        same (channel, row, column) order as the convolution weight."""
        ph, pw = self.patch
        rows, cols = x.shape[-2] // ph, x.shape[-1] // pw
        patches = x[..., : rows * ph, : cols * pw].reshape(-1, x.shape[1], rows, ph, cols, pw)
        return patches.mean(dim=(2, 4)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.base_layer(x)
        gates = self._gates(lambda: self._mean_patch(x), x.shape[:1])
        self.last_gates = gates
        hidden = F.conv2d(self.dropout(x), self.lora_A, stride=self.patch)  # [N, K*r, h, w]
        hidden = self._mix(hidden.movedim(1, -1), gates[:, None, None, :])
        delta = F.linear(hidden, self.lora_B).movedim(-1, 1)
        return self.base_layer(x) + self.scaling * delta


def _check_patch_conv(conv: nn.Conv2d) -> None:
    padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
    if (
        tuple(conv.kernel_size) != tuple(conv.stride)
        or padding not in ("valid", (0, 0))
        or tuple(conv.dilation) != (1, 1)
        or conv.groups != 1
    ):
        raise ValueError(
            "MoLRE adapts a Conv2d only as a patch embedding (kernel_size == stride, no padding, "
            f"dilation 1, groups 1); got {conv}. Leave it out of target_modules."
        )


MoLRELayer = MoLRELinear | MoLREPatchConv
