"""The service's own exceptions. Each has a stable machine-readable ``code`` and a plain sentence.

Nothing here knows HTTP: the API layer maps these types to status codes in one handler.
"""

from __future__ import annotations

from typing import Any


class HeadCTError(Exception):
    """Base of every error the service raises on purpose."""

    code = "headct_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class IngestError(HeadCTError):
    """The uploaded files are not a usable head CT study."""

    code = "invalid_study"


# Problems with one file: the bytes are not (whole, decodable) DICOM.
class NotDicomError(IngestError):
    code = "not_dicom"


class TruncatedDicomError(IngestError):
    code = "truncated_dicom"


class CorruptDicomError(IngestError):
    code = "corrupt_dicom"


class UnsupportedTransferSyntaxError(IngestError):
    code = "unsupported_transfer_syntax"


class EmptyStudyError(IngestError):
    code = "empty_study"


# Problems with the study as a whole: DICOM, but not a head CT the model can read.
class NoPixelDataError(IngestError):
    code = "no_pixel_data"


class NotCTError(IngestError):
    code = "not_ct"


class NoAxialSeriesError(IngestError):
    code = "no_axial_series"


class TooFewSlicesError(IngestError):
    code = "too_few_slices"


class InconsistentGeometryError(IngestError):
    code = "inconsistent_geometry"


class ModelContractError(HeadCTError):
    """The model's tensors do not match the contract its card promises: a deployment error."""

    code = "model_contract"


# Errors that concern the file itself (client sent something broken) rather than its content.
FILE_LEVEL_ERRORS: tuple[type[IngestError], ...] = (
    NotDicomError,
    TruncatedDicomError,
    CorruptDicomError,
    EmptyStudyError,
)
