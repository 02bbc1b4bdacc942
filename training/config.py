"""The settings of ``headct train`` and ``headct pretrain``: one dataclass each, whose fields carry
their help text and defaults, which the command line reads (``training.config_fields``).

Torch-free, like ``MoLREConfig``: ``training.cli`` builds its options from these on a gateway
install. A run folder records them in its ``config.json`` (``TrainConfig`` inside
``training.runs.RunConfig``; ``PretrainConfig`` as the whole file), so field names are part of
that format: renaming one breaks loading the runs already written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from service.contract import ADAPTER_KINDS, AdapterKind
from service.findings import FINDING_CODES
from training.config_fields import config_from_dict
from training.molre import MoLREConfig

LOSSES = ("focal", "bce")
TRAIN_GRID = (32, 256, 256)  # headct train's --depth and --size (rows = columns)


@dataclass
class TrainConfig:
    """How one run is trained: data, backbone and adapter, schedule, loss, split and stopping."""

    data: str = field(metadata={"help": "Folder of studies with labels.csv."})
    out: str = field(metadata={"help": "Run folder (config, checkpoints, metrics log)."})
    backbone: str = field(default="tiny_dinov2", metadata={"help": "Registered backbone name."})
    weights: str | None = field(
        default=None,
        metadata={
            "help": "Backbone checkpoint: a local save_pretrained folder, or a hub model id "
            "(owner/name) fetched into or read from the Hugging Face cache."
        },
    )
    adapter: AdapterKind = field(default="molre", metadata={"help": "probe, lora, molre or full."})
    molre: MoLREConfig = field(
        default_factory=MoLREConfig,
        metadata={"help": "The experts: adapter lora uses one of them, probe and full none."},
    )
    grid: tuple[int, int, int] = field(
        default=TRAIN_GRID, metadata={"help": "Model grid: slices, rows, columns."}
    )
    slice_head: bool = field(
        default=False,
        metadata={
            "help": "Add a slice-level head beside the attention pooling: each slice scored on "
            "its own, the scores' softmax-weighted mean over slices added to each logit. It "
            "starts from the backbone's pretraining head where the weights folder has one."
        },
    )
    synthetic: bool | None = field(
        default=None,
        metadata={
            "help": "The training data are synthetic phantoms (an exported model then says "
            "not for clinical use). Default: what the data folder says (headct synth marks its "
            "folders); a folder without the mark is real data."
        },
    )
    epochs: int = field(default=10, metadata={"help": "Epochs the schedule spans."})
    batch_size: int = field(default=2, metadata={"help": "Studies per batch (per process)."})
    grad_accumulation: int = field(default=1, metadata={"help": "Batches per optimiser step."})
    lr: float = field(default=1e-3, metadata={"help": "Peak learning rate (warm-up, then cosine)."})
    backbone_lr: float = field(
        default=1e-4,
        metadata={
            "help": "Learning rate of the backbone itself with adapter full (it moves slowly)."
        },
    )
    # The routers' gradient reaches them only through the gates' small effect on the experts'
    # output, so at the experts' rate they hardly move.
    router_lr_scale: float = field(
        default=1.0, metadata={"help": "Routers learn at lr times this."}
    )
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    warmup_fraction: float = field(
        default=0.1, metadata={"help": "Share of the steps spent warming up the learning rate."}
    )
    loss: str = field(default="focal", metadata={"help": "focal or bce."})
    focal_gamma: float = field(default=2.0, metadata={"help": "Focusing exponent of focal loss."})
    positive_weight_cap: float = field(
        default=20.0, metadata={"help": "Cap of each finding's negatives/positives loss weight."}
    )
    validation_fraction: float = field(
        default=0.2, metadata={"help": "Share of the patients held out for validation."}
    )
    patience: int = field(
        default=5, metadata={"help": "Epochs without improvement before stopping."}
    )
    seed: int = field(
        default=0, metadata={"help": "Seed of the split, the initialisation and the data order."}
    )
    augment: bool = field(
        default=True, metadata={"help": "Flips, rotations, jitter, slice dropout."}
    )
    workers: int = field(default=0, metadata={"help": "Data loader worker processes."})
    max_steps: int | None = field(default=None, metadata={"help": "Stop after this many steps."})
    stop_after_epoch: int | None = field(
        default=None,
        metadata={
            "help": "End this invocation after this epoch; the schedule still spans --epochs and "
            "the next invocation resumes from last.pt (wall-time-limited or preemptible jobs)."
        },
    )
    cache: str | None = field(
        default=None, metadata={"help": "Ingest cache folder (default: DATA/.cache)."}
    )

    def __post_init__(self) -> None:
        self.grid = tuple(self.grid)  # type: ignore[assignment]
        if self.adapter not in ADAPTER_KINDS:
            raise ValueError(f"adapter must be probe, lora, molre or full, not {self.adapter!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be focal or bce, not {self.loss!r}")
        if min(self.epochs, self.batch_size, self.grad_accumulation) < 1:
            raise ValueError("epochs, batch_size and grad_accumulation must be at least 1")
        if len(self.grid) != 3 or min(self.grid) < 1:
            raise ValueError(
                f"grid must be three positive sizes (slices, rows, columns): {self.grid}"
            )
        if not 0 < self.validation_fraction < 1:
            raise ValueError(
                f"validation_fraction must be between 0 and 1, not {self.validation_fraction}"
            )
        if not math.isfinite(self.router_lr_scale) or self.router_lr_scale < 0:
            raise ValueError(f"router_lr_scale must be >= 0, not {self.router_lr_scale}")
        if self.workers < 0:
            raise ValueError(
                f"workers must be >= 0 (0: load in the main process), not {self.workers}"
            )

    def adapter_config(self) -> MoLREConfig | None:
        """The experts the adapter is built with: none for probe and full, one for lora."""
        if self.adapter in ("probe", "full"):
            return None
        if self.adapter == "lora":
            return MoLREConfig.from_dict(self.molre.to_dict() | {"experts": 1})
        return self.molre

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """The inverse of ``dataclasses.asdict``; ``molre`` may hold only the fields that differ
        from ``MoLREConfig``'s defaults (as runs recorded it before it was typed)."""
        values = dict(data)
        if "molre" in values:
            values["molre"] = MoLREConfig.from_dict(values["molre"] or {})
        return config_from_dict(cls, values)


