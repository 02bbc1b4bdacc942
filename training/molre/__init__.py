"""MoLRE: a mixture of routed low-rank (LoRA) experts on a frozen backbone's projections."""

from training.molre.config import TARGET_ROLES, MoLREConfig
from training.molre.injector import expert_layers, inject_molre, resolve_targets
from training.molre.layer import ExpertRouter, MoLRELinear, MoLREPatchConv

__all__ = [
    "TARGET_ROLES",
    "ExpertRouter",
    "MoLREConfig",
    "MoLRELinear",
    "MoLREPatchConv",
    "expert_layers",
    "inject_molre",
    "resolve_targets",
]
