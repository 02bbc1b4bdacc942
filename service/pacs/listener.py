"""``headct listen``: a DICOM C-STORE SCP (pynetdicom) that takes CT studies into the study store,
the study worker that triages them and, with ``HEADCT_PACS_DESTINATIONS``, the publisher that
sends their SR and key image back (``service.pacs.publish``), in one process.

Associations: the configured AE title; calling AE titles restricted to ``listen_calling_aes``
(others are rejected at association) unless that is empty; CT storage SOP classes with the
transfer syntaxes ``service.pacs.instances`` lists, and Verification (C-ECHO). Each C-STORE is
answered only after its instance is on disk and in the store (``receive_instance``): success, a
warning (0xB007: stored, but it cannot be triaged), or a failure status that says why
(``FAILURE_STATUS``); a failure to store answers 0xA700, so the sender keeps the instance and
retries. pynetdicom serves each association in its own thread; the worker runs on this process's
event loop until SIGTERM or SIGINT.
"""

from __future__ import annotations

import logging
import signal
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, start_http_server
from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from service.backends import create_backend
from service.backends.base import InferenceBackend
from service.log_config import configure_logging
from service.metrics import StoreMetrics
from service.pacs.instances import CT_STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from service.pacs.intake import receive_instance
from service.pacs.publish import run_study_workers
from service.pacs.store import StudyStore
from service.settings import Settings

log = logging.getLogger(__name__)
ROUTE = "dimse"


def _read(event: Event) -> tuple[Any, bytes, str]:
    ds = event.dataset
    return ds, event.encoded_dataset(include_meta=True), str(event.context.transfer_syntax)


def handle_store(event: Event, store: StudyStore, metrics: StoreMetrics) -> int:
    """One C-STORE: the instance durably stored, then its status."""
    outcome = receive_instance(store, metrics, lambda: _read(event), route=ROUTE)
    if outcome.error is not None:
        log.info("instance refused", extra={"code": outcome.error.code, "route": ROUTE})
    return outcome.status


def start_listener(
    store: StudyStore,
    settings: Settings,
    metrics: StoreMetrics,
    *,
    host: str,
    port: int,
) -> ThreadedAssociationServer:
    """The C-STORE SCP, serving in pynetdicom's threads until ``shutdown()``."""
    ae = AE(ae_title=settings.listen_ae_title)
    ae.require_calling_aet = list(settings.listen_calling_aes)
    for sop_class in CT_STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    ae.add_supported_context(Verification)
    handler_args: list[Any] = [store, metrics]
    server = ae.start_server(
        (host, port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store, handler_args)]
    )
    assert server is not None
    return server


async def _until_signalled() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _ in signals:
            return


async def _serve(
    store: StudyStore, backend: InferenceBackend, settings: Settings, metrics: StoreMetrics
) -> None:
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(run_study_workers, store, backend, settings, metrics)
        await _until_signalled()
        tasks.cancel_scope.cancel()


def run_listener(settings: Settings, *, host: str) -> None:
    """Serve C-STORE on ``host:settings.listen_port`` and triage what arrives, until SIGTERM or
    SIGINT. Blocks."""
    assert settings.data_dir is not None, "headct listen needs HEADCT_DATA_DIR"
    configure_logging(settings.log_level.value, settings.log_json)
    registry = CollectorRegistry(auto_describe=True)
    metrics = StoreMetrics(registry)
    backend = create_backend(settings)
    store = StudyStore.from_settings(settings)
    server = None
    try:
        if settings.listen_metrics_port is not None:
            start_http_server(settings.listen_metrics_port, addr=host, registry=registry)
        server = start_listener(store, settings, metrics, host=host, port=settings.listen_port)
        log.info(
            "listening",
            extra={
                "ae_title": settings.listen_ae_title,
                "port": settings.listen_port,
                "calling_aes": list(settings.listen_calling_aes),
            },
        )
        anyio.run(_serve, store, backend, settings, metrics)
    finally:
        if server is not None:
            server.shutdown()
        store.close()
        backend.close()
        log.info("listener stopped")
