"""Pretrain a stand-in foundation backbone on phantoms streamed from the generator.

No pretrained weights can be downloaded here, so the project makes its own: a small ViT trained
with **slice-level** targets (which slices of a study show each finding, from the generator's
annotations) on a subset of the findings, on fresh studies drawn without end from
``generate_study``: no study is seen twice, so the backbone cannot memorise a data set. An
auxiliary head predicts the slice's position in the head (eight bins, inferior to superior), which
teaches the anatomy that the router and the attention read.

    headct pretrain --out runs/backbone                 # runs until --steps, resumable
    headct pretrain --out runs/backbone                 # again: resumes from last.pt
    headct pretrain --out runs/backbone --export training/weights/demo_vit

Each study is generated at the source matrix (256 x 256 by default, as ``headct synth`` writes
it) and block-averaged to the model grid, which is what the service's ingest does to the same
study (area averaging), then rounded to INT16 HU as the gateway sends it.

The run folder holds ``config.json``, ``last.pt`` (model, optimiser, schedule, the position in the
study stream; written every ``checkpoint_every_s`` seconds and at the end), ``validation.jsonl``
(the validation curve: slice-level and study-level macro AUC on a fixed set of held-out studies)
and ``validation.npz`` (that set, generated once). A run stopped hard loses at most one checkpoint
interval; run the same command again to continue.

Everything is SYNTHETIC: the backbone has never seen patient data.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing as mp
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from service.contract import DEFAULT_WINDOWS
from training.backbones import SliceBackbone, create_backbone
from training.ceiling import CEILING_CNN, critical_separation
from training.config import PretrainConfig
from training.model import PRETRAINING_CARD, PRETRAINING_HEADS, SlicePixels

log = logging.getLogger(__name__)

POSITION_BINS = 8
# Seeds of the streams: training studies are [seed, TRAIN_STREAM, i], validation [seed, VAL, i].
TRAIN_STREAM = 1
VALIDATION_STREAM = 2


@dataclass
class SliceStudy:
    """One phantom on the model grid with its slice-level targets."""

    hu: np.ndarray  # int16 [D, H, W]
    targets: np.ndarray  # uint8 [D, F]: finding f visible on grid slice d
    labels: np.ndarray  # uint8 [75]: study-level labels, all findings


def make_study(config: PretrainConfig, stream: int, index: int) -> SliceStudy:
    """Study ``index`` of a stream: the same arguments always give the same study."""
    from synth import SynthOptions, generate_study

    depth, height, width = config.grid
    options = SynthOptions(
        slices=depth, matrix=config.source_matrix, prevalence_scale=config.prevalence_scale
    )
    study = generate_study(np.random.default_rng([config.seed, stream, index]), options)
    fy, fx = config.source_matrix // height, config.source_matrix // width
    hu = study.hu.reshape(depth, height, fy, width, fx).mean(axis=(2, 4))
    hu = np.clip(np.rint(hu), -1024, 32767).astype(np.int16)
    targets = np.zeros((depth, len(config.findings)), np.uint8)
    for column, code in enumerate(config.findings):
        for s in study.lesion_slices.get(code, ()):
            targets[int(s), column] = 1
    return SliceStudy(hu, targets, study.labels)


class SliceCNN(nn.Module):
    """A plain 2D CNN (9 conv + batch-norm + ReLU layers, widths 24 to 160, a stride-2 stem,
    global mean and max pooling): the reference model of the ceiling measurement, deliberately
    not the product's architecture. Features: [N, 320]."""

    name = CEILING_CNN
    kind = "2d"
    input_size = 128
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    feature_dim = 320

    def __init__(self) -> None:
        super().__init__()
        plan = [(24, 2), (32, 1), (48, 2), (64, 1), (96, 2), (96, 1), (128, 2), (160, 1), (160, 1)]
        layers: list[nn.Module] = []
        channels = 3
        for width, stride in plan:
            layers += [
                nn.Conv2d(channels, width, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            channels = width
        self.encoder = nn.Sequential(*layers)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        maps = self.encoder(pixels)
        return torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=1)


def make_backbone(name: str) -> Any:
    """A registered backbone, randomly initialised, or the ceiling's reference CNN."""
    return SliceCNN() if name == CEILING_CNN else create_backbone(name)


class SlicePretrainer(nn.Module):
    """HU slices [N, H, W] -> (finding logits [N, F], position logits [N, 8]) through the backbone,
    windowed and normalised exactly as ``HeadCTModel`` feeds it."""

    def __init__(self, backbone: SliceBackbone, findings: int) -> None:
        super().__init__()
        assert isinstance(backbone, nn.Module)
        self.backbone = backbone
        self.pixels = SlicePixels(DEFAULT_WINDOWS, backbone)
        self.findings = nn.Linear(backbone.feature_dim, findings)
        self.position = nn.Linear(backbone.feature_dim, POSITION_BINS)

    def forward(self, hu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(self.pixels(hu.unsqueeze(1)))  # each slice a one-slice volume
        return self.findings(features), self.position(features)


class StudyStream:
    """Fresh studies ``start, start+1, ...`` of one stream, generated ahead in worker processes."""

    def __init__(self, config: PretrainConfig, start: int, ahead: int = 8) -> None:
        self.config, self.next_index, self.ahead = config, start, ahead
        self.pool = mp.get_context("fork").Pool(config.workers) if config.workers > 0 else None
        self.pending: deque[Any] = deque()
        self._fill()

    def _fill(self) -> None:
        if self.pool is None:
            return
        while len(self.pending) < self.ahead:
            index = self.next_index + len(self.pending)
            self.pending.append(
                self.pool.apply_async(make_study, (self.config, TRAIN_STREAM, index))
            )

    def get(self) -> SliceStudy:
        """The next study; ``consumed`` (the resume point) advances by one."""
        if self.pool is None:
            study = make_study(self.config, TRAIN_STREAM, self.next_index)
        else:
            study = self.pending.popleft().get()
        self.next_index += 1
        self._fill()
        return study

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


def augment(hu: torch.Tensor, rng: np.random.Generator, shift_px: int) -> torch.Tensor:
    """A batch of slices [N, H, W], mirrored left-right half the time (findings are lateralised
    either way) and, with ``shift_px``, rolled by up to that many pixels in each direction (heads
    sit anywhere in the field of view: where a lesion lies in the slice is no cue)."""
    if rng.random() < 0.5:
        hu = hu.flip(-1)
    if shift_px:
        dy, dx = (int(v) for v in rng.integers(-shift_px, shift_px + 1, 2))
        hu = torch.roll(hu, (dy, dx), dims=(-2, -1))
    return hu


def _schedule(step: int, config: PretrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _validation_set(config: PretrainConfig, out: Path) -> dict[str, np.ndarray]:
    path = out / "validation.npz"
    if path.is_file():
        with np.load(path) as data:
            stored = dict(data)
        if len(stored["labels"]) == config.validation_studies:
            return stored
    studies = [make_study(config, VALIDATION_STREAM, i) for i in range(config.validation_studies)]
    data = {
        "hu": np.stack([s.hu for s in studies]),
        "targets": np.stack([s.targets for s in studies]),
        "labels": np.stack([s.labels for s in studies]),
    }
    np.savez_compressed(path, **data)
    return data


def _auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    if labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, scores))


def validate(
    model: SlicePretrainer, data: dict[str, np.ndarray], codes: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Slice-level macro AUC, study-level macro AUC (max over slices) on the pretraining
    findings, and the slice-position accuracy; with ``codes``, also each finding's study AUC
    and its count of positive studies."""
    model.eval()
    hu = torch.from_numpy(data["hu"])
    studies, depth = hu.shape[:2]
    logits, positions = [], []
    with torch.no_grad():
        for start in range(0, studies, 4):
            chunk = hu[start : start + 4].flatten(0, 1)
            finding_logits, position_logits = model(chunk)
            logits.append(finding_logits)
            positions.append(position_logits.argmax(-1))
    model.train()
    scores = torch.cat(logits).sigmoid().numpy().reshape(studies, depth, -1)
    targets = data["targets"]
    slice_aucs = [
        _auc(scores[..., f].ravel(), targets[..., f].ravel()) for f in range(scores.shape[-1])
    ]
    study_aucs = [
        _auc(scores[..., f].max(axis=1), targets[..., f].max(axis=1))
        for f in range(scores.shape[-1])
    ]
    expected = np.tile(_position_bins(depth), studies)
    predicted = torch.cat(positions).numpy()
    slice_defined = [a for a in slice_aucs if a is not None]
    study_defined = [a for a in study_aucs if a is not None]
    result: dict[str, Any] = {
        "slice_macro_auc": float(np.mean(slice_defined)) if slice_defined else None,
        "study_macro_auc": float(np.mean(study_defined)) if study_defined else None,
        "findings_scored": len(study_defined),
        "position_accuracy": float((predicted == expected).mean()),
    }
    if codes:
        positives = targets.max(axis=1).sum(axis=0)
        result["per_finding"] = {
            code: {"study_auc": auc, "positive_studies": int(n)}
            for code, auc, n in zip(codes, study_aucs, positives, strict=True)
        }
        triage = critical_separation(scores.max(axis=1), data["labels"], tuple(codes))
        if triage is not None:
            result["critical_triage"] = triage
    return result


def _position_bins(depth: int) -> np.ndarray:
    return np.minimum(np.arange(depth) * POSITION_BINS // depth, POSITION_BINS - 1)


def _positive_weights(config: PretrainConfig, data: dict[str, np.ndarray]) -> torch.Tensor:
    targets = data["targets"].reshape(-1, len(config.findings)).astype(np.float64)
    positives = targets.sum(0)
    negatives = len(targets) - positives
    weights = np.sqrt(negatives / np.maximum(positives, 1))
    return torch.tensor(np.clip(weights, 1.0, config.positive_weight_cap), dtype=torch.float32)


def _save(path: Path, state: dict[str, Any]) -> None:
    temporary = path.with_suffix(".tmp")
    torch.save(state, temporary)
    temporary.replace(path)  # atomic: a hard stop mid-write leaves the previous checkpoint


REWARM_STEPS = 100


def pretrain(
    config: PretrainConfig, *, max_seconds: float | None = None, init_from: Path | None = None
) -> dict[str, Any]:
    """Train (or resume) until ``config.steps`` or ``max_seconds``; returns the last validation.

    The run resumes from its own ``last.pt`` when there is one. Without it, ``init_from`` (a
    folder ``export_weights`` wrote, such as the committed ``training/weights/demo_vit``)
    continues that backbone on another machine: its encoder and heads, its step count and its
    place in the study stream, with a fresh optimiser re-warmed over REWARM_STEPS steps."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / "config.json"
    if config_path.is_file():
        recorded = PretrainConfig.from_dict(json.loads(config_path.read_text()))
        # Only what does not change the model or the data may differ on resume.
        free = {
            "out",
            "steps",
            "validate_every",
            "checkpoint_every_s",
            "workers",
            "threads",
            "per_finding",
        }
        differs = [
            f.name
            for f in fields(PretrainConfig)
            if f.name not in free and getattr(recorded, f.name) != getattr(config, f.name)
        ]
        if differs:
            raise ValueError(f"{out} was started with other settings: {differs}")
    config_path.write_text(json.dumps(asdict(config), indent=2) + "\n")
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)

    model = SlicePretrainer(make_backbone(config.backbone), len(config.findings))
    step, consumed, offset = 0, 0, 0
    last = out / "last.pt"
    state = torch.load(last, weights_only=False) if last.is_file() else None
    if state is not None:
        offset = int(state.get("schedule_offset", 0))
    elif init_from is not None:
        card = _warm_start(model, config, Path(init_from), out)
        step = offset = int(card["steps"])
        consumed = int(card["studies_seen"])
        log.info("continuing %s from step %d (%d studies consumed)", init_from, step, consumed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )

    def factor(s: int) -> float:
        rewarm = min(1.0, (s + 1) / REWARM_STEPS) if offset else 1.0
        return _schedule(offset + s, config) * rewarm

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        step, consumed = state["step"], state["consumed"]
        log.info("resumed at step %d (%d studies consumed)", step, consumed)

    teacher = _teacher(config) if config.teacher else None
    validation = _validation_set(config, out)
    pos_weight = _positive_weights(config, validation)
    depth = config.grid[0]
    positions = torch.from_numpy(_position_bins(depth))
    rng = np.random.default_rng([config.seed, 3, step])
    stream = StudyStream(config, consumed)
    buffer: deque[SliceStudy] = deque(maxlen=config.buffer_studies)
    started = last_checkpoint = time.monotonic()
    credit = 0.0
    result: dict[str, Any] = {}

    def checkpoint() -> None:
        _save(
            last,
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "schedule_offset": offset,
                # The buffer is refilled on resume: its studies are counted as not consumed.
                "consumed": stream.next_index - len(buffer),
            },
        )

    try:
        while len(buffer) < config.buffer_studies:
            buffer.append(stream.get())
        model.train()
        window_loss, window_steps, window_started = 0.0, 0, time.monotonic()
        while step < config.steps:
            credit += config.studies_per_step
            while credit >= 1:
                buffer.append(stream.get())
                credit -= 1
            picks = rng.integers(0, len(buffer) * depth, config.slices_per_step)
            studies, slices = picks // depth, picks % depth
            chosen = list(zip(studies, slices, strict=True))
            hu = torch.from_numpy(np.stack([buffer[s].hu[d] for s, d in chosen]))
            targets = torch.from_numpy(np.stack([buffer[s].targets[d] for s, d in chosen])).float()
            hu = augment(hu, rng, config.shift_px)
            finding_logits, position_logits = model(hu)
            loss = F.binary_cross_entropy_with_logits(
                finding_logits, targets, pos_weight=pos_weight
            )
            if teacher is not None:
                with torch.no_grad():
                    soft = torch.sigmoid(teacher(hu))
                follow = F.binary_cross_entropy_with_logits(
                    finding_logits, soft, pos_weight=pos_weight
                )
                loss = (1 - config.distill_weight) * loss + config.distill_weight * follow
            loss = loss + config.position_weight * F.cross_entropy(
                position_logits, positions[torch.from_numpy(slices)]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            window_loss += loss.item()
            window_steps += 1

            done = step >= config.steps
            out_of_time = max_seconds is not None and time.monotonic() - started > max_seconds
            if step % config.validate_every == 0 or done or out_of_time:
                result = validate(model, validation, config.findings if config.per_finding else ())
                elapsed = time.monotonic() - window_started
                result |= {
                    "step": step,
                    "studies_seen": stream.next_index,
                    "train_loss": window_loss / max(window_steps, 1),
                    "slices_per_s": window_steps * config.slices_per_step / max(elapsed, 1e-9),
                    "lr": scheduler.get_last_lr()[0],
                    "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
                with (out / "validation.jsonl").open("a") as handle:
                    handle.write(json.dumps(result) + "\n")
                log.info("pretrain %s", json.dumps(result))
                window_loss, window_steps, window_started = 0.0, 0, time.monotonic()
            due = time.monotonic() - last_checkpoint > config.checkpoint_every_s
            if done or out_of_time or due:
                checkpoint()
                last_checkpoint = time.monotonic()
            if out_of_time:
                break
    finally:
        stream.close()
    return result


CONTINUED_FROM = "continued_from.json"


def _warm_start(
    model: SlicePretrainer, config: PretrainConfig, folder: Path, out: Path
) -> dict[str, Any]:
    """Load an exported backbone and its heads into ``model``; returns the folder's card.

    The findings, grid, prevalence and seed must be the ones it was pretrained with. The data
    recipe (source matrix, buffer, shift, schedule) may change, and so may the registered
    backbone when its encoder is the same (``demo_vit`` into ``demo_vit_max``): a head whose
    width no longer matches the slice features starts afresh. What the folder was made with is
    kept in ``out/continued_from.json`` for the exported card."""
    from safetensors.torch import load_file

    card = json.loads((folder / PRETRAINING_CARD).read_text())
    recorded = PretrainConfig.from_dict(card["config"])
    for name in ("findings", "grid", "prevalence_scale", "seed"):
        if getattr(recorded, name) != getattr(config, name):
            raise ValueError(f"{folder} was pretrained with another {name}; cannot continue it")
    encoder = create_backbone(config.backbone, weights=folder).encoder  # checks the architecture
    model.backbone.encoder.load_state_dict(encoder.state_dict())
    heads = load_file(folder / PRETRAINING_HEADS)
    for name, head in (("findings", model.findings), ("position", model.position)):
        state = {
            k[len(name) + 1 :]: v.float() for k, v in heads.items() if k.startswith(f"{name}.")
        }
        if state["weight"].shape == head.weight.shape:
            head.load_state_dict(state)
        else:
            log.info(
                "%s head starts afresh: the slice features are now %d wide", name, head.in_features
            )
    history = card.get("continued_from", [])
    earlier = {k: card[k] for k in ("backbone", "steps", "studies_seen", "validation_curve")}
    earlier["config"] = card["config"]
    (out / CONTINUED_FROM).write_text(json.dumps([*history, earlier], indent=1) + "\n")
    return card


class _Teacher(nn.Module):
    """A trained slice model's finding logits, in the student's finding order."""

    def __init__(self, model: SlicePretrainer, index: list[int]) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.register_buffer("index", torch.tensor(index), persistent=False)

    def forward(self, hu: torch.Tensor) -> torch.Tensor:
        return self.model(hu)[0][:, self.index]


def _teacher(config: PretrainConfig) -> _Teacher:
    """The run folder ``config.teacher`` as a frozen teacher of ``config.findings``."""
    folder = Path(str(config.teacher))
    if not (folder / "last.pt").is_file():
        raise ValueError(f"teacher {folder} has no last.pt: give a pretrain or ceiling run folder")
    model, recorded = load_pretrainer(folder)
    if tuple(recorded.grid) != tuple(config.grid):
        raise ValueError(f"teacher {folder} was trained on grid {recorded.grid}, not {config.grid}")
    missing = [code for code in config.findings if code not in recorded.findings]
    if missing:
        raise ValueError(f"teacher {folder} does not predict {len(missing)} findings: {missing}")
    log.info("distilling %s (%s) with weight %g", folder, recorded.backbone, config.distill_weight)
    return _Teacher(model, [recorded.findings.index(code) for code in config.findings])


def load_pretrainer(run: Path) -> tuple[SlicePretrainer, PretrainConfig]:
    """The model of a pretraining run's last checkpoint, and its config."""
    config = PretrainConfig.from_dict(json.loads((Path(run) / "config.json").read_text()))
    model = SlicePretrainer(make_backbone(config.backbone), len(config.findings))
    state = torch.load(Path(run) / "last.pt", weights_only=False)
    model.load_state_dict(state["model"])
    return model.eval(), config


def export_weights(run: Path, folder: Path, *, half: bool = True) -> dict[str, Any]:
    """Write the backbone of ``run`` as a ``save_pretrained`` folder that ``--weights`` reads
    (fp16 by default: the backbone is frozen downstream, and the loader casts to fp32), with a
    card (``PRETRAINING.md`` and ``pretraining.json``) of how it was made."""
    model, config = load_pretrainer(run)
    state = torch.load(Path(run) / "last.pt", weights_only=False)
    curve = [
        json.loads(line)
        for line in (Path(run) / "validation.jsonl").read_text().splitlines()
        if line.strip()
    ]
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    heads = {f"findings.{k}": v for k, v in model.findings.state_dict().items()}
    heads |= {f"position.{k}": v for k, v in model.position.state_dict().items()}
    # The heads let another machine continue the pretraining from this folder (--init-from).
    save_file({k: v.contiguous() for k, v in heads.items()}, folder / PRETRAINING_HEADS)
    encoder = model.backbone.encoder
    if half:
        encoder = encoder.half()
    encoder.save_pretrained(folder)
    last = curve[-1] if curve else {}
    history = Path(run) / CONTINUED_FROM
    card = {
        "backbone": config.backbone,
        "synthetic": True,
        "objective": "slice-level multi-label BCE on the listed findings + slice position (8 bins)"
        + (
            f"; the finding loss {config.distill_weight:g} toward the teacher {config.teacher}'s "
            "slice predictions (distillation), the rest toward the annotations"
            if config.teacher
            else ""
        ),
        "findings": list(config.findings),
        "steps": state["step"],
        "studies_seen": state["consumed"],
        "slices_seen": state["step"] * config.slices_per_step,
        "dtype": "float16" if half else "float32",
        "folder": str(folder),
        "config": asdict(config),
        "last_validation": last,
        "validation_curve": curve,
        # The runs this one continued (--init-from), oldest first: their backbone and recipe.
        "continued_from": json.loads(history.read_text()) if history.is_file() else [],
    }
    (folder / PRETRAINING_CARD).write_text(json.dumps(card, indent=1) + "\n")
    (folder / "PRETRAINING.md").write_text(_card_markdown(card))
    return card


def _recipe(recorded: dict[str, Any]) -> str:
    """One run's data recipe and schedule, from its card (older cards lack newer settings: the
    config fills their defaults, which is what those runs used)."""
    config = PretrainConfig.from_dict(recorded)
    return (
        f"generated at {config.source_matrix} px and averaged to the "
        f"{'x'.join(map(str, config.grid))} grid, {config.buffer_studies} studies in the shuffle "
        f"buffer with {config.studies_per_step:g} new per step, shifted by up to "
        f"{config.shift_px} px, lr {config.lr:g}, position loss weight {config.position_weight:g}"
        + (
            f", distilled from {config.teacher} (weight {config.distill_weight:g})"
            if config.teacher
            else ""
        )
    )


def _command(recorded: dict[str, Any], folder: str | None) -> str:
    """The ``headct pretrain`` command line that makes this run again: every setting that
    differs from its default (run again, the same line resumes the run)."""
    config = PretrainConfig.from_dict(recorded)
    default = PretrainConfig(out=config.out)
    words = ["headct pretrain", f"--out {config.out}"]
    for item in fields(PretrainConfig):
        value = getattr(config, item.name)
        if item.name in ("out", "findings") or value == getattr(default, item.name):
            continue
        option = "--" + item.name.replace("_", "-")
        if isinstance(value, bool):
            words.append(option if value else "--no-" + item.name.replace("_", "-"))
        elif isinstance(value, tuple | list):
            words.append(f"{option} {' '.join(map(str, value))}")
        else:
            words.append(f"{option} {value:g}" if isinstance(value, float) else f"{option} {value}")
    if folder:
        words.append(f"--export {folder}")
    return " ".join(words)


def _card_markdown(card: dict[str, Any]) -> str:
    last = card["last_validation"]
    history = card.get("continued_from", [])
    lines = [
        f"# `{card['backbone']}`: a stand-in foundation backbone pretrained on synthetic phantoms",
        "",
        "**Synthetic data only: not for clinical use.** Made by `headct pretrain` "
        "(`training/pretrain.py`) from nothing: no downloaded weights, no patient data.",
        "",
        f"- Objective: {card['objective']}.",
        f"- Data: {card['studies_seen']:,} fresh phantom studies streamed from the generator "
        f"(prevalence x{card['config']['prevalence_scale']:g}), {card['slices_seen']:,} slices "
        f"in {card['steps']:,} steps; no study came back once it left the shuffle buffer.",
        f"- Recipe: {_recipe(card['config'])}.",
        f"- Command: `{_command(card['config'], card.get('folder'))}`"
        + (" (the last run; the runs it continued are below)." if history else "."),
    ]
    for earlier in history:
        lines.append(
            f"- Continued from `{earlier['backbone']}` after {earlier['steps']:,} steps "
            f"({earlier['studies_seen']:,} studies; {_recipe(earlier['config'])})."
        )
    lines += [
        f"- Findings with slice-level targets ({len(card['findings'])} of 75; the others are left "
        "for the adapters): " + ", ".join(f"`{c}`" for c in card["findings"]) + ".",
        f"- Stored as {card['dtype']}.",
    ]
    if last:
        lines += [
            "",
            f"Last validation ({card['config']['validation_studies']} held-out studies): slice "
            f"macro AUC {last['slice_macro_auc']:.3f}, study macro AUC (max over slices) "
            f"{last['study_macro_auc']:.3f}, slice position accuracy "
            f"{last['position_accuracy']:.3f}.",
        ]
        matrices = {e["config"]["source_matrix"] for e in history}
        if matrices - {card["config"]["source_matrix"]}:
            lines += [
                "",
                "Rows of runs generated at another source matrix were validated on that "
                "matrix's held-out studies (the same seed, rendered differently): compare "
                "within a run.",
            ]
        lines += [
            "",
            "| backbone | step | studies seen | slice macro AUC | study macro AUC | "
            "position acc. |",
            "|---|---|---|---|---|---|",
        ]
        runs = [(e["backbone"], e["validation_curve"]) for e in history]
        for backbone, curve in [*runs, (card["backbone"], card["validation_curve"])]:
            for row in curve:
                lines.append(
                    f"| {backbone} | {row['step']} | {row['studies_seen']} | "
                    f"{row['slice_macro_auc']:.3f} | {row['study_macro_auc']:.3f} | "
                    f"{row['position_accuracy']:.3f} |"
                )
    return "\n".join(lines) + "\n"
