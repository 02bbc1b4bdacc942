"""The study store's tables (SQLAlchemy Core; one schema for SQLite and PostgreSQL), the states a
study and a delivery go through, and the records ``service.pacs.store.StudyStore`` returns."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa


class StudyState(StrEnum):
    RECEIVING = "receiving"
    PENDING = "pending"
    TRIAGING = "triaging"
    TRIAGED = "triaged"
    FAILED = "failed"
    DELIVERED = "delivered"
    DEAD_LETTER = "dead_letter"


class DeliveryState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD_LETTER = "dead_letter"


FINISHED = (StudyState.TRIAGED, StudyState.FAILED, StudyState.DELIVERED, StudyState.DEAD_LETTER)
ABANDONED_CODE = "triage_abandoned"

metadata = sa.MetaData()
UID = sa.String(64)

studies = sa.Table(
    "studies",
    metadata,
    sa.Column("study_uid", UID, primary_key=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("revision", sa.Integer, nullable=False),  # one more with each new instance
    sa.Column("claimed_revision", sa.Integer),  # the revision the last claim read
    sa.Column("resent", sa.Boolean, nullable=False),  # instances came again after it finished
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("last_instance_at", sa.Float, nullable=False),
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_until", sa.Float),
    sa.Column("attempts", sa.Integer, nullable=False),  # claims since the last finish
    sa.Column("triage_runs", sa.Integer, nullable=False),  # finished triages, ever
    sa.Column("finished_at", sa.Float, index=True),
    sa.Column("model_name", sa.String(64)),
    sa.Column("model_version", sa.Integer),
    sa.Column("result", sa.Text),  # the TriageResult's JSON
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
)

instances = sa.Table(
    "instances",
    metadata,
    sa.Column("sop_instance_uid", UID, primary_key=True),
    sa.Column("study_uid", UID, nullable=False, index=True),
    sa.Column("series_uid", UID, nullable=False),
    sa.Column("sop_class_uid", UID, nullable=False),
    sa.Column("path", sa.String(200), nullable=False),  # relative to the data folder
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("route", sa.String(16), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
)

deliveries = sa.Table(
    "deliveries",
    metadata,
    sa.Column("study_uid", UID, primary_key=True),
    sa.Column("destination", sa.String(200), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("next_attempt_at", sa.Float),
    sa.Column("lease_owner", sa.String(64)),
    sa.Column("lease_until", sa.Float),
    sa.Column("updated_at", sa.Float, nullable=False),
)


@dataclass(frozen=True, slots=True)
class StoredInstance:
    path: Path
    duplicate: bool  # the store already had this SOP instance; nothing changed


@dataclass(frozen=True, slots=True)
class StudyClaim:
    """A study a worker holds until ``lease_until``: triage it from ``paths``, then finish it."""

    study_uid: str
    revision: int
    owner: str
    paths: list[Path]


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    study_uid: str
    destination: str
    state: DeliveryState
    attempts: int
    last_error: str | None
    next_attempt_at: float | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class StudyRecord:
    study_uid: str
    state: StudyState
    instances: int
    received_at: float
    last_instance_at: float
    finished_at: float | None
    model_name: str | None
    model_version: int | None
    result_json: str | None
    error_code: str | None
    error_message: str | None
    triage_runs: int
    deliveries: list[DeliveryRecord]


def delivery_record(row: Any) -> DeliveryRecord:
    return DeliveryRecord(
        study_uid=row.study_uid,
        destination=row.destination,
        state=DeliveryState(row.state),
        attempts=row.attempts,
        last_error=row.last_error,
        next_attempt_at=row.next_attempt_at,
        updated_at=row.updated_at,
    )
