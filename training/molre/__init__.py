"""MoLRE: a mixture of routed low-rank (LoRA) experts on a frozen backbone's projections.

``config`` (``MoLREConfig``) is torch-free and exported here, so that the command line reads it on
a gateway install; the expert layers (``training.molre.layer``) and the injector that swaps them
in (``training.molre.injector``) need PyTorch and are imported from their modules.
"""

from training.molre.config import TARGET_ROLES, MoLREConfig

__all__ = ["TARGET_ROLES", "MoLREConfig"]
