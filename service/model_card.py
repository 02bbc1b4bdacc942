"""The model card: one JSON document that travels with every exported model.

Written once by the export step (into the ONNX metadata, beside ``model.onnx`` as
``model_card.json``, and into ``config.pbtxt`` parameters) and read by the gateway, so training and
serving cannot drift: the grid the gateway resamples to, the finding order and operating
thresholds, the HU windows the graph applies, the router's reference usage for drift monitoring,
and where the model came from.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.contract import AdapterKind, HUWindow
from service.findings import FINDINGS, Finding
from service.preprocess import ModelGrid

CARD_METADATA_KEY = "headct_model_card"
CARD_FILENAME = "model_card.json"
NOT_FOR_CLINICAL_USE = (
    "Research demonstration trained on synthetic phantoms. Not a medical device; not for "
    "clinical use."
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CardFinding(_Strict):
    code: str
    name: str
    category: str
    critical: bool
    triage: Literal["critical", "urgent", "none"]
    threshold: float = Field(ge=0.0, le=1.0, description="Operating threshold on the probability.")

    @classmethod
    def of(cls, finding: Finding, threshold: float) -> CardFinding:
        """The card's entry for one of the 75 findings, at ``threshold``."""
        return cls(
            code=finding.code,
            name=finding.name,
            category=finding.category.value,
            critical=finding.critical,
            triage=finding.triage.value,
            threshold=threshold,
        )


class CardGrid(_Strict):
    depth: int = Field(ge=1)
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    fov_mm: float | None = None
    resampling: str = (
        "slices: the chosen axial series from its first to its last slice, area-averaged when the "
        "grid is coarser and linearly interpolated on the true positions when finer; in-plane: a "
        "square field of view centred on the image (the image's own larger side unless fov_mm), "
        "area-averaged when shrinking, linear when enlarging; INT16 HU, air (-1024) outside."
    )

    def to_model_grid(self) -> ModelGrid:
        return ModelGrid(self.depth, self.height, self.width, self.fov_mm)


class CardAdapter(_Strict):
    kind: AdapterKind
    experts: int = Field(ge=1)
    rank: int | None = None
    alpha: float | None = None
    router: Literal["shared", "per_layer"] | None = Field(
        default=None,
        description="How MoLRE routes: one router per model on each slice's frozen features "
        "(shared), or one per adapted layer; None without a router (or a card from before).",
    )
    targets: list[str] = Field(default_factory=list)
    slice_head: bool = Field(
        default=False,
        description="Whether the model scores each slice with a slice-level head beside the "
        "attention pooling (training.model); False on cards from before it existed.",
    )
    added_parameters: int | None = None
    added_fraction: float | None = None


class CardBackbone(_Strict):
    name: str
    weights_sha256: str | None = None
    parameters: int | None = None


class CardProvenance(_Strict):
    training_data: str
    synthetic: bool
    trained: str = Field(description="ISO date of training.")
    exported: str = Field(description="ISO date of export.")
    metrics: dict[str, float | None] = Field(default_factory=dict)


class CardOperatingPoint(_Strict):
    """One triage priority level's operating point: the per-finding false-positive rate its
    findings are read at, and the study-level sensitivity and specificity that gave, with Wilson
    95% intervals, on the validation set it was chosen on (drawn at clinical prevalence)."""

    level: Literal["critical", "urgent"]
    target_sensitivity: float = Field(ge=0.0, le=1.0)
    false_positive_rate: float = Field(ge=0.0, le=1.0)
    sensitivity: float | None
    sensitivity_ci95: tuple[float, float] | None
    specificity: float | None
    specificity_ci95: tuple[float, float] | None
    positives: int = Field(ge=0)
    negatives: int = Field(ge=0)
    validation: str = Field(description="The set the point was chosen and measured on.")


class CardPriorityScore(_Strict):
    """A study-level score for one priority level (``service.priority``): ``weights . (logit(p) -
    center) + bias`` over the 75 findings' probabilities in card order (each clipped to [1e-6,
    1 - 1e-6]); the study is at this level or higher when the score reaches ``threshold`` (or
    when a finding of the level is positive)."""

    level: Literal["critical", "urgent"]
    weights: list[float] = Field(description="One weight per finding, in card order.")
    center: list[float] = Field(
        description="Each finding's mean logit on the set the score was fitted on: a finding's "
        "share of the score is its weight times its logit's distance from this."
    )
    bias: float
    threshold: float
    fitted_on: str = Field(description="The set the score was fitted and its threshold chosen on.")

    @model_validator(mode="after")
    def _check(self) -> CardPriorityScore:
        for name in ("weights", "center"):
            if len(getattr(self, name)) != len(FINDINGS):
                raise ValueError(
                    f"a priority score needs {len(FINDINGS)} {name}, one per finding; "
                    f"it has {len(getattr(self, name))}"
                )
        return self


class ModelCard(_Strict):
    name: str
    version: int = Field(ge=1)
    description: str
    intended_use: str
    backbone: CardBackbone
    adapter: CardAdapter
    grid: CardGrid
    windows: list[HUWindow]
    findings: list[CardFinding]
    router_reference: list[float] = Field(
        description="Mean expert weights on the validation set: the reference that monitoring "
        "compares live routing against."
    )
    provenance: CardProvenance
    operating_points: list[CardOperatingPoint] | None = Field(
        default=None,
        description="Study-level operating points of the priority levels (critical, urgent) "
        "that the per-finding thresholds were chosen for; None for thresholds chosen per finding.",
    )
    priority_scores: list[CardPriorityScore] | None = Field(
        default=None,
        description="Study-level scores that also set the priority (service.priority), one per "
        "level at most; None: the priority follows the positive findings alone.",
    )

    @model_validator(mode="after")
    def _check(self) -> ModelCard:
        codes = [f.code for f in self.findings]
        expected = [f.code for f in FINDINGS]
        if codes != expected:
            raise ValueError(
                "findings must be the 75 findings of service.findings in their order; "
                f"the card has {len(codes)} starting {codes[:3]}"
            )
        levels = [s.level for s in self.priority_scores or ()]
        if len(set(levels)) != len(levels):
            raise ValueError(f"priority_scores has more than one score for a level: {levels}")
        if len(self.router_reference) != self.adapter.experts:
            raise ValueError(
                f"router_reference has {len(self.router_reference)} weights for "
                f"{self.adapter.experts} experts"
            )
        return self

    @property
    def thresholds(self) -> list[float]:
        return [f.threshold for f in self.findings]

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> ModelCard:
        return cls.model_validate_json(text)
