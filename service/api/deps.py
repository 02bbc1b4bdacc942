"""Request dependencies as ``Annotated`` aliases. Everything comes from ``app.state`` (built in the
lifespan), so tests swap any of it with ``app.dependency_overrides``."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.api.capacity import StudyLimiter, UploadLimiter
from service.backends.base import InferenceBackend
from service.errors import BackendUnavailableError, UnauthorizedError
from service.metrics import GatewayMetrics
from service.model_card import ModelCard
from service.pacs.store import StudyStore
from service.pipeline import TriagePipeline
from service.settings import Settings
from service.viewer.volumes import RecentVolumes


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_backend(request: Request) -> InferenceBackend:
    backend: InferenceBackend | None = getattr(request.app.state, "backend", None)
    if backend is None:
        raise BackendUnavailableError("The model is not loaded.", retry_after=5)
    return backend


def read_card(backend: InferenceBackend) -> ModelCard:
    """The backend's card. May block (Triton's is read from the server): call it in a worker
    thread, as FastAPI does for this sync dependency."""
    return backend.card


def get_card(backend: Annotated[InferenceBackend, Depends(get_backend)]) -> ModelCard:
    return read_card(backend)


def get_volumes(request: Request) -> RecentVolumes:
    volumes: RecentVolumes = request.app.state.volumes
    return volumes


async def get_pipeline(
    backend: Annotated[InferenceBackend, Depends(get_backend)],
    volumes: Annotated[RecentVolumes, Depends(get_volumes)],
) -> TriagePipeline:
    return TriagePipeline(backend, volumes)


def get_metrics(request: Request) -> GatewayMetrics:
    metrics: GatewayMetrics = request.app.state.metrics
    return metrics


def get_limiter(request: Request) -> StudyLimiter:
    limiter: StudyLimiter = request.app.state.limiter
    return limiter


def get_upload_limiter(request: Request) -> UploadLimiter:
    uploads: UploadLimiter = request.app.state.uploads
    return uploads


def get_store(request: Request) -> StudyStore:
    """The study store; its routes are only mounted when HEADCT_DATA_DIR sets one up."""
    store: StudyStore = request.app.state.store
    return store


_api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="An API key.")
_bearer = HTTPBearer(auto_error=False, description="An API key as a bearer token.")


def require_api_key(
    settings: Annotated[Settings, Depends(get_settings)],
    api_key: Annotated[str | None, Security(_api_key_header)] = None,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None,
) -> None:
    """When ``HEADCT_API_KEYS`` is set, one of them must come as X-API-Key or a bearer token."""
    if not settings.api_keys:
        return
    offered = api_key or (bearer.credentials if bearer else None)
    if not offered:
        raise UnauthorizedError("This gateway needs an API key (X-API-Key or Bearer).")
    # compare_digest against every key, so timing does not tell which prefix matched
    matches = [hmac.compare_digest(offered.encode(), key.encode()) for key in settings.api_keys]
    if not any(matches):
        raise UnauthorizedError("The API key is not valid.")


SettingsDep = Annotated[Settings, Depends(get_settings)]
CardDep = Annotated[ModelCard, Depends(get_card)]
PipelineDep = Annotated[TriagePipeline, Depends(get_pipeline)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
LimiterDep = Annotated[StudyLimiter, Depends(get_limiter)]
VolumesDep = Annotated[RecentVolumes, Depends(get_volumes)]
UploadLimiterDep = Annotated[UploadLimiter, Depends(get_upload_limiter)]
StoreDep = Annotated[StudyStore, Depends(get_store)]
ApiKeyDep = Depends(require_api_key)
