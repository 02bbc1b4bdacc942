"""One router per resource. The versioned ones (everything under ``/v1``, all behind the API key)
are made by ``versioned_router``, which sets the prefix and the key check once.

Routes are declared on a router that carries the prefix itself, not included through a prefixed
parent: FastAPI reports a route's own path as its template (the request counter's ``route``
label), and a route included through a prefixed parent reports it without the prefix.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api import API_PREFIX
from service.api.deps import ApiKeyDep


def versioned_router(**options: Any) -> APIRouter:
    """A router for routes under ``/v1`` that need the API key; ``options`` as for APIRouter."""
    return APIRouter(prefix=API_PREFIX, dependencies=[ApiKeyDep], **options)
