"""STOW-RS (DICOM PS3.18 10.5) below HTTP: the parts of a request stored one by one, and the Store
Instances Response Module (PS3.18 Annex I) that reports them.

Each part must be a DICOM PS3.10 file (the ``DICM`` marker after the preamble), as PS3.18 defines
``application/dicom``; it is then checked and stored like a C-STORE (``receive_instance``). A part
that cannot be read cannot name its SOP instance: its Failed SOP Sequence item carries only the
Failure Reason. Retrieve URLs (Type 2) are present and empty: this service stores studies to
triage them and offers no WADO-RS retrieval.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from pydicom.dataset import Dataset

from service.dicom_io import StudyFile, read_dataset
from service.errors import InvalidInstanceError
from service.metrics import StoreMetrics
from service.pacs.intake import InstanceOutcome, receive_instance
from service.pacs.store import StudyStore
from service.uploads import UploadedFile

ROUTE = "stowrs"


def _read_part(part: UploadedFile) -> tuple[Dataset, bytes, str]:
    with part.open() as handle:
        data = handle.read()
    if data[128:132] != b"DICM":
        raise InvalidInstanceError(
            f"{part.name} is not a DICOM PS3.10 file (no DICM marker after the preamble)."
        )
    ds = read_dataset(StudyFile(part.name, data))
    return ds, data, str(ds.file_meta.get("TransferSyntaxUID", ""))


def receive_parts(
    parts: Sequence[UploadedFile],
    store: StudyStore,
    metrics: StoreMetrics,
    *,
    study_uid: str | None,
) -> list[InstanceOutcome]:
    """Store each part; ``study_uid``: the study the request's path names (others are refused).
    Blocks (parsing, disk, database): run it in a worker thread."""
    return [
        receive_instance(
            store,
            metrics,
            partial(_read_part, part),
            route=ROUTE,
            expected_study=study_uid,
        )
        for part in parts
    ]


def _reference(outcome: InstanceOutcome) -> Dataset:
    item = Dataset()
    if outcome.sop_class_uid:
        item.ReferencedSOPClassUID = outcome.sop_class_uid
    if outcome.sop_instance_uid:
        item.ReferencedSOPInstanceUID = outcome.sop_instance_uid
    return item


def response_dataset(outcomes: Sequence[InstanceOutcome]) -> Dataset:
    """The Store Instances Response Module: stored instances (with their warnings) in the
    Referenced SOP Sequence, the others in the Failed SOP Sequence with their Failure Reason."""
    response = Dataset()
    response.add_new(0x00081190, "UR", "")  # Retrieve URL: no WADO-RS here
    failed, referenced = [], []
    for outcome in outcomes:
        item = _reference(outcome)
        if outcome.stored:
            item.add_new(0x00081190, "UR", "")
            if outcome.warning:
                item.WarningReason = outcome.status
            referenced.append(item)
        else:
            item.FailureReason = outcome.status
            failed.append(item)
    if referenced:
        response.ReferencedSOPSequence = referenced
    if failed:
        response.FailedSOPSequence = failed
    return response
