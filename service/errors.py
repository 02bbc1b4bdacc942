"""Every exception the service raises on purpose, in one module. Each has a stable
machine-readable ``code``, a plain sentence, and (as class attributes) the HTTP ``status`` and
problem ``title`` the gateway answers with, so the mapping from error to response has one home:
``service.api.problems`` reads these attributes, and its table of codes is derived from them.

Nothing below the API layer acts on ``status``; the CLI and the batch scorer report ``code``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class HeadCTError(Exception):
    """Base of every error the service raises on purpose."""

    code: ClassVar[str] = "headct_error"
    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal error"
    retry_after: ClassVar[bool] = False  # the response carries Retry-After
    note: ClassVar[str] = ""  # shown beside the code in the documented table

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


# ---- the study: DICOM files that cannot be read, or a study that is not a usable head CT ----


class IngestError(HeadCTError):
    """The uploaded files are not a usable head CT study."""

    code = "invalid_study"
    status = 422
    title = "Not a usable head CT study"


class UnreadableDicomError(IngestError):
    """The files themselves are broken (not DICOM, cut short, undecodable): the client sent
    something unreadable, rather than a readable study the model cannot use."""

    code = "unreadable_dicom"
    status = 400
    title = "Not readable DICOM"


class NotDicomError(UnreadableDicomError):
    code = "not_dicom"


class TruncatedDicomError(UnreadableDicomError):
    code = "truncated_dicom"


class CorruptDicomError(UnreadableDicomError):
    code = "corrupt_dicom"


class EmptyStudyError(UnreadableDicomError):
    code = "empty_study"


# A 400, not a 415: 415 always means the request's own Content-Type, which a client can fix by
# resending; a transfer syntax needs the file re-encoded.
class UnsupportedTransferSyntaxError(UnreadableDicomError):
    code = "unsupported_transfer_syntax"


# DICOM, but not a head CT the model can read.
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


class IngestTimeoutError(IngestError):
    """Reading the study took longer than its deadline (``HEADCT_INGEST_TIMEOUT_S``): a study too
    costly to read, not a slow server (the wait for a worker is not counted)."""

    code = "ingest_timeout"
    title = "Study too costly to read"


# ---- the upload: the request body cannot be taken as a study ----


class UploadError(HeadCTError):
    """The request body cannot be taken as a study upload."""

    code = "invalid_upload"
    status = 400
    title = "Malformed upload"


class UnsupportedMediaTypeError(UploadError):
    code = "unsupported_media_type"
    status = 415
    title = "Unsupported media type"
    note = "the request's Content-Type"


class MalformedUploadError(UploadError):
    code = "malformed_upload"


class EmptyUploadError(UploadError):
    code = "empty_upload"


class UploadTimeoutError(UploadError):
    code = "upload_timeout"
    status = 408
    title = "Upload too slow"


class ClientDisconnectedError(UploadError):
    """The client went away before its answer (the answer reaches no one; it is logged)."""

    code = "client_disconnected"
    status = 499
    title = "Client closed the request"
    note = "logged only: no one is left to answer"


class UnsafeZipEntryError(UploadError):
    code = "unsafe_zip_entry"


class UploadLimitError(UploadError):
    """Refused for its size, not its content."""

    code = "upload_limit"
    status = 413
    title = "Upload over a limit"


class UploadTooLargeError(UploadLimitError):
    code = "upload_too_large"


class TooManyFilesError(UploadLimitError):
    code = "too_many_files"


class ZipTooLargeError(UploadLimitError):
    code = "zip_too_large"


class ZipRatioError(UploadLimitError):
    code = "zip_ratio_exceeded"


# ---- the request and the gateway ----


class UnauthorizedError(HeadCTError):
    """API keys are configured and the request has none, or a wrong one."""

    code = "unauthorized"
    status = 401
    title = "Missing or invalid API key"
    note = "only when HEADCT_API_KEYS is set"


class OverCapacityError(HeadCTError):
    """Every worker is busy and the wait queue is full."""

    code = "over_capacity"
    status = 429
    title = "Over capacity"
    retry_after = True


class TooManyUploadsError(HeadCTError):
    """The client's address already has its allowance of uploads in progress."""

    code = "too_many_uploads"
    status = 429
    title = "Too many uploads from this client"
    retry_after = True


class StudyImagesNotFoundError(HeadCTError):
    """The viewer asked for the images of a study the gateway does not keep: never triaged here,
    pushed out by more recent studies, or triaged before the gateway restarted."""

    code = "study_images_not_found"
    status = 404
    title = "No images kept for this study"


class UnknownWindowError(HeadCTError):
    """The viewer asked for a display window the model card does not list."""

    code = "unknown_window"
    status = 404
    title = "Unknown display window"


# ---- the study store (PACS): instances refused one by one, studies looked up ----


class InstanceRefusedError(HeadCTError):
    """One instance the study store does not take (STOW-RS lists it in its FailedSOPSequence; the
    C-STORE listener answers it with a failure status); the others of a request are unaffected."""

    code = "instance_refused"
    status = 409
    title = "Instance refused"
    note = "per instance"


class UnsupportedSOPClassError(InstanceRefusedError):
    code = "unsupported_sop_class"


class InstanceTransferSyntaxError(InstanceRefusedError):
    code = "unsupported_instance_transfer_syntax"


class InvalidInstanceError(InstanceRefusedError):
    """Not a DICOM file, or one without valid study, series or SOP instance UIDs."""

    code = "invalid_instance"


class StudyUIDMismatchError(InstanceRefusedError):
    code = "study_uid_mismatch"


class StoreUnavailableError(HeadCTError):
    """The study store's database or disk failed; nothing was accepted."""

    code = "store_unavailable"
    status = 503
    title = "Study store unavailable"
    retry_after = True


class StudyNotFoundError(HeadCTError):
    code = "study_not_found"
    status = 404
    title = "Study not found"


class InvalidCursorError(HeadCTError):
    code = "invalid_cursor"
    status = 400
    title = "Invalid cursor"


# ---- the model and its backend: server-side, never the client's fault ----


class ModelContractError(HeadCTError):
    """The model's tensors do not match the contract its card promises: a deployment error."""

    code = "model_contract"
    status = 500
    title = "Model does not match its card"


class BackendUnavailableError(HeadCTError):
    """The model cannot be run now (not loaded, server down, model not ready)."""

    code = "backend_unavailable"
    status = 503
    title = "Inference backend unavailable"
    retry_after = True


class BackendTimeoutError(HeadCTError):
    """The backend did not answer within the deadline."""

    code = "backend_timeout"
    status = 504
    title = "Inference timed out"


def error_classes() -> list[type[HeadCTError]]:
    """Every error a caller can receive (the leaves of the tree), in the order defined here."""

    def walk(cls: type[HeadCTError]) -> list[type[HeadCTError]]:
        return [c for sub in cls.__subclasses__() for c in (sub, *walk(sub))]

    ours = [c for c in walk(HeadCTError) if c.__module__ == __name__]
    return [c for c in ours if not any(issubclass(o, c) for o in ours if o is not c)]
