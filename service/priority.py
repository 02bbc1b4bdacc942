"""The study's triage priority from its 75 finding probabilities.

Two rules, chosen by the model card:

- **Findings** (every card): the study is critical when any critical finding is positive (at or
  above its threshold), else urgent when any urgent finding is, else routine
  (``service.findings.triage_priority``).
- **Study scores** (cards with ``priority_scores``): a level also fires when its study-level score
  reaches the score's threshold. A score is a linear function of the 75 findings' logits,
  ``weights . (logit(p) - center) + bias`` (``center``: each logit's mean on the validation set),
  fitted there to tell studies of that level (or higher) from the rest. Thirty-five critical
  findings each read on its own multiply their false positives; a score weighs them together (a
  bleed raises several hemorrhage findings at once, noise raises one), so it separates critical
  studies better at the same sensitivity. A positive finding still sets its level, so the
  findings a user reads never contradict the priority.

When a score alone sets the priority, no finding of that level is positive; the finding of that
level that adds the most to the score, ``weight * (logit - center)``, is then named as the driver
(and the key slice shows it), and ``basis`` says ``study_score``. (Measured on the demo model:
its key slice lies in the lesion more often than that of the finding nearest its threshold.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from service.findings import FINDINGS, TriageClass, TriagePriority

# Probabilities are clipped to [CLIP, 1 - CLIP] before the logit: the scores stay finite.
CLIP = 1e-6
LEVELS = ("critical", "urgent")
_CLASS = {"critical": TriageClass.CRITICAL, "urgent": TriageClass.URGENT}
_RANK = {"critical": 2, "urgent": 1}
_PRIORITY = {2: TriagePriority.CRITICAL, 1: TriagePriority.URGENT, 0: TriagePriority.ROUTINE}
Basis = Literal["findings", "study_score"]


class StudyScore(Protocol):
    """What a score needs (``service.model_card.CardPriorityScore`` has it)."""

    @property
    def level(self) -> str: ...

    @property
    def weights(self) -> Sequence[float]: ...

    @property
    def center(self) -> Sequence[float]: ...

    @property
    def bias(self) -> float: ...

    @property
    def threshold(self) -> float: ...


def finding_logits(probabilities: np.ndarray) -> np.ndarray:
    """The logits the scores read: ``log(p / (1 - p))`` with ``p`` clipped to [CLIP, 1 - CLIP]."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), CLIP, 1 - CLIP)
    logits: np.ndarray = np.log(p / (1 - p))
    return logits


def score_values(score: StudyScore, probabilities: np.ndarray) -> np.ndarray:
    """The score of each study ([N, 75] probabilities, or one study's [75])."""
    values: np.ndarray = contributions(score, probabilities).sum(axis=-1) + score.bias
    return values


def contributions(score: StudyScore, probabilities: np.ndarray) -> np.ndarray:
    """Each finding's share of the score: ``weight * (logit - center)``, same shape as
    ``probabilities``."""
    shares: np.ndarray = np.asarray(score.weights) * (
        finding_logits(probabilities) - np.asarray(score.center)
    )
    return shares


def _class_mask(level: str) -> np.ndarray:
    return np.array([f.triage is _CLASS[level] for f in FINDINGS])


def study_levels(
    probabilities: np.ndarray,
    thresholds: np.ndarray,
    scores: Sequence[StudyScore] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per study ([N, 75] probabilities): its priority (2 critical, 1 urgent, 0 routine) and
    whether a study score alone set it (no finding of that level was positive)."""
    probabilities = np.atleast_2d(np.asarray(probabilities, dtype=np.float64))
    positive = probabilities >= np.asarray(thresholds)[None, :]
    by_score = {s.level: score_values(s, probabilities) >= s.threshold for s in scores or ()}
    levels = np.zeros(len(probabilities), dtype=np.int64)
    from_score = np.zeros(len(probabilities), dtype=bool)
    for level in LEVELS:  # critical first: a higher level is never overwritten
        found = positive[:, _class_mask(level)].any(axis=1)
        scored = by_score.get(level, np.zeros(len(probabilities), dtype=bool))
        fires = (levels == 0) & (found | scored)
        from_score |= fires & ~found
        levels = np.where(fires, _RANK[level], levels)
    return levels, from_score


@dataclass(frozen=True)
class PriorityDecision:
    """One study's priority, the findings behind it, and what set it."""

    priority: TriagePriority
    drivers: list[str]  # codes, in card order
    basis: Basis | None  # None for routine


def decide(
    probabilities: np.ndarray,
    thresholds: np.ndarray,
    scores: Sequence[StudyScore] | None = None,
) -> PriorityDecision:
    """The priority of one study ([75] probabilities) and its drivers: the positive findings of
    its level, or, when a study score alone set it, the finding of that level that adds the most
    to the score."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    levels, from_score = study_levels(probabilities, thresholds, scores)
    rank = int(levels[0])
    priority = _PRIORITY[rank]
    if rank == 0:
        return PriorityDecision(priority, [], None)
    mask = _class_mask(priority.value)
    positive = probabilities >= np.asarray(thresholds)
    if not from_score[0]:
        drivers = [f.code for f, m, p in zip(FINDINGS, mask, positive, strict=True) if m and p]
        return PriorityDecision(priority, drivers, "findings")
    score = next(s for s in scores or () if s.level == priority.value)
    shares = contributions(score, probabilities)
    largest = int(np.flatnonzero(mask)[np.argmax(shares[mask])])
    return PriorityDecision(priority, [FINDINGS[largest].code], "study_score")
