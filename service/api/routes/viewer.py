"""The viewer: its page (static files at ``/viewer``, ``/`` redirects there) and the slice images
it shows, ``GET /v1/studies/{study_uid}/slices`` (how the sheets are laid out, and where) and
``GET /v1/studies/{study_uid}/slices/{window}.png`` (one PNG sheet per display window of the model
card), rendered from the volumes the gateway keeps of its most recent triages
(``service.viewer.volumes``). The page is public (it holds no data); the images need the API key.

Pixel data is patient data: the images are sent ``Cache-Control: no-store``, so a shared
workstation's browser keeps no copy on disk.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from service.api import API_PREFIX
from service.api.deps import CardDep, VolumesDep
from service.api.routes import versioned_router
from service.api.routes.triage import PROBLEM_RESPONSES, problem_doc
from service.errors import UnknownWindowError
from service.schemas import SliceSheets, WindowSheet
from service.viewer import STATIC_DIR

VIEWER_PATH = "/viewer"
NO_STORE = {"Cache-Control": "no-store"}

router = versioned_router(tags=["viewer"])
pages = APIRouter(include_in_schema=False)

_NOT_FOUND = problem_doc(
    "The gateway keeps no images of this study (study_images_not_found: never triaged here, "
    "pushed out by more recent studies, or before a restart), or the window is not one of the "
    "model card's (unknown_window)."
)
_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: PROBLEM_RESPONSES[401],
    404: _NOT_FOUND,
    503: PROBLEM_RESPONSES[503],
}


def mount_viewer(app: FastAPI) -> None:
    """The page and its scripts and styles, from the package: nothing from another host."""
    app.include_router(pages)
    app.mount(VIEWER_PATH, StaticFiles(directory=STATIC_DIR, html=True), name="viewer")


@pages.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse(VIEWER_PATH + "/")


def _sheet_url(study_uid: str, window: str) -> str:
    return f"{API_PREFIX}/studies/{quote(study_uid, safe='')}/slices/{window}.png"


@router.get(
    "/studies/{study_uid}/slices",
    response_model=SliceSheets,
    responses=_RESPONSES,
    summary="A triaged study's slice images: layout and one sheet per window",
)
def slice_sheets(
    study_uid: str, card: CardDep, volumes: VolumesDep, response: Response
) -> SliceSheets:
    """For a study this gateway triaged recently (it keeps the last `HEADCT_VIEWER_CACHE_STUDIES`
    in memory): the model grid's size and spacing, and a URL per display window of the model card
    (brain, subdural, bone) for the PNG sheet of all slices. Slice 0 is inferior, as in the
    result's `slices.attention` and `router.slice_weights`."""
    images = volumes.images(study_uid)
    layout = images.layout
    response.headers.update(NO_STORE)
    return SliceSheets(
        study_uid=study_uid,
        slices=layout.slices,
        height=layout.height,
        width=layout.width,
        columns=layout.columns,
        rows=layout.rows,
        spacing_mm=list(images.spacing_mm),
        windows=[
            WindowSheet(
                name=w.name, center=w.center, width=w.width, url=_sheet_url(study_uid, w.name)
            )
            for w in card.windows
        ],
    )


@router.get(
    "/studies/{study_uid}/slices/{window}.png",
    response_class=Response,
    responses={
        200: {
            "description": "Every slice of the study under the window, as tiles of one "
            "greyscale PNG (layout: `GET /v1/studies/{study_uid}/slices`).",
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
        },
        **_RESPONSES,
    },
    summary="A triaged study's slices under one window, as one PNG sheet",
)
def slice_sheet(study_uid: str, window: str, card: CardDep, volumes: VolumesDep) -> Response:
    """HU on the model grid mapped through the window (center +- width/2 to 0..255), lossless.
    Rendered on the first request and kept with the study's volume."""
    chosen = next((w for w in card.windows if w.name == window), None)
    if chosen is None:
        names = ", ".join(w.name for w in card.windows)
        raise UnknownWindowError(f"The model card's windows are {names}.")
    return Response(volumes.sheet(study_uid, chosen), media_type="image/png", headers=NO_STORE)