# The backbone learns every other finding; the rest are left for the adapters to add.
PRETRAINING_FINDINGS: tuple[str, ...] = tuple(FINDING_CODES[::2])


@dataclass
class PretrainConfig:
    """How ``headct pretrain`` (and ``headct ceiling``) trains on streamed phantoms."""

    out: str = field(metadata={"help": "Run folder; run again to resume from last.pt."})
    backbone: str = field(default="demo_vit", metadata={"help": "Registered backbone name."})
    findings: tuple[str, ...] = field(
        default=PRETRAINING_FINDINGS,
        metadata={"help": "Findings with slice-level targets (default: every other one)."},
    )
    grid: tuple[int, int, int] = field(
        default=(32, 128, 128), metadata={"help": "Model grid: slices, rows, columns."}
    )
    source_matrix: int = field(
        default=256, metadata={"help": "Matrix the phantoms are generated at, then averaged."}
    )
    prevalence_scale: float = field(
        default=4.0, metadata={"help": "Finding prevalence multiplier of the streamed phantoms."}
    )
    steps: int = field(default=20000, metadata={"help": "Optimiser steps the schedule spans."})
    slices_per_step: int = field(default=64, metadata={"help": "Slices in one batch."})
    studies_per_step: float = field(
        default=2.0, metadata={"help": "Fresh studies entering the shuffle buffer per step."}
    )
    buffer_studies: int = field(
        default=24, metadata={"help": "Studies in the shuffle buffer slices are drawn from."}
    )
    shift_px: int = field(
        default=0,
        metadata={"help": "Random in-plane shift of each batch, up to this many grid pixels."},
    )
    lr: float = field(default=1e-3, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=500, metadata={"help": "Linear warm-up steps."})
    position_weight: float = field(
        default=0.2, metadata={"help": "Weight of the slice-position auxiliary loss."}
    )
    positive_weight_cap: float = field(
        default=10.0, metadata={"help": "Cap of sqrt(neg/pos) per-finding positive weights."}
    )
    teacher: str | None = field(
        default=None,
        metadata={
            "help": "A pretrain or ceiling run folder (e.g. a headct ceiling CNN) whose slice "
            "predictions on these findings become soft targets (distillation). Its grid must "
            "match, and its findings must include these."
        },
    )
    distill_weight: float = field(
        default=0.5,
        metadata={
            "help": "With --teacher: the share of the finding loss that follows the teacher; "
            "the rest follows the annotations."
        },
    )
    validation_studies: int = field(
        default=96, metadata={"help": "Held-out studies of the validation curve."}
    )
    validate_every: int = field(default=500, metadata={"help": "Steps between validations."})
    checkpoint_every_s: float = field(
        default=300.0, metadata={"help": "Seconds between checkpoints (and at the end)."}
    )
    workers: int = field(
        default=1, metadata={"help": "Phantom generator processes (0: in-process)."}
    )
    threads: int = field(default=0, metadata={"help": "Torch threads (0: torch's default)."})
    seed: int = field(default=0, metadata={"help": "Seed of the study streams and the model."})
    per_finding: bool = field(
        default=False, metadata={"help": "Log each finding's validation AUC too."}
    )

    def __post_init__(self) -> None:
        self.findings = tuple(self.findings)
        self.grid = tuple(self.grid)  # type: ignore[assignment]
        unknown = sorted(set(self.findings) - set(FINDING_CODES))
        if unknown or not self.findings:
            raise ValueError(f"findings must be a non-empty subset of the 75 codes: {unknown}")
        if self.source_matrix % self.grid[1] or self.source_matrix % self.grid[2]:
            raise ValueError("source_matrix must be a multiple of the grid's rows and columns")
        if self.slices_per_step < 2 or self.buffer_studies < 1 or self.studies_per_step <= 0:
            raise ValueError("slices_per_step >= 2, buffer_studies >= 1, studies_per_step > 0")
        if self.steps < 1 or self.warmup_steps < 1 or self.validate_every < 1:
            raise ValueError("steps, warmup_steps and validate_every must be at least 1")
        if self.workers < 0 or self.threads < 0:
            raise ValueError("workers and threads must be >= 0 (0: in-process, torch's default)")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], not {self.distill_weight}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PretrainConfig:
        """The inverse of ``dataclasses.asdict`` (what ``config.json`` of a run holds)."""
        return config_from_dict(cls, data)
