"""The gateway's FastAPI app, built by ``create_app``; nothing is built at import time.

``uvicorn --factory service.app:create_app`` or ``headct serve``. The lifespan loads the backend
(and with it the model card) onto ``app.state``; routes reach it through ``service.api.deps``.
With ``HEADCT_DATA_DIR`` set it also opens the study store, mounts STOW-RS (``/dicomweb``) and the
study queries (``/v1/studies``), and runs a study worker (``service.pacs.worker``) beside the
routes; its stored studies take the same capacity slots as uploads. With
``HEADCT_PACS_DESTINATIONS`` too, each triaged study's SR and key image are sent to them
(``service.pacs.publish``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import anyio
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from service.api.capacity import StudyLimiter, UploadLimiter
from service.api.deps import read_card
from service.api.middleware import RequestContextMiddleware
from service.api.problems import ERROR_CODES, install_problem_handlers
from service.api.routes import dicomweb, health, metrics, model, studies, triage, viewer
from service.backends import create_backend
from service.errors import BackendTimeoutError, BackendUnavailableError
from service.log_config import configure_logging, silence_header_warnings
from service.metrics import GatewayMetrics
from service.model_card import NOT_FOR_CLINICAL_USE
from service.pacs.publish import run_study_workers
from service.pacs.store import StudyStore
from service.settings import BackendKind, Settings
from service.viewer.volumes import RecentVolumes

log = logging.getLogger(__name__)

DESCRIPTION = (
    "Head CT triage: upload a non-contrast head CT study (DICOM files or a zip) and get the "
    "probability of 75 findings, a triage priority, the key slice and the Mixture of Low-Rank "
    "Experts router weights. Errors are application/problem+json with a stable `code`. "
    + NOT_FOR_CLINICAL_USE
    + "\n\n"
    + ERROR_CODES
)


def create_app(
    settings: Settings | None = None,
    *,
    configure_logs: bool = True,
) -> FastAPI:
    """The gateway. ``settings`` default to the environment (``HEADCT_*``); a bad value raises
    a ``ValidationError`` naming the variable."""
    settings = settings or Settings()
    gateway_metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if configure_logs:
            configure_logging(settings.log_level.value, settings.log_json)
        silence_header_warnings()
        backend = await anyio.to_thread.run_sync(create_backend, settings)
        app.state.backend = backend
        try:
            # off the event loop: for triton the card is a network call that may hang
            card = await anyio.to_thread.run_sync(read_card, backend)
            gateway_metrics.describe_model(card, backend.kind)
            log.info(
                "model loaded",
                extra={"model": card.name, "version": card.version, "backend": backend.kind},
            )
        except (BackendUnavailableError, BackendTimeoutError):
            if settings.backend is not BackendKind.TRITON:
                raise
            log.warning("triton not reachable yet; /readyz will say when it is")
        store = None
        try:
            if settings.store_enabled:
                store = await anyio.to_thread.run_sync(StudyStore.from_settings, settings)
                app.state.store = store
            async with anyio.create_task_group() as tasks:
                if store is not None:
                    workers = partial(run_study_workers, slot=app.state.limiter.slot)
                    tasks.start_soon(workers, store, backend, settings, gateway_metrics.store)
                yield
                tasks.cancel_scope.cancel()
        finally:
            app.state.backend = None
            backend.close()
            if store is not None:
                store.close()

    # /docs (Swagger UI) and /redoc load their scripts, styles and icon from the package, not from
    # a CDN: hospital networks often have no internet, and a CDN would see who reads the docs.
    app = FastAPIOffline(
        title="headct-triage gateway",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = gateway_metrics
    app.state.backend = None
    app.state.limiter = StudyLimiter(settings.max_concurrent_jobs, settings.max_queued_jobs)
    app.state.uploads = UploadLimiter(settings.max_uploads_per_client)
    app.state.volumes = RecentVolumes(settings.viewer_cache_studies)
    install_problem_handlers(app)
    for module in (triage, model, viewer, health, metrics):
        app.include_router(module.router)
    viewer.mount_viewer(app)
    if settings.store_enabled:
        app.include_router(studies.router)
        app.include_router(dicomweb.router)
    app.add_middleware(RequestContextMiddleware, metrics=gateway_metrics)
    return app
