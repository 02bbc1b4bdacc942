"""Probes: ``/healthz`` (the process answers) and ``/readyz`` (the backend can serve)."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from service.backends.base import InferenceBackend
from service.errors import HeadCTError
from service.metrics import GatewayMetrics
from service.model_card import ModelCard
from service.schemas import Health, ModelRef, Readiness

router = APIRouter(tags=["probes"])

# A readiness probe that hangs is worse than one that says no.
_READY_TIMEOUT_S = 5.0


def _ready_card(backend: InferenceBackend) -> ModelCard | None:
    """The card when the backend is ready, else None; blocks (Triton): run it in a thread."""
    try:
        return backend.card if backend.ready() else None
    except HeadCTError:  # the backend went away between the two calls
        return None


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    """Answers on the event loop, whatever the workers are doing."""
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "The backend cannot serve yet."}},
    summary="Readiness",
)
async def readyz(request: Request) -> JSONResponse:
    """200 when the model is loaded (embedded) or ready on the Triton server."""
    backend: InferenceBackend | None = getattr(request.app.state, "backend", None)
    if backend is None:
        body = Readiness(ready=False, backend="none", detail="The model is not loaded.")
        return JSONResponse(body.model_dump(mode="json"), status_code=503)
    card = None
    with anyio.move_on_after(_READY_TIMEOUT_S):
        card = await anyio.to_thread.run_sync(_ready_card, backend, abandon_on_cancel=True)
    ready = card is not None
    model = None
    if card is not None:
        model = ModelRef(name=card.name, version=card.version)
        metrics: GatewayMetrics = request.app.state.metrics
        metrics.describe_model(card, backend.kind)
    body = Readiness(
        ready=ready,
        backend=backend.kind,
        model=model,
        detail=None if ready else "The backend is not ready.",
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)
