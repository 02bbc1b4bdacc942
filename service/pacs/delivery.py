"""Results to the PACS: ``send`` stores instances at one destination (STOW-RS with dicomweb-client,
or C-STORE with pynetdicom) and says, when it fails, whether trying again later can help.

- Retryable: the destination cannot be reached, times out, aborts, is out of resources (C-STORE
  0xA7xx), rejects the association transiently, or answers STOW-RS with 408, 429 or 5xx.
- Not retryable (a configuration or content problem a retry repeats): a permanent association
  rejection (a wrong called or calling AE title), a SOP class the peer does not accept, any other
  C-STORE failure status, and other STOW-RS 4xx answers or instances it lists as failed.

``attempt_delivery`` is one attempt as the caller that keeps the state (the study store) sees it:
delivered, retry after a delay (``RetryPolicy``: exponential backoff with jitter), or dead letter
once the policy's attempts are spent or the failure is not retryable; each outcome is counted
(``headct_pacs_deliveries_total``). Logs name the destination and the instances' count and
classes, never a patient.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import requests
from dicomweb_client import DICOMwebClient
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from service.pacs.destination import (
    DEFAULT_CALLING_AET,
    Destination,
    DicomwebDestination,
    DimseDestination,
)
from service.settings import Settings

if TYPE_CHECKING:  # service.metrics counts these outcomes, so it imports this module
    from service.metrics import StoreMetrics

log = logging.getLogger(__name__)

# C-STORE statuses (PS3.4 B.2.3): success, then the warnings that still store the instance.
STORE_SUCCESS = 0x0000
STORE_WARNINGS = {0xB000, 0xB006, 0xB007}
RETRYABLE_HTTP = {408, 429, 500, 502, 503, 504}
FAILED_SOP_SEQUENCE = "FailedSOPSequence"  # (0008,1198)
REFERENCED_SOP_SEQUENCE = "ReferencedSOPSequence"  # (0008,1199)


class DeliveryError(Exception):
    """A send that did not store every instance; ``retryable`` says whether a later attempt can
    succeed where this one failed."""

    def __init__(self, reason: str, *, retryable: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable


class DeliveryOutcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a delivery is tried: attempt ``n`` failing is followed by a
    wait of about ``base_s * factor ** (n - 1)``, at most ``cap_s``; after ``max_attempts``
    the delivery is dead-lettered."""

    max_attempts: int = 8
    base_s: float = 5.0
    factor: float = 2.0
    cap_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts={self.max_attempts}: at least one attempt is needed")
        if self.base_s <= 0 or self.cap_s < self.base_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got {self.base_s} and {self.cap_s}")
        if self.factor < 1:
            raise ValueError(f"factor={self.factor}: backoff must not shrink (factor >= 1)")

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.pacs_retry_max_attempts,
            base_s=settings.pacs_retry_base_s,
            factor=settings.pacs_retry_factor,
            cap_s=settings.pacs_retry_cap_s,
        )

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based): a uniform draw from the
        upper half of the backoff, so many deliveries failing together (a PACS restarting) do
        not come back in step, and no wait collapses to nothing."""
        if attempt < 1:
            raise ValueError(f"attempt={attempt}: attempts count from 1")
        backoff = min(self.cap_s, self.base_s * self.factor ** (attempt - 1))
        return backoff * (0.5 + 0.5 * (rng or random).random())

    def retries_after(self, attempt: int, error: DeliveryError) -> bool:
        return error.retryable and attempt < self.max_attempts


def _store_dicomweb(
    datasets: Sequence[Dataset], destination: DicomwebDestination, timeout_s: float
) -> None:
    client = DICOMwebClient(destination.url, timeout=timeout_s)
    client.set_http_retry_params(retry=False)  # retries are ours: durable, with backoff
    studies = {str(ds.StudyInstanceUID) for ds in datasets}
    # One study: POST /studies/{uid}, so the server also checks that each instance belongs to it.
    study_uid = studies.pop() if len(studies) == 1 else None
    try:
        response = client.store_instances(list(datasets), study_instance_uid=study_uid)
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        raise DeliveryError(
            f"STOW-RS answered HTTP {status}", retryable=status in RETRYABLE_HTTP
        ) from None
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise DeliveryError(
            f"STOW-RS to {destination} failed: {type(exc).__name__}", retryable=True
        ) from None
    failed = response.get(FAILED_SOP_SEQUENCE) or []
    if failed:
        reasons = sorted({f"{int(item.get('FailureReason', 0)):#06x}" for item in failed})
        raise DeliveryError(
            f"STOW-RS refused {len(failed)} of {len(datasets)} instances "
            f"(failure reasons {', '.join(reasons)})",
            retryable=False,
        )
    # A server may also drop an instance without listing it as failed: only what it names as
    # stored counts as delivered.
    stored = {
        item.get("ReferencedSOPInstanceUID") for item in response.get(REFERENCED_SOP_SEQUENCE) or []
    }
    missing = [ds for ds in datasets if ds.get("SOPInstanceUID") not in stored]
    if missing:
        raise DeliveryError(
            f"STOW-RS stored {len(datasets) - len(missing)} of {len(datasets)} instances and "
            "named no failure for the others",
            retryable=False,
        )


def _rejection(assoc_primitive: object) -> DeliveryError:
    result = getattr(assoc_primitive, "result", None)
    reason = getattr(assoc_primitive, "reason_str", "no reason given")
    transient = result == 0x02
    kind = "transiently" if transient else "permanently"
    return DeliveryError(f"the association was rejected {kind}: {reason}", retryable=transient)


def _store_status_error(status: int, sop_class: str) -> DeliveryError:
    # 0xA7xx: out of resources, which a later attempt may find freed; anything else is about the
    # instance or the peer's configuration, and repeats.
    return DeliveryError(
        f"C-STORE of a {sop_class} instance failed with status {status:#06x}",
        retryable=status & 0xFF00 == 0xA700,
    )


def _store_dimse(
    datasets: Sequence[Dataset], destination: DimseDestination, timeout_s: float, calling_aet: str
) -> None:
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    for sop_class in dict.fromkeys(ds.SOPClassUID for ds in datasets):
        ae.add_requested_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        if assoc.is_rejected:
            raise _rejection(assoc.acceptor.primitive)
        raise DeliveryError(
            f"no association with {destination} (unreachable, timed out or aborted)",
            retryable=True,
        )
    try:
        for ds in datasets:
            sop_class = ds.SOPClassUID.name
            try:
                status = assoc.send_c_store(ds)
            except ValueError:  # no accepted presentation context for the SOP class
                raise DeliveryError(
                    f"{destination} does not accept {sop_class} instances", retryable=False
                ) from None
            if "Status" not in status:  # no answer: timed out or aborted
                raise DeliveryError(f"C-STORE of a {sop_class} got no answer", retryable=True)
            if status.Status != STORE_SUCCESS and status.Status not in STORE_WARNINGS:
                raise _store_status_error(int(status.Status), sop_class)
    finally:
        if assoc.is_established:
            assoc.release()


def send(
    datasets: Sequence[Dataset],
    destination: Destination,
    *,
    timeout_s: float,
    calling_aet: str = DEFAULT_CALLING_AET,
) -> None:
    """Store every dataset at ``destination`` (one request or association), or raise
    ``DeliveryError``. ``timeout_s`` bounds each network step; ``calling_aet`` is our AE title
    toward a DIMSE destination."""
    if isinstance(destination, DicomwebDestination):
        _store_dicomweb(datasets, destination, timeout_s)
    else:
        _store_dimse(datasets, destination, timeout_s, calling_aet)


@dataclass(frozen=True)
class DeliveryAttempt:
    outcome: DeliveryOutcome
    retry_in_s: float | None = None  # for RETRY: when to try again
    reason: str | None = None  # for RETRY and DEAD_LETTER: why this attempt failed


def attempt_delivery(
    datasets: Sequence[Dataset],
    destination: Destination,
    *,
    attempt: int,
    policy: RetryPolicy,
    metrics: StoreMetrics,
    timeout_s: float,
    calling_aet: str = DEFAULT_CALLING_AET,
) -> DeliveryAttempt:
    """Attempt number ``attempt`` (1-based) of one delivery, its outcome counted and logged."""
    classes = sorted({ds.SOPClassUID.name for ds in datasets})
    where = {"destination": str(destination), "attempt": attempt, "sop_classes": classes}
    try:
        send(datasets, destination, timeout_s=timeout_s, calling_aet=calling_aet)
    except DeliveryError as exc:
        if policy.retries_after(attempt, exc):
            delay = policy.delay(attempt)
            outcome = DeliveryAttempt(DeliveryOutcome.RETRY, retry_in_s=delay, reason=exc.reason)
            log.warning("delivery failed; will retry", extra={**where, "reason": exc.reason})
        else:
            outcome = DeliveryAttempt(DeliveryOutcome.DEAD_LETTER, reason=exc.reason)
            log.error("delivery dead-lettered", extra={**where, "reason": exc.reason})
    else:
        outcome = DeliveryAttempt(DeliveryOutcome.DELIVERED)
        log.info("delivered", extra={**where, "instances": len(datasets)})
    metrics.pacs_deliveries.labels(
        destination_kind=destination.kind.value, outcome=outcome.outcome.value
    ).inc()
    return outcome
