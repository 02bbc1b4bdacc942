"""Taking one received instance into the study store, the same way for every route: decode it, the
checks of ``service.pacs.instances``, the durable write, and the count by route and outcome. The
C-STORE listener (``route="dimse"``) and STOW-RS (``route="stowrs"``) both call
``receive_instance`` and answer from its ``InstanceOutcome``: a C-STORE status, or a STOW-RS
Referenced or Failed SOP Sequence item (both from ``InstanceOutcome.status``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydicom.dataset import Dataset

from service.errors import HeadCTError, InstanceRefusedError, InvalidInstanceError
from service.metrics import StoreMetrics
from service.pacs.instances import (
    FAILURE_STATUS,
    NOT_TRIAGEABLE_WARNING,
    PROCESSING_FAILURE,
    check_instance,
    triage_warning,
)
from service.pacs.store import StudyStore

# Decodes a received instance: its data set, its DICOM Part 10 bytes, its transfer syntax UID.
InstanceReader = Callable[[], tuple[Dataset, bytes, str]]


@dataclass(frozen=True, slots=True)
class InstanceOutcome:
    """What became of one instance. The UIDs are the instance's own ("" if it was unreadable)."""

    sop_class_uid: str
    sop_instance_uid: str
    duplicate: bool = False  # the store already had it; nothing changed
    warning: str | None = None  # stored, but it will not be triaged (and why)
    error: HeadCTError | None = None  # not stored (InstanceRefusedError, StoreUnavailableError)

    @property
    def stored(self) -> bool:
        return self.error is None

    @property
    def status(self) -> int:
        """The C-STORE status, which is also STOW-RS's Failure or Warning Reason."""
        if self.error is not None:
            return FAILURE_STATUS.get(self.error.code, PROCESSING_FAILURE)
        return NOT_TRIAGEABLE_WARNING if self.warning else 0x0000


def _read(read: InstanceReader) -> tuple[Dataset, bytes, str]:
    try:
        return read()
    except InstanceRefusedError:
        raise
    except HeadCTError as exc:  # not DICOM, truncated, corrupt: ingest's reasons
        raise InvalidInstanceError(exc.message) from None
    except Exception as exc:  # pydicom raises many types for garbage; each means "not readable"
        raise InvalidInstanceError(
            f"The instance cannot be decoded ({type(exc).__name__})."
        ) from None


def _uid(ds: Dataset | None, keyword: str) -> str:
    try:
        return str(ds.get(keyword, "") or "") if ds is not None else ""
    except Exception:  # a value that does not decode
        return ""


def receive_instance(
    store: StudyStore,
    metrics: StoreMetrics,
    read: InstanceReader,
    *,
    route: str,
    expected_study: str | None = None,
) -> InstanceOutcome:
    """Decode, check and store one instance durably. Bad instances and a failing store become
    outcomes with their error; nothing else is raised for them."""
    ds: Dataset | None = None
    try:
        ds, data, transfer_syntax = _read(read)
        ref = check_instance(ds, transfer_syntax, expected_study=expected_study)
        stored = store.add_instance(ref, data, route=route)
    except HeadCTError as exc:
        metrics.instances.labels(route=route, outcome=exc.code).inc()
        return InstanceOutcome(_uid(ds, "SOPClassUID"), _uid(ds, "SOPInstanceUID"), error=exc)
    metrics.instances.labels(
        route=route, outcome="duplicate" if stored.duplicate else "stored"
    ).inc()
    return InstanceOutcome(
        ref.sop_class_uid, ref.sop_instance_uid, stored.duplicate, triage_warning(ds)
    )
