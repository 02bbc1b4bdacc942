"""The training loop behind ``headct train``: AdamW, warm-up then cosine, gradient accumulation,
bf16 autocast on GPU, augmentations, checkpoint and resume, early stopping on validation macro AUC,
a JSON-lines metrics log, and DDP when started by ``torchrun`` (NCCL on GPUs, gloo on CPUs).

A run folder holds ``config.json`` (everything needed to rebuild the model: backbone name and the
SHA-256 of its checkpoint, adapter config, grid, windows, training config), ``best.pt`` (only what
training changed: adapters, routers, pooling, head), ``last.pt`` (that plus optimizer, schedule
and RNG state, for ``--resume``), ``metrics.jsonl`` and ``validation_predictions.npz``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from service.findings import FINDING_CODES
from service.preprocess import ModelGrid
from training.data import build_cache, positive_weights, read_labels, split_by_patient
from training.dataset import Augmentation, CachedStudyDataset
from training.evaluate import Predictions, macro_auc
from training.losses import load_balancing_loss, masked_multilabel_loss
from training.model import HeadCTModel, build_model
from training.molre import MoLREConfig

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: str
    out: str
    backbone: str = "tiny_dinov2"
    weights: str | None = None
    adapter: str = "molre"  # probe | lora | molre | full
    molre: dict[str, Any] = field(default_factory=dict)  # MoLREConfig fields
    grid: tuple[int, int, int] = (32, 256, 256)
    epochs: int = 10
    batch_size: int = 2
    grad_accumulation: int = 1
    lr: float = 1e-3
    backbone_lr: float = 1e-4  # for adapter "full": the pretrained part moves slowly
    # The routers' learning rate is lr times this: their gradient reaches them only through the
    # gates' small effect on the experts' output, so at the experts' rate they hardly move.
    router_lr_scale: float = 1.0
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    loss: str = "focal"
    focal_gamma: float = 2.0
    positive_weight_cap: float = 20.0
    validation_fraction: float = 0.2
    patience: int = 5
    seed: int = 0
    augment: bool = True
    workers: int = 0
    max_steps: int | None = None  # stop early (tests, benchmarks)
    # End this invocation after this epoch; the schedule still spans ``epochs``, and the next
    # invocation resumes from last.pt (time-sliced jobs on preemptible or wall-time-limited nodes).
    stop_after_epoch: int | None = None
    cache: str | None = None  # default: <data>/.cache

    def __post_init__(self) -> None:
        if self.adapter not in ("probe", "lora", "molre", "full"):
            raise ValueError(f"adapter must be probe, lora, molre or full, not {self.adapter!r}")
        if self.batch_size < 1 or self.grad_accumulation < 1:
            raise ValueError("batch_size and grad_accumulation must be at least 1")
        self.grid = tuple(self.grid)  # type: ignore[assignment]


def weights_sha256(weights: str | None) -> str | None:
    """Hash of a backbone checkpoint folder (every file, in name order), or None for random init."""
    if weights is None:
        return None
    from training.backbones import resolve_weights

    root = resolve_weights(weights)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


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


def _lr_lambda(total_steps: int, warmup_steps: int) -> Any:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def model_from_config(config: dict[str, Any]) -> HeadCTModel:
    """Rebuild the network a run trained (without its trained weights)."""
    molre = MoLREConfig.from_dict(config["molre"]) if config.get("molre") else None
    # Initialisation that the checkpoint does not hold (a backbone without a weights folder, the
    # adapters' A matrices before loading) is seeded like training did, so it is reproducible.
    torch.manual_seed(config["train"]["seed"])
    return build_model(
        config["backbone"],
        adapter=config["adapter"],
        molre=molre,
        weights=Path(config["weights"]) if config.get("weights") else None,
    )


def load_run(run: Path, *, checkpoint: str = "best.pt") -> tuple[HeadCTModel, dict[str, Any]]:
    """The trained model of a run folder, checking that its backbone checkpoint is unchanged."""
    config = json.loads((run / "config.json").read_text())
    expected = config.get("weights_sha256")
    if expected and weights_sha256(config.get("weights")) != expected:
        raise ValueError(
            f"the backbone checkpoint {config['weights']} changed since {run} was trained "
            "(SHA-256 differs): the adapters would not fit it"
        )
    model = model_from_config(config)
    state = torch.load(run / checkpoint, map_location="cpu", weights_only=True)
    model.load_trainable_state_dict(state["model"])
    model.eval()
    return model, config


@torch.no_grad()
def predict(
    model: torch.nn.Module, loader: DataLoader, device: torch.device, run_name: str,
    study_uids: list[str],
) -> Predictions:  # fmt: skip
    model.eval()
    labels, probabilities, routers = [], [], []
    for volume, target, _ in loader:
        output = model(volume.to(device))
        labels.append(target.numpy())
        probabilities.append(output.probabilities.float().cpu().numpy())
        routers.append(output.router_weights.float().cpu().numpy())
    router = np.concatenate(routers)
    return Predictions(
        run_name=run_name,
        study_uids=study_uids,
        labels=np.concatenate(labels),
        probabilities=np.concatenate(probabilities),
        router_weights=router if router.shape[1] > 1 else None,
    )


def train(config: TrainConfig) -> dict[str, Any]:
    """Train one run; returns a summary (best validation macro AUC, steps, seconds per step)."""
    rank, world = _distributed()
    _seed_everything(config.seed + rank)
    device = torch.device(
        f"cuda:{rank % torch.cuda.device_count()}" if torch.cuda.is_available() else "cpu"
    )
    out = Path(config.out)
    data = Path(config.data)
    grid = ModelGrid(*config.grid)
    cache = Path(config.cache) if config.cache else data / ".cache"
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        studies, failures = build_cache(read_labels(data), cache, grid)
    if world > 1:
        dist.barrier()
    if rank != 0:
        studies, failures = build_cache(read_labels(data), cache, grid)  # all cached by rank 0
    train_set, validation_set = split_by_patient(studies, config.validation_fraction, config.seed)

    molre = MoLREConfig(**config.molre) if config.adapter == "molre" else None
    if config.adapter == "lora":
        molre = MoLREConfig(**{**config.molre, "experts": 1})
    torch.manual_seed(config.seed)  # the same initialisation on every rank and on reload
    model = build_model(
        config.backbone,
        adapter=config.adapter,
        molre=molre,
        weights=Path(config.weights) if config.weights else None,
    ).to(device)
    run_config = {
        "backbone": config.backbone,
        "weights": config.weights,
        "weights_sha256": weights_sha256(config.weights),
        "adapter": config.adapter,
        "molre": molre.to_dict() if molre else None,
        "grid": list(config.grid),
        "findings": list(FINDING_CODES),
        "train": asdict(config),
        "train_studies": len(train_set),
        "validation_studies": len(validation_set),
        "skipped_studies": failures,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if rank == 0:
        (out / "config.json").write_text(json.dumps(run_config, indent=2))

    train_data = CachedStudyDataset(
        train_set, Augmentation() if config.augment else None, seed=config.seed
    )
    validation_data = CachedStudyDataset(validation_set)
    sampler = DistributedSampler(train_data, seed=config.seed) if world > 1 else None
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(
        train_data,
        batch_size=config.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        num_workers=config.workers,
        generator=generator,
        drop_last=len(train_data) > config.batch_size * world,
    )
    validation_loader = DataLoader(validation_data, batch_size=config.batch_size)
    validation_uids = [s.record.study_uid for s in validation_set]

    pos_weight = torch.from_numpy(positive_weights(train_set, config.positive_weight_cap)).to(
        device
    )
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    backbone_params = [
        p for n, p in trainable if n.startswith("backbone.") and config.adapter == "full"
    ]
    router_params = [p for n, p in trainable if ".router." in n]
    other_params = [
        p
        for n, p in trainable
        if not (n.startswith("backbone.") and config.adapter == "full") and ".router." not in n
    ]
    groups = [{"params": other_params, "lr": config.lr}]
    if router_params:
        groups.append({"params": router_params, "lr": config.lr * config.router_lr_scale})
    if backbone_params:
        groups.append({"params": backbone_params, "lr": config.backbone_lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, len(train_loader) // config.grad_accumulation)
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, max(1, int(total_steps * config.warmup_fraction)))
    )
    balance_weight = molre.load_balancing_weight if molre else 0.0

    start_epoch, step, best_auc, stale = 0, 0, -1.0, 0
    last_path = out / "last.pt"
    if last_path.exists():
        state = torch.load(last_path, map_location="cpu", weights_only=False)
        model.load_trainable_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = state["epoch"] + 1, state["step"]
        best_auc, stale = state["best_auc"], state["stale"]
        torch.set_rng_state(state["torch_rng"])
        generator.set_state(state["loader_rng"])
        log.info("resumed from %s at epoch %d", last_path, start_epoch)

    wrapped: torch.nn.Module = model
    if world > 1:
        wrapped = DistributedDataParallel(model)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    )
    metrics_log = (out / "metrics.jsonl").open("a") if rank == 0 else None
    step_times: list[float] = []
    summary: dict[str, Any] = {}
    try:
        for epoch in range(start_epoch, config.epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            train_data.set_epoch(epoch)
            wrapped.train()
            losses = []
            tick = time.perf_counter()
            for i, (volume, labels, _) in enumerate(train_loader):
                with autocast:
                    output = wrapped(volume.to(device))
                    loss = masked_multilabel_loss(
                        output.logits.float(), labels.to(device), pos_weight, config.loss,
                        config.focal_gamma,
                    )  # fmt: skip
                    if balance_weight:
                        loss = loss + balance_weight * load_balancing_loss(output.gates.float())
                (loss / config.grad_accumulation).backward()
                losses.append(float(loss.detach()))
                if (i + 1) % config.grad_accumulation == 0:
                    torch.nn.utils.clip_grad_norm_([p for _, p in trainable], 1.0)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    step_times.append(time.perf_counter() - tick)
                    tick = time.perf_counter()
                    if config.max_steps and step >= config.max_steps:
                        break
            stop = False
            if rank == 0:
                predictions = predict(
                    model, validation_loader, device, config.adapter, validation_uids
                )
                auc = _safe_macro_auc(predictions)
                improved = auc > best_auc
                if improved:
                    best_auc, stale = auc, 0
                    torch.save({"model": model.trainable_state_dict()}, out / "best.pt")
                    predictions.save(out / "validation_predictions.npz")
                else:
                    stale += 1
                record = {
                    "epoch": epoch,
                    "step": step,
                    "train_loss": float(np.mean(losses)) if losses else None,
                    "validation_macro_auc": auc,
                    "lr": scheduler.get_last_lr()[0],
                    "seconds_per_step": float(np.median(step_times)) if step_times else None,
                }
                assert metrics_log is not None
                metrics_log.write(json.dumps(record) + "\n")
                metrics_log.flush()
                log.info(
                    "epoch %d: loss %.4f, validation macro AUC %.4f",
                    epoch,
                    record["train_loss"] or 0,
                    auc,
                )
                torch.save(
                    {
                        "model": model.trainable_state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "step": step,
                        "best_auc": best_auc,
                        "stale": stale,
                        "torch_rng": torch.get_rng_state(),
                        "loader_rng": generator.get_state(),
                    },
                    last_path,
                )
                stop = stale >= config.patience or bool(
                    config.max_steps and step >= config.max_steps
                )
            if config.stop_after_epoch is not None and epoch >= config.stop_after_epoch:
                stop = True
            if world > 1:
                flag = torch.tensor([int(stop)])
                dist.broadcast(flag, src=0)
                stop = bool(flag.item())
            if stop:
                break
        summary = {
            "best_validation_macro_auc": best_auc,
            "steps": step,
            "seconds_per_step": float(np.median(step_times)) if step_times else None,
            "train_studies": len(train_set),
            "validation_studies": len(validation_set),
        }
        if rank == 0:
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
    finally:
        if metrics_log is not None:
            metrics_log.close()
        if world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
    return summary


def _safe_macro_auc(predictions: Predictions) -> float:
    auc = macro_auc(predictions)
    return float(auc) if auc is not None and not math.isnan(auc) else 0.0
