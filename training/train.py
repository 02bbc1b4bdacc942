"""The training loop behind ``headct train``: AdamW, warm-up then cosine, gradient accumulation,
bf16 autocast on GPU, augmentations, checkpoint and resume, early stopping on validation macro AUC,
a JSON-lines metrics log, and DDP when started by ``torchrun`` (NCCL on GPUs, gloo on CPUs).

``Trainer`` sets a run up step by step (data, run record, model, loaders, optimiser, schedule,
resume) and ``fit`` runs its epochs; the folder it writes is described in ``training.runs``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from service.preprocess import ModelGrid
from training.config import TrainConfig
from training.data import CachedStudy, build_cache, positive_weights, read_labels, split_by_patient
from training.dataset import Augmentation, CachedStudyDataset
from training.evaluate import Predictions, macro_auc
from training.losses import load_balancing_loss, masked_multilabel_loss
from training.model import HeadCTModel, is_router
from training.runs import (
    BEST_CHECKPOINT,
    RunConfig,
    model_from_config,
    predict,
    training_data_synthetic,
)

log = logging.getLogger(__name__)

LAST_CHECKPOINT = "last.pt"


def train(config: TrainConfig) -> dict[str, Any]:
    """Train one run; returns a summary (best validation macro AUC, steps, seconds per step)."""
    rank, world = _distributed()
    try:
        return Trainer(config, rank, world).fit()
    finally:
        if world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


@dataclass
class Progress:
    """Where a run stands between epochs: what ``last.pt`` saves beside the states."""

    epoch: int = 0  # the next epoch to run
    step: int = 0
    best_auc: float = -1.0
    stale: int = 0  # epochs since the best validation macro AUC


class Trainer:
    """One run on one process (rank ``rank`` of ``world`` under torchrun)."""

    def __init__(self, config: TrainConfig, rank: int = 0, world: int = 1) -> None:
        self.config, self.rank, self.world = config, rank, world
        _seed_everything(config.seed + rank)
        self.device = torch.device(
            f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
        )
        self.out = Path(config.out)
        synthetic = training_data_synthetic(config)  # before ingest: a refusal should be quick
        studies, failures = self._cached_studies()
        train_set, validation_set = split_by_patient(
            studies, config.validation_fraction, config.seed
        )
        self.run = RunConfig.for_training(
            config,
            synthetic=synthetic,
            train_studies=len(train_set),
            validation_studies=len(validation_set),
            skipped_studies=failures,
        )
        self.model: HeadCTModel = model_from_config(self.run).to(self.device)
        if rank == 0:
            self.run.write(self.out)
        self._make_loaders(train_set, validation_set)
        self.pos_weight = torch.from_numpy(
            positive_weights(train_set, config.positive_weight_cap)
        ).to(self.device)
        self.optimizer = torch.optim.AdamW(
            _parameter_groups(self.model, config), weight_decay=config.weight_decay
        )
        self.scheduler = self._schedule()
        self.progress = Progress()
        self.step_times: list[float] = []
        self._resume()

    def _cached_studies(self) -> tuple[list[CachedStudy], dict[str, str]]:
        """Rank 0 ingests every study into the cache; the other ranks then read it."""
        config = self.config
        data = Path(config.data)
        cache = Path(config.cache) if config.cache else data / ".cache"
        grid = ModelGrid(*config.grid)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            result = build_cache(read_labels(data), cache, grid)
        if self.world > 1:
            dist.barrier()
        if self.rank != 0:
            result = build_cache(read_labels(data), cache, grid)
        return result

    def _make_loaders(
        self, train_set: list[CachedStudy], validation_set: list[CachedStudy]
    ) -> None:
        config = self.config
        augmentation = Augmentation() if config.augment else None
        self.train_data = CachedStudyDataset(train_set, augmentation, seed=config.seed)
        self.sampler = (
            DistributedSampler(self.train_data, seed=config.seed) if self.world > 1 else None
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.train_loader = DataLoader(
            self.train_data,
            batch_size=config.batch_size,
            shuffle=self.sampler is None,
            sampler=self.sampler,
            num_workers=config.workers,
            generator=self.generator,
            drop_last=len(self.train_data) > config.batch_size * self.world,
        )
        self.validation_loader = DataLoader(
            CachedStudyDataset(validation_set), batch_size=config.batch_size
        )
        self.validation_uids = [s.record.study_uid for s in validation_set]

    def _schedule(self) -> torch.optim.lr_scheduler.LambdaLR:
        """Linear warm-up over ``warmup_fraction`` of the steps, then cosine to zero."""
        config = self.config
        steps_per_epoch = max(1, len(self.train_loader) // config.grad_accumulation)
        total = config.max_steps or steps_per_epoch * config.epochs
        warmup = max(1, int(total * config.warmup_fraction))

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def _resume(self) -> None:
        path = self.out / LAST_CHECKPOINT
        if not path.exists():
            return
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_trainable_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.progress = Progress(
            state["epoch"] + 1, state["step"], state["best_auc"], state["stale"]
        )
        torch.set_rng_state(state["torch_rng"])
        self.generator.set_state(state["loader_rng"])
        log.info("resumed from %s at epoch %d", path, self.progress.epoch)

    def fit(self) -> dict[str, Any]:
        """Run the remaining epochs; writes ``summary.json`` and returns it."""
        config = self.config
        model: torch.nn.Module = self.model
        if self.world > 1:
            model = DistributedDataParallel(self.model)
        metrics_log = (self.out / "metrics.jsonl").open("a") if self.rank == 0 else None
        try:
            for epoch in range(self.progress.epoch, config.epochs):
                losses = self._train_epoch(model, epoch)
                stop = False
                if metrics_log is not None:
                    stop = self._end_epoch(epoch, losses, metrics_log)
                if config.stop_after_epoch is not None and epoch >= config.stop_after_epoch:
                    stop = True
                if self._agreed(stop):
                    break
        finally:
            if metrics_log is not None:
                metrics_log.close()
        summary = {
            "best_validation_macro_auc": self.progress.best_auc,
            "steps": self.progress.step,
            "seconds_per_step": self._seconds_per_step(),
            "train_studies": self.run.train_studies,
            "validation_studies": self.run.validation_studies,
        }
        if self.rank == 0:
            (self.out / "summary.json").write_text(json.dumps(summary, indent=2))
        return summary

    def _train_epoch(self, model: torch.nn.Module, epoch: int) -> list[float]:
        """One pass over the training studies (or until ``max_steps``); the batch losses."""
        config, progress = self.config, self.progress
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        self.train_data.set_epoch(epoch)
        model.train()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        balance_weight = self.run.molre.load_balancing_weight if self.run.molre else 0.0
        autocast: AbstractContextManager[Any] = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if self.device.type == "cuda"
            else nullcontext()
        )
        losses = []
        tick = time.perf_counter()
        for i, (volume, labels, _) in enumerate(self.train_loader):
            with autocast:
                output = model(volume.to(self.device))
                loss = masked_multilabel_loss(
                    output.logits.float(), labels.to(self.device), self.pos_weight, config.loss,
                    config.focal_gamma,
                )  # fmt: skip
                if balance_weight:
                    loss = loss + balance_weight * load_balancing_loss(output.gates.float())
            (loss / config.grad_accumulation).backward()
            losses.append(float(loss.detach()))
            if (i + 1) % config.grad_accumulation == 0:
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                progress.step += 1
                self.step_times.append(time.perf_counter() - tick)
                tick = time.perf_counter()
                if config.max_steps and progress.step >= config.max_steps:
                    break
        return losses

    def _end_epoch(self, epoch: int, losses: list[float], metrics_log: IO[str]) -> bool:
        """Rank 0: validate, keep the best checkpoint, log, save ``last.pt``; whether to stop."""
        config, progress = self.config, self.progress
        predictions = predict(
            self.model, self.validation_loader, self.device, config.adapter, self.validation_uids
        )
        auc = _safe_macro_auc(predictions)
        if auc > progress.best_auc:
            progress.best_auc, progress.stale = auc, 0
            torch.save({"model": self.model.trainable_state_dict()}, self.out / BEST_CHECKPOINT)
            predictions.save(self.out / "validation_predictions.npz")
        else:
            progress.stale += 1
        record = {
            "epoch": epoch,
            "step": progress.step,
            "train_loss": float(np.mean(losses)) if losses else None,
            "validation_macro_auc": auc,
            "lr": self.scheduler.get_last_lr()[0],
            "seconds_per_step": self._seconds_per_step(),
        }
        metrics_log.write(json.dumps(record) + "\n")
        metrics_log.flush()
        log.info(
            "epoch %d: loss %.4f, validation macro AUC %.4f", epoch, record["train_loss"] or 0, auc
        )
        self._save_last(epoch)
        return progress.stale >= config.patience or bool(
            config.max_steps and progress.step >= config.max_steps
        )

    def _save_last(self, epoch: int) -> None:
        torch.save(
            {
                "model": self.model.trainable_state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "epoch": epoch,
                "step": self.progress.step,
                "best_auc": self.progress.best_auc,
                "stale": self.progress.stale,
                "torch_rng": torch.get_rng_state(),
                "loader_rng": self.generator.get_state(),
            },
            self.out / LAST_CHECKPOINT,
        )

    def _agreed(self, stop: bool) -> bool:
        """Rank 0's decision to stop, on every rank."""
        if self.world > 1:
            flag = torch.tensor([int(stop)])
            dist.broadcast(flag, src=0)
            stop = bool(flag.item())
        return stop

    def _seconds_per_step(self) -> float | None:
        """The median step time of this invocation; a run resumed with no epochs left reports
        the last one its metrics recorded, not none."""
        if self.step_times:
            return float(np.median(self.step_times))
        path = self.out / "metrics.jsonl"
        recorded = (
            [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        )
        times = [r["seconds_per_step"] for r in recorded if r.get("seconds_per_step") is not None]
        return float(times[-1]) if times else None


def _parameter_groups(model: HeadCTModel, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: routers at ``lr * router_lr_scale``, the backbone itself (adapter full) at
    ``backbone_lr``, everything else training changes at ``lr``."""
    own, routers, backbone = [], [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if name.startswith("backbone.") and config.adapter == "full":
            backbone.append(parameter)
        elif is_router(name):
            routers.append(parameter)
        else:
            own.append(parameter)
    groups: list[dict[str, Any]] = [{"params": own, "lr": config.lr}]
    if routers:
        groups.append({"params": routers, "lr": config.lr * config.router_lr_scale})
    if backbone:
        groups.append({"params": backbone, "lr": config.backbone_lr})
    return groups


def _distributed() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _safe_macro_auc(predictions: Predictions) -> float:
    auc = macro_auc(predictions)
    return float(auc) if auc is not None and not math.isnan(auc) else 0.0
