"""Studies in the store (received by ``headct listen`` or STOW-RS): ``GET /v1/studies/{study_uid}``
(state, result, deliveries), ``GET /v1/studies`` (finished studies, paginated by a cursor), and
``POST /v1/studies/{study_uid}/complete`` (the sender says the study is whole: triage it without
waiting for the quiet period). Mounted when the store is on (``HEADCT_DATA_DIR``).

The list is ordered by when each study finished (then by UID), and its cursor is the last item's
key, so pages are stable: a study triaged again later moves to the end, where a client following
the cursor meets it again.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Path, Query, status

from service.api.deps import StoreDep
from service.api.routes import versioned_router
from service.api.routes.triage import PROBLEM_RESPONSES
from service.errors import InvalidCursorError, StudyNotFoundError
from service.pacs.instances import UID_PATTERN
from service.pacs.tables import DeliveryRecord, StudyRecord
from service.schemas import (
    DeliveryStatus,
    ModelRef,
    StudyError,
    StudyPage,
    StudyStatus,
    StudySummary,
    TriageResult,
)

router = versioned_router(tags=["studies"])

StudyUID = Annotated[
    str, Path(pattern=UID_PATTERN, max_length=64, description="Study Instance UID.")
]
_RESPONSES: dict[int | str, dict[str, Any]] = {code: PROBLEM_RESPONSES[code] for code in (400, 401)}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {**PROBLEM_RESPONSES[400], "description": "No study with this UID in the store."}
}


def _time(seconds: float | None) -> datetime | None:
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


def _model(record: StudyRecord) -> ModelRef | None:
    if record.model_name is None or record.model_version is None:
        return None
    return ModelRef(name=record.model_name, version=record.model_version)


def _delivery(record: DeliveryRecord) -> DeliveryStatus:
    return DeliveryStatus(
        destination=record.destination,
        state=record.state,
        attempts=record.attempts,
        last_error=record.last_error,
        next_attempt_at=_time(record.next_attempt_at),
        updated_at=datetime.fromtimestamp(record.updated_at, UTC),
    )


def study_status(record: StudyRecord) -> StudyStatus:
    result = record.result_json
    return StudyStatus(
        study_uid=record.study_uid,
        state=record.state,
        instances=record.instances,
        received_at=datetime.fromtimestamp(record.received_at, UTC),
        last_instance_at=datetime.fromtimestamp(record.last_instance_at, UTC),
        finished_at=_time(record.finished_at),
        model=_model(record),
        result=TriageResult.model_validate_json(result) if result else None,
        error=(
            StudyError(code=record.error_code, message=record.error_message or "")
            if record.error_code
            else None
        ),
        triage_runs=record.triage_runs,
        deliveries=[_delivery(d) for d in record.deliveries],
    )


def _summary(record: StudyRecord) -> StudySummary:
    assert record.finished_at is not None
    result = TriageResult.model_validate_json(record.result_json) if record.result_json else None
    return StudySummary(
        study_uid=record.study_uid,
        state=record.state,
        finished_at=datetime.fromtimestamp(record.finished_at, UTC),
        model=_model(record),
        priority=result.triage.priority if result else None,
        findings=result.triage.findings if result else [],
        error_code=record.error_code,
    )


def encode_cursor(record: StudyRecord) -> str:
    key = json.dumps([record.finished_at, record.study_uid]).encode()
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    try:
        at, uid = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(uid, str) or isinstance(at, bool):
            raise ValueError
        return float(at), uid
    except (ValueError, TypeError, binascii.Error):
        raise InvalidCursorError(
            "The cursor is not one this endpoint gave; start again without it."
        ) from None


@router.get(
    "/studies/{study_uid}",
    response_model=StudyStatus,
    responses={**_RESPONSES, **_NOT_FOUND},
    summary="A stored study: its state, triage result and deliveries",
)
async def get_study(study_uid: StudyUID, store: StoreDep) -> StudyStatus:
    record = await anyio.to_thread.run_sync(store.get_study, study_uid)
    if record is None:
        raise StudyNotFoundError("No study with this UID has been received.")
    return study_status(record)


@router.get(
    "/studies",
    response_model=StudyPage,
    responses=_RESPONSES,
    summary="Finished studies, oldest first, a page at a time",
)
async def list_studies(
    store: StoreDep,
    since: Annotated[
        datetime | None,
        Query(description="ISO 8601; only studies finished at or after it (no zone: UTC)."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="Studies per page.")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=200, description="The previous page's next_cursor.")
    ] = None,
) -> StudyPage:
    after = decode_cursor(cursor) if cursor else None
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    records = await anyio.to_thread.run_sync(
        lambda: store.list_studies(
            since=since.timestamp() if since else None, after=after, limit=limit
        )
    )
    return StudyPage(
        studies=[_summary(r) for r in records],
        next_cursor=encode_cursor(records[-1]) if records else cursor,
    )


@router.post(
    "/studies/{study_uid}/complete",
    response_model=StudyStatus,
    status_code=status.HTTP_202_ACCEPTED,
    responses={**_RESPONSES, **_NOT_FOUND},
    summary="Say a study is complete: triage it now",
)
async def complete_study(study_uid: StudyUID, store: StoreDep) -> StudyStatus:
    """The study has all its instances: it is triaged without waiting for the quiet period
    (HEADCT_STUDY_QUIET_S). A study not receiving (already queued, triaging or finished) is left
    as it is; its state says where it is."""
    record = await anyio.to_thread.run_sync(store.mark_complete, study_uid)
    if record is None:
        raise StudyNotFoundError("No study with this UID has been received.")
    return study_status(record)
