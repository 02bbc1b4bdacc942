"""A trained run folder: its typed config, writing and loading it, its model, and prediction.

``headct train`` writes the folder (``training.train``); ``headct evaluate``, ``headct export`` and
the demo read it back here. It holds:

- ``config.json``: a ``RunConfig``, everything needed to rebuild the model (backbone name and the
  SHA-256 of its checkpoint, adapter config, grid), how it was trained (``TrainConfig``), and
  whether its training data were synthetic phantoms (what the exported card says);
- ``best.pt``: only what training changed (adapters, routers, pooling, head);
- ``last.pt``: that plus optimiser, schedule and RNG state, for resuming;
- ``metrics.jsonl``, ``summary.json`` and ``validation_predictions.npz``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from service.findings import FINDING_CODES
from service.preprocess import ModelGrid
from synth import is_synthetic
from training.config import TrainConfig
from training.config_fields import config_from_dict
from training.data import build_cache, read_labels
from training.dataset import CachedStudyDataset
from training.evaluate import Predictions
from training.model import HeadCTModel, ModelOutput, build_model
from training.molre import MoLREConfig

CONFIG_FILENAME = "config.json"
BEST_CHECKPOINT = "best.pt"


@dataclass(frozen=True)
class RunConfig:
    """What ``config.json`` of a run records. The top-level model fields are what was built
    (``molre`` in full, with the defaults of the day); ``train`` is how it was asked for."""

    backbone: str
    weights: str | None
    weights_sha256: str | None  # of the backbone checkpoint folder; None for random init
    adapter: str
    molre: MoLREConfig | None
    grid: tuple[int, int, int]
    findings: tuple[str, ...]
    train: TrainConfig
    # Whether the training data were synthetic phantoms; None in runs from before it was recorded.
    synthetic: bool | None = None
    train_studies: int | None = None
    validation_studies: int | None = None
    skipped_studies: dict[str, str] = field(default_factory=dict)  # study uid -> ingest error
    created: str | None = None

    @classmethod
    def for_training(
        cls,
        config: TrainConfig,
        *,
        synthetic: bool,
        train_studies: int,
        validation_studies: int,
        skipped_studies: dict[str, str],
    ) -> RunConfig:
        """The record of a run about to train with ``config`` (``synthetic``: see
        ``training_data_synthetic``)."""
        return cls(
            backbone=config.backbone,
            weights=config.weights,
            weights_sha256=weights_sha256(config.weights),
            adapter=config.adapter,
            molre=config.adapter_config(),
            grid=config.grid,
            findings=FINDING_CODES,
            train=config,
            synthetic=synthetic,
            train_studies=train_studies,
            validation_studies=validation_studies,
            skipped_studies=skipped_studies,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, folder: Path) -> RunConfig:
        """The inverse of ``to_dict``, for ``folder``'s config.json. Runs written before the
        config was typed may lack ``synthetic`` and the counts, and ``testing.tiny_run`` wrote only
        part of ``train``: the rest is what the run itself records (``out`` is its folder)."""
        values = dict(data)
        molre = values.get("molre")
        values["molre"] = MoLREConfig.from_dict(molre) if molre else None
        train = {key: values[key] for key in ("backbone", "weights", "adapter", "grid")}
        train |= {"out": str(folder), "molre": molre or {}} | (values.get("train") or {})
        values["train"] = TrainConfig.from_dict(train)
        values["grid"] = tuple(values["grid"])
        values["findings"] = tuple(values["findings"])
        return config_from_dict(cls, values)

    def write(self, folder: Path) -> None:
        (folder / CONFIG_FILENAME).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, folder: Path) -> RunConfig:
        return cls.from_dict(json.loads((folder / CONFIG_FILENAME).read_text()), folder=folder)


def training_data_synthetic(config: TrainConfig) -> bool:
    """Whether a run's training data are synthetic: what ``config`` says, else the data folder's
    mark (``headct synth`` writes one); a folder without the mark is real data."""
    marked = is_synthetic(Path(config.data))
    if config.synthetic is False and marked:
        raise ValueError(
            f"{config.data} was written by headct synth (synthetic phantoms); it cannot be "
            "recorded as real data: leave out --no-synthetic"
        )
    return bool(config.synthetic) or marked


# What defines a checkpoint's weights; its cards and notes (PRETRAINING.md, a hub README) do not.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _defines_weights(path: Path) -> bool:
    return path.name == "config.json" or path.suffix in WEIGHT_SUFFIXES


def weights_sha256(weights: str | None, *, every_file: bool = False) -> str | None:
    """Hash of a backbone checkpoint folder, or None for random init: its ``config.json`` and
    weight files, in name order, so that rewriting its card does not orphan the runs trained on
    it. ``every_file``: every file, as runs recorded before this."""
    if weights is None:
        return None
    from training.backbones import resolve_weights

    root = resolve_weights(weights)
    digest = hashlib.sha256()
    files = (p for p in root.rglob("*") if p.is_file() and (every_file or _defines_weights(p)))
    for path in sorted(files):
        digest.update(str(path.relative_to(root)).encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def weights_unchanged(config: RunConfig) -> bool:
    """Whether the backbone checkpoint a run recorded is the one its weights path holds now
    (either hash: runs from before the card was left out recorded every file)."""
    if not config.weights_sha256:
        return True
    return config.weights_sha256 in (
        weights_sha256(config.weights),
        weights_sha256(config.weights, every_file=True),
    )


def model_from_config(config: RunConfig) -> HeadCTModel:
    """Rebuild the network a run trained (without its trained weights)."""
    # Initialisation that the checkpoint does not hold (a backbone without a weights folder, the
    # adapters' A matrices before loading) is seeded like training did, so it is reproducible.
    torch.manual_seed(config.train.seed)
    return build_model(
        config.backbone,
        adapter=config.adapter,  # type: ignore[arg-type]
        molre=config.molre,
        weights=Path(config.weights) if config.weights else None,
        slice_head=config.train.slice_head,
    )


def load_run(run: Path, *, checkpoint: str = BEST_CHECKPOINT) -> tuple[HeadCTModel, RunConfig]:
    """The trained model of a run folder, checking that its backbone checkpoint is unchanged."""
    config = RunConfig.load(run)
    if not weights_unchanged(config):
        raise ValueError(
            f"the backbone checkpoint {config.weights} changed since {run} was trained "
            "(SHA-256 differs): the adapters would not fit it"
        )
    model = model_from_config(config)
    state = torch.load(run / checkpoint, map_location="cpu", weights_only=True)
    model.load_trainable_state_dict(state["model"])
    model.eval()
    return model, config


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    loader: DataLoader,
    device: torch.device,
    run_name: str,
    study_uids: list[str],
    *,
    each_output: Callable[[ModelOutput], None] | None = None,
) -> Predictions:
    """The model's predictions on every study of ``loader``; ``each_output`` also sees each
    batch's full output (per-slice attention and router weights, for the demo's report)."""
    model.eval()
    labels, probabilities, routers = [], [], []
    for volume, target, _ in loader:
        output = model(volume.to(device))
        labels.append(target.numpy())
        probabilities.append(output.probabilities.float().cpu().numpy())
        routers.append(output.router_weights.float().cpu().numpy())
        if each_output is not None:
            each_output(output)
    router = np.concatenate(routers)
    return Predictions(
        run_name=run_name,
        study_uids=study_uids,
        labels=np.concatenate(labels),
        probabilities=np.concatenate(probabilities),
        router_weights=router if router.shape[1] > 1 else None,
    )


def predict_run(
    run: Path,
    data: Path,
    *,
    name: str | None = None,
    batch_size: int = 2,
    each_output: Callable[[ModelOutput], None] | None = None,
) -> Predictions:
    """Predictions of a run folder's best checkpoint on every ingestible study of ``data``
    (named ``name``, default the folder's name), on the CPU."""
    model, config = load_run(run)
    studies, _ = build_cache(read_labels(data), data / ".cache", ModelGrid(*config.grid))
    loader = DataLoader(CachedStudyDataset(studies), batch_size=batch_size)
    uids = [s.record.study_uid for s in studies]
    return predict(
        model, loader, torch.device("cpu"), name or run.name, uids, each_output=each_output
    )
