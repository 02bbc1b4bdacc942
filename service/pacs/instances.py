"""What the study store accepts: which SOP classes and transfer syntaxes, and the checks an instance
passes before it is stored, shared by the C-STORE listener and STOW-RS so both refuse the same
things for the same reasons.

Accepted: CT Image Storage, Enhanced CT and Legacy Converted Enhanced CT (ingest reads all three).
Not accepted: Secondary Capture (no CT geometry; and the key images this service sends back to the
PACS are Secondary Captures, which a PACS routing everything to us would otherwise feed back in),
structured reports, and any other modality.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom import uid
from pydicom.dataset import Dataset

from service.errors import (
    InstanceTransferSyntaxError,
    InvalidInstanceError,
    StudyUIDMismatchError,
    UnsupportedSOPClassError,
)

CT_STORAGE_SOP_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
)

# What pydicom decodes here (pylibjpeg with its openjpeg and libjpeg plugins, and RLE natively).
TRANSFER_SYNTAXES = (
    uid.ImplicitVRLittleEndian,
    uid.ExplicitVRLittleEndian,
    uid.DeflatedExplicitVRLittleEndian,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.RLELossless,
)

# Why an instance was not stored, by error code: PS3.4's C-STORE statuses, which STOW-RS's Failure
# Reason (0008,1197; PS3.18 I.2.2) reuses, so the listener and STOW-RS answer alike. 0xC409 is ours,
# in the "cannot understand" range.
FAILURE_STATUS = {
    "unsupported_sop_class": 0x0122,  # Referenced SOP Class not supported
    "unsupported_instance_transfer_syntax": 0xC122,  # Referenced Transfer Syntax not supported
    "invalid_instance": 0xC000,  # Cannot understand
    "study_uid_mismatch": 0xC409,  # not the study the STOW-RS request names
    "store_unavailable": 0xA700,  # Refused: out of resources (retry later)
}
PROCESSING_FAILURE = 0x0110
# Stored, with a warning (Data Set does not match SOP Class): the instance lacks what triage reads.
NOT_TRIAGEABLE_WARNING = 0xB007

# A UID as PS3.5 9.1 has it: numeric components separated by dots, at most 64 characters. Checked
# before a UID becomes a file name.
UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"
_UID = re.compile(UID_PATTERN)


@dataclass(frozen=True, slots=True)
class InstanceRef:
    """The identifiers of one accepted instance."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str


def valid_uid(value: str) -> bool:
    return len(value) <= 64 and _UID.match(value) is not None


def _uid(ds: Dataset, keyword: str) -> str:
    value = str(ds.get(keyword, "") or "").strip().rstrip("\0")
    if not valid_uid(value):
        raise InvalidInstanceError(f"The instance has no valid {keyword}.")
    return value


def check_instance(
    ds: Dataset, transfer_syntax: str, *, expected_study: str | None = None
) -> InstanceRef:
    """The instance's UIDs, if the store takes it: a CT storage SOP class, a transfer syntax this
    service decodes, valid UIDs, and (STOW-RS to one study) the study the request named."""
    sop_class = str(ds.get("SOPClassUID", "") or "")
    if sop_class not in CT_STORAGE_SOP_CLASSES:
        name = uid.UID(sop_class).name if valid_uid(sop_class) else "missing"
        raise UnsupportedSOPClassError(
            f"SOP class {name} is not accepted; only CT image storage is triaged."
        )
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise InstanceTransferSyntaxError(
            f"Transfer syntax {uid.UID(transfer_syntax).name} cannot be decoded here."
        )
    ref = InstanceRef(
        study_uid=_uid(ds, "StudyInstanceUID"),
        series_uid=_uid(ds, "SeriesInstanceUID"),
        sop_instance_uid=_uid(ds, "SOPInstanceUID"),
        sop_class_uid=sop_class,
    )
    if expected_study is not None and ref.study_uid != expected_study:
        raise StudyUIDMismatchError(
            "The instance belongs to another study than the one the request names."
        )
    return ref


def triage_warning(ds: Dataset) -> str | None:
    """Why a stored instance will not be triaged (no pixel data, not Modality CT), or None."""
    if "PixelData" not in ds:
        return "The instance has no pixel data; it is stored but cannot be triaged."
    if str(ds.get("Modality", "")).upper() != "CT":
        return "The instance's Modality is not CT; it is stored but will not be triaged."
    return None
