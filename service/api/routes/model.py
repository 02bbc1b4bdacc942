"""``GET /v1/model``: the card of the model being served."""

from __future__ import annotations

from service.api.deps import CardDep
from service.api.routes import versioned_router
from service.api.routes.triage import PROBLEM_RESPONSES
from service.model_card import ModelCard

router = versioned_router(tags=["model"])


@router.get(
    "/model",
    response_model=ModelCard,
    responses={s: PROBLEM_RESPONSES[s] for s in (401, 503)},
    summary="The model card",
)
async def model_card(card: CardDep) -> ModelCard:
    """Name, version, backbone, adapter, input grid, HU windows, the 75 findings with their
    operating thresholds, the router's reference weights, and provenance."""
    return card
