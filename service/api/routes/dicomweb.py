"""STOW-RS (DICOM PS3.18 10.5): ``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}``
store instances into the study store; the worker triages each study once it is complete, like one
received by ``headct listen``. Mounted when the store is on (``HEADCT_DATA_DIR``); behind the API
key like ``/v1``.

The request is ``multipart/related; type="application/dicom"``, one DICOM file per part, received
under the same limits as ``POST /v1/triage`` (size, file count, deadline, minimum rate, uploads per
client). The answer is the Store Instances Response (``application/dicom+json``) with the status
PS3.18 Table 10.5.3-1 gives: 200 all stored; 202 some failed or carry warnings; 409 none stored
(each with its Failure Reason); 400 a malformed request; 415 another media type. A store that
cannot write anything is a 503 problem, to retry.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from python_multipart.multipart import parse_options_header

from service.api.deps import (
    ApiKeyDep,
    MetricsDep,
    SettingsDep,
    StoreDep,
    UploadLimiterDep,
)
from service.api.routes.studies import StudyUID
from service.api.routes.triage import PROBLEM_RESPONSES, receive_body
from service.errors import StoreUnavailableError, UnsupportedMediaTypeError
from service.pacs.intake import InstanceOutcome
from service.pacs.stow import receive_parts, response_dataset
from service.uploads import (
    DICOM_TYPE,
    RELATED,
    media_type,
)

router = APIRouter(prefix="/dicomweb", dependencies=[ApiKeyDep], tags=["dicomweb"])

DICOM_JSON = "application/dicom+json"
STOW_TYPE = f'{RELATED}; type="{DICOM_TYPE}"'

_BINARY = {"type": "string", "format": "binary"}
REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One DICOM PS3.10 file per part.",
        "content": {STOW_TYPE: {"schema": _BINARY}},
    }
}
_RESPONSE_MODULE = {"content": {DICOM_JSON: {"schema": {"type": "object"}}}}
RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Every instance was stored.", **_RESPONSE_MODULE},
    202: {"description": "Some were stored; others failed or carry warnings.", **_RESPONSE_MODULE},
    409: {"description": "None was stored: each has its Failure Reason.", **_RESPONSE_MODULE},
    **{code: PROBLEM_RESPONSES[code] for code in (400, 401, 408, 413, 429)},
    415: {**PROBLEM_RESPONSES[415], "description": f"The Content-Type is not {STOW_TYPE}."},
    503: {**PROBLEM_RESPONSES[503], "description": "The study store cannot store now."},
}


def check_stow_media_type(content_type: str | None) -> None:
    """``multipart/related`` whose ``type`` (when given) is ``application/dicom``."""
    _, options = parse_options_header(content_type or "")
    part_type = options.get(b"type", DICOM_TYPE.encode()).decode("latin-1").lower()
    if media_type(content_type) != RELATED or part_type != DICOM_TYPE:
        raise UnsupportedMediaTypeError(
            f"STOW-RS here takes {STOW_TYPE} (one DICOM file per part); got "
            f"{(content_type or 'no Content-Type').split(';', 1)[0]!r}.",
            accepted=[STOW_TYPE],
        )


def response_status(outcomes: list[InstanceOutcome]) -> int:
    stored = [o for o in outcomes if o.stored]
    if not stored:
        if any(isinstance(o.error, StoreUnavailableError) for o in outcomes):
            raise StoreUnavailableError("The study store cannot store now.", retry_after=5)
        return 409
    if len(stored) < len(outcomes) or any(o.warning for o in stored):
        return 202
    return 200


async def _store_instances(
    request: Request,
    study_uid: str | None,
    settings: SettingsDep,
    store: StoreDep,
    metrics: MetricsDep,
    uploads: UploadLimiterDep,
) -> JSONResponse:
    check_stow_media_type(request.headers.get("content-type"))
    upload = await receive_body(request, settings, uploads)
    with upload:
        outcomes = await anyio.to_thread.run_sync(
            lambda: receive_parts(upload.files, store, metrics.store, study_uid=study_uid)
        )
    return JSONResponse(
        response_dataset(outcomes).to_json_dict(),
        status_code=response_status(outcomes),
        media_type=DICOM_JSON,
    )


@router.post(
    "/studies",
    responses=RESPONSES,
    openapi_extra=REQUEST_BODY,
    response_class=JSONResponse,
    summary="STOW-RS: store instances of any studies",
)
async def store_instances(
    request: Request,
    settings: SettingsDep,
    store: StoreDep,
    metrics: MetricsDep,
    uploads: UploadLimiterDep,
) -> JSONResponse:
    return await _store_instances(request, None, settings, store, metrics, uploads)


@router.post(
    "/studies/{study_uid}",
    responses=RESPONSES,
    openapi_extra=REQUEST_BODY,
    response_class=JSONResponse,
    summary="STOW-RS: store instances of one study (others are refused)",
)
async def store_study_instances(
    request: Request,
    study_uid: StudyUID,
    settings: SettingsDep,
    store: StoreDep,
    metrics: MetricsDep,
    uploads: UploadLimiterDep,
) -> JSONResponse:
    return await _store_instances(request, study_uid, settings, store, metrics, uploads)
