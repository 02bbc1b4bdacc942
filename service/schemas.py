"""The gateway's response bodies (the result of docs/ARCHITECTURE.md, problems, probes) as pydantic
models, so the OpenAPI schema documents exactly what is sent."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.findings import FINDINGS, TriagePriority
from service.model_card import NOT_FOR_CLINICAL_USE
from service.pacs.tables import DeliveryState, StudyState

PROBLEM_MEDIA_TYPE = "application/problem+json"


def _build_example() -> dict[str, Any]:
    """A plausible result: an acute subdural hematoma with midline shift, 32 slices, 4 experts."""
    positives = {"ich_any": 0.97, "subdural_hematoma_acute": 0.94, "midline_shift": 0.81}
    findings = [
        {
            "code": f.code,
            "name": f.name,
            "category": f.category.value,
            "probability": positives.get(f.code, 0.02),
            "threshold": 0.3 if f.critical else 0.5,
            "positive": f.code in positives,
            "critical": f.critical,
        }
        for f in FINDINGS
    ]
    attention = [round(0.01 + (0.12 if 17 <= i <= 21 else 0.0), 3) for i in range(32)]
    return {
        "study_uid": "1.2.826.0.1.3680043.8.498.1",
        "series_uid": "1.2.826.0.1.3680043.8.498.2",
        "model": {"name": "headct_molre", "version": 1},
        "findings": findings,
        "triage": {
            "priority": "critical",
            "findings": ["ich_any", "subdural_hematoma_acute", "midline_shift"],
        },
        "router": {
            "experts": 4,
            "study_weights": [0.41, 0.22, 0.25, 0.12],
            "slice_weights": [[0.41, 0.22, 0.25, 0.12]] * 32,
        },
        "slices": {
            "count": 32,
            "attention": attention,
            "key_slice": 19,
            "key_finding": "subdural_hematoma_acute",
            "evidence": [round(-0.02 + (0.35 if 17 <= i <= 21 else 0.0), 3) for i in range(32)],
            "source_count": 36,
            "key_source_index": 21,
            "key_sop_instance_uid": "1.2.826.0.1.3680043.8.498.3.22",
        },
        "timing_ms": {
            "upload": 12.1,
            "queue": 0.1,
            "read": 38.0,
            "select": 2.2,
            "resample": 21.5,
            "inference": 310.4,
            "postprocess": 0.6,
            "total": 385.3,
        },
        "warnings": [],
        "disclaimer": NOT_FOR_CLINICAL_USE,
    }


class ModelRef(BaseModel):
    name: str
    version: int


class FindingResult(BaseModel):
    code: str
    name: str
    category: str
    probability: float = Field(ge=0.0, le=1.0)
    threshold: float = Field(ge=0.0, le=1.0, description="The card's operating threshold.")
    positive: bool = Field(description="probability >= threshold")
    critical: bool


class Triage(BaseModel):
    priority: TriagePriority
    findings: list[str] = Field(
        description="Codes of the findings that set the priority, in card order: the positive "
        "findings of its level, or, when the study-level score alone set it (basis "
        "study_score), the finding of that level that adds the most to the score."
    )
    basis: Literal["findings", "study_score"] | None = Field(
        default=None,
        description="What set the priority: a positive finding of its level (findings), or the "
        "model card's study-level score for the level with none positive (study_score); None "
        "for routine.",
    )


class Router(BaseModel):
    experts: int = Field(description="K, the number of low-rank experts.")
    study_weights: list[float] = Field(description="Mean expert weights over the study, [K].")
    slice_weights: list[list[float]] = Field(description="Expert weights per grid slice, [D][K].")


class Slices(BaseModel):
    count: int = Field(description="D, slices of the model grid (slice 0 inferior).")
    attention: list[float] = Field(description="Attention-pooling weight per grid slice, [D].")
    key_slice: int = Field(
        description="Grid slice that shows key_finding: the one the model's slice head scores "
        "highest for it (SLICE_SCORES) when the model has a slice head, else the one with the most "
        "evidence for it (attention alone when the result predates the evidence output)."
    )
    # Results stored before the model had SLICE_EVIDENCE have neither field: they read as null.
    key_finding: str | None = Field(
        default=None,
        description="The finding the key slice shows: of the findings behind the triage (else "
        "the positive ones, else all) the one furthest above its threshold in logits.",
    )
    evidence: list[float] | None = Field(
        default=None,
        description="key_finding's evidence per grid slice, [D]: the slice's attention times the "
        "head's score of its features, its additive share of that finding's logit.",
    )
    scores: list[float] | None = Field(
        default=None,
        description="key_finding's slice-head logit per grid slice, [D] (SLICE_SCORES), whose "
        "highest is the key slice; None for a model without a slice head.",
    )
    source_count: int = Field(description="Slices of the selected series.")
    key_source_index: int = Field(
        description="Index (inferior to superior) of the series slice nearest the key slice."
    )
    key_sop_instance_uid: str | None = Field(
        description="SOPInstanceUID of that slice, to open it in a viewer."
    )


class Timing(BaseModel):
    upload: float
    queue: float
    read: float
    select: float
    resample: float
    inference: float
    postprocess: float
    total: float


class TriageResult(BaseModel):
    """The triage of one study."""

    study_uid: str
    series_uid: str
    model: ModelRef
    findings: list[FindingResult]
    triage: Triage
    router: Router
    slices: Slices
    timing_ms: Timing
    warnings: list[str] = Field(
        description="Files left out because they are not DICOM (a notes.txt, a JPEG, a PDF "
        "report), then what ordering the slices noticed (gaps, non-uniform spacing, tilt, "
        "duplicates). Empty when there is nothing to say."
    )
    disclaimer: str = Field(description="The model card's intended use.")

    model_config = ConfigDict(json_schema_extra={"examples": [_build_example()]})


class Problem(BaseModel):
    """An RFC 9457 problem: ``code`` is stable and machine-readable, ``detail`` is for people."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    code: str
    request_id: str | None = None
    series: list[dict[str, Any]] | None = Field(
        None, description="For 422: every series of the study and why it was not usable."
    )


