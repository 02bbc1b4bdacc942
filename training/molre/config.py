"""``MoLREConfig``: how many low-rank experts, of which rank, on which layers, routed how.

The config travels as JSON beside the trained weights (and into the model card), so a run can be
rebuilt exactly: ``MoLREConfig.from_dict(json.loads(text))``. Torch-free: the ``headct train``
options come from its fields.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from training.config_fields import config_from_dict

# Target roles a backbone family knows how to name (see ``training.backbones``); any other string
# in ``target_modules`` is a regular expression matched against module names.
TARGET_ROLES = ("patch_embedding", "q", "k", "v", "o", "mlp", "projection")
ROUTERS = ("per_layer", "shared")


@dataclass
class MoLREConfig:
    """Mixture of low-rank experts on a frozen backbone (Yoo et al., 2026).

    The defaults keep the added parameters (experts and routers) under 0.5% of a ViT-B backbone:
    four rank-2 experts on the patch embedding and the attention query and value projections of
    every block add 0.44% to DINOv2-B (see ``training.params``). Four experts on all four attention
    projections cannot fit that budget at any rank: rank 1 already adds 0.52%.
    """

    experts: int = field(
        default=4,
        metadata={"help": "Number of LoRA experts K per adapted layer; 1 means plain LoRA."},
    )
    rank: int = field(default=2, metadata={"help": "Rank r of each expert."})
    alpha: float = field(
        default=4.0,
        metadata={"help": "LoRA alpha; the experts' sum is scaled by alpha / rank."},
    )
    dropout: float = field(
        default=0.05,
        metadata={"help": "Dropout on the experts' input (not on the frozen path), in [0, 1)."},
    )
    target_modules: tuple[str, ...] | None = field(
        default=None,
        metadata={
            "help": "Layers to adapt: roles from TARGET_ROLES, resolved per backbone family "
            "(patch_embedding, q, k, v, o, mlp, projection), or regular expressions matched "
            "against module names. None: the backbone's default targets."
        },
    )
    router_temperature: float = field(
        default=1.0,
        metadata={"help": "Softmax temperature of the router; lower is sharper. Must be > 0."},
    )
    router: str = field(
        default="per_layer",
        metadata={
            "help": "per_layer: each adapted layer routes on the mean of its own input; expert k "
            "of one layer is unrelated to expert k of another, so their mean over layers (the "
            "reported study weights) varies little between studies. shared: one router per "
            "model reads each slice's frozen backbone features (a second, frozen pass of the "
            "backbone) and its gates drive the experts of every adapted layer, so expert k is "
            "one expert throughout (2D backbones only)."
        },
    )
    load_balancing_weight: float = field(
        default=0.0,
        metadata={
            "help": "Weight of the load-balancing loss that keeps experts in use (0: off). "
            "Applied by the training loop to ModelOutput.gates."
        },
    )

    def __post_init__(self) -> None:
        if isinstance(self.target_modules, list):
            self.target_modules = tuple(self.target_modules)
        if not isinstance(self.experts, int) or self.experts < 1:
            raise ValueError(
                f"experts must be an integer >= 1 (1 is plain LoRA), not {self.experts}"
            )
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"rank must be an integer >= 1, not {self.rank}")
        if not math.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"alpha must be a positive number (e.g. 2 * rank), not {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), e.g. 0.05, not {self.dropout}")
        if not math.isfinite(self.router_temperature) or self.router_temperature <= 0:
            raise ValueError(
                f"router_temperature must be > 0 (1.0 is a plain softmax), "
                f"not {self.router_temperature}"
            )
        if self.router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, not {self.router!r}")
        if not math.isfinite(self.load_balancing_weight) or self.load_balancing_weight < 0:
            raise ValueError(
                f"load_balancing_weight must be >= 0 (0 turns it off), "
                f"not {self.load_balancing_weight}"
            )
        targets = self.target_modules
        if targets is not None and not (targets and all(isinstance(t, str) and t for t in targets)):
            raise ValueError(
                "target_modules must be None (the backbone's defaults) or a non-empty tuple "
                f"of role names {TARGET_ROLES} or module-name patterns, not {targets!r}"
            )

    @property
    def scaling(self) -> float:
        """The factor alpha / rank applied to the experts' mixed output."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        data = asdict(self)
        if data["target_modules"] is not None:
            data["target_modules"] = list(data["target_modules"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MoLREConfig:
        """The inverse of ``to_dict``; unknown keys are an error, so a typo cannot pass silently."""
        return config_from_dict(cls, data)