class WindowSheet(BaseModel):
    name: str = Field(description="The model card's name for the window: brain, subdural, bone.")
    center: float
    width: float
    url: str = Field(description="The PNG sheet of every slice of the study under this window.")


class SliceSheets(BaseModel):
    """A study's slices on the model grid, as one PNG sheet per display window: slice ``i``
    (0 inferior, the grid of ``slices.attention`` and ``router.slice_weights``) is the tile at
    row ``i // columns``, column ``i % columns``, each ``height`` x ``width`` pixels."""

    study_uid: str
    slices: int
    height: int
    width: int
    columns: int
    rows: int
    spacing_mm: list[float] = Field(description="Between slices, rows and columns of the grid.")
    windows: list[WindowSheet]


class Health(BaseModel):
    status: str = "ok"


class Readiness(BaseModel):
    ready: bool
    backend: str
    model: ModelRef | None = None
    detail: str | None = None


class DeliveryStatus(BaseModel):
    """One destination's delivery of a study's results (SR, key image) to the PACS."""

    destination: str
    state: DeliveryState
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None = Field(description="When it is tried again (pending).")
    updated_at: datetime


class StudyError(BaseModel):
    code: str = Field(description="The error's stable code, as in the problem table.")
    message: str


class StudyStatus(BaseModel):
    """A study in the store (received by C-STORE or STOW-RS): its state, result and deliveries."""

    study_uid: str
    state: StudyState
    instances: int = Field(description="Instances stored (each SOP Instance UID once).")
    received_at: datetime
    last_instance_at: datetime
    finished_at: datetime | None = Field(description="When its last triage ended.")
    model: ModelRef | None = Field(description="The model that produced the result or error.")
    result: TriageResult | None
    error: StudyError | None
    triage_runs: int = Field(description="Triages run on it (new instances, a new model).")
    deliveries: list[DeliveryStatus]


class StudySummary(BaseModel):
    study_uid: str
    state: StudyState
    finished_at: datetime
    model: ModelRef | None
    priority: TriagePriority | None = Field(description="None when the triage failed.")
    findings: list[str] = Field(description="The positive findings behind the priority.")
    error_code: str | None


class StudyPage(BaseModel):
    """Finished studies in the order they finished; pass ``next_cursor`` back for the next page
    (null: none yet; new results appear after the last one)."""

    studies: list[StudySummary]
    next_cursor: str | None
