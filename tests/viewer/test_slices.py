"""The viewer's page and slice endpoints in process (TestClient): the sheets' sizes and pixels, the
windows, the 404s, the cache's bound and order, and what the cache holds."""

from __future__ import annotations

import io
import pickle
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.contract import HUWindow
from service.errors import StudyImagesNotFoundError
from service.ingest import ingest_study
from service.preprocess import GridVolume
from service.settings import Settings
from service.viewer import STATIC_DIR
from service.viewer.volumes import RecentVolumes
from testing.onnx_fixture import FixtureModel, write_fixture_repository
from testing.studies import Patient, multipart_files, write_synthetic_study

API_KEY = "k-viewer"
AUTH = {"X-API-Key": API_KEY}
GRID = (32, 128, 128)  # the demo model's grid, so the byte counts are the ones users get
SHEET_BUDGET_BYTES = 2_000_000  # issue 15: the three windows of a study under 2 MB
PATIENT = Patient(name="Vqzxk^Ulmara", patient_id="PID-55102-VW", birth_date="19020304")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> FixtureModel:
    depth, height, width = GRID
    root = tmp_path_factory.mktemp("viewer_model")
    return write_fixture_repository(root, depth=depth, height=height, width=width)


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> list[list[Path]]:
    """Three different 20-slice studies; the first carries patient identifiers."""
    root = tmp_path_factory.mktemp("viewer_studies")
    return [
        write_synthetic_study(
            root / f"s{seed}", seed=seed, slices=20, patient=PATIENT if seed == 0 else None
        )
        for seed in range(3)
    ]


@pytest.fixture
def make_client(model: FixtureModel, tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        settings = Settings(
            model_repository=model.repository,
            upload_dir=tmp_path,
            onnx_intra_op_threads=1,
            api_keys=(API_KEY,),
            **overrides,
        )
        client = TestClient(create_app(settings, configure_logs=False))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def _triage(client: TestClient, files: list[Path]) -> dict[str, Any]:
    response = client.post("/v1/triage", files=multipart_files(files), headers=AUTH)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code and body["detail"]
    return body


def test_sheets_hold_every_grid_slice_under_each_window_of_the_card(
    make_client: Callable[..., TestClient], model: FixtureModel, studies: list[list[Path]]
) -> None:
    client = make_client()
    result = _triage(client, studies[1])
    uid = result["study_uid"]
    layout = client.get(f"/v1/studies/{uid}/slices", headers=AUTH)
    assert layout.status_code == 200 and layout.headers["cache-control"] == "no-store"
    meta = layout.json()
    depth, height, width = GRID
    assert (meta["slices"], meta["height"], meta["width"]) == GRID
    assert meta["slices"] == result["slices"]["count"] == len(result["slices"]["attention"])
    assert meta["columns"] * meta["rows"] >= depth > (meta["rows"] - 1) * meta["columns"]
    assert [w["name"] for w in meta["windows"]] == [w.name for w in model.card.windows]

    # the grid the gateway read, to check the pixels against
    volume = ingest_study(studies[1], grid=model.card.grid.to_model_grid()).volume
    total = 0
    sheets = {}
    for window in meta["windows"]:
        response = client.get(window["url"], headers=AUTH)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        assert response.headers["cache-control"] == "no-store"
        total += len(response.content)
        image = Image.open(io.BytesIO(response.content))
        assert image.mode == "L"
        assert image.size == (meta["columns"] * width, meta["rows"] * height)
        sheet = np.asarray(image)
        sheets[window["name"]] = sheet
        low = window["center"] - window["width"] / 2
        for index in (0, depth // 2, depth - 1):
            row, column = divmod(index, meta["columns"])
            tile = sheet[row * height : (row + 1) * height, column * width : (column + 1) * width]
            expected = np.clip((volume.hu[index] - low) / window["width"] * 255, 0, 255)
            assert np.abs(tile.astype(float) - expected).max() <= 0.51
        row, column = divmod(depth, meta["columns"])
        if row < meta["rows"]:  # tiles past the last slice are black
            assert not sheet[row * height :, column * width :].any()
    assert total < SHEET_BUDGET_BYTES, total
    assert not np.array_equal(sheets["brain"], sheets["bone"])


def test_unknown_studies_and_windows_are_404_problems(
    make_client: Callable[..., TestClient], studies: list[list[Path]]
) -> None:
    client = make_client()
    for path in ("/v1/studies/1.2.3.4/slices", "/v1/studies/1.2.3.4/slices/brain.png"):
        body = _problem(client.get(path, headers=AUTH), 404, "study_images_not_found")
        assert "16 most recent triages" in body["detail"]
    uid = _triage(client, studies[1])["study_uid"]
    body = _problem(
        client.get(f"/v1/studies/{uid}/slices/lung.png", headers=AUTH), 404, "unknown_window"
    )
    assert body["detail"] == "The model card's windows are brain, subdural, bone."
    _problem(client.get(f"/v1/studies/{uid}/slices"), 401, "unauthorized")
    _problem(client.get(f"/v1/studies/{uid}/slices/brain.png"), 401, "unauthorized")


def test_the_cache_keeps_the_most_recently_used_studies_up_to_its_bound(
    make_client: Callable[..., TestClient], studies: list[list[Path]]
) -> None:
    client = make_client(viewer_cache_studies=2)
    uids = [_triage(client, files)["study_uid"] for files in studies[:2]]
    # the first is asked for again, so the second is now the least recently used
    assert client.get(f"/v1/studies/{uids[0]}/slices", headers=AUTH).status_code == 200
    uids.append(_triage(client, studies[2])["study_uid"])
    kept = {uid: client.get(f"/v1/studies/{uid}/slices", headers=AUTH).status_code for uid in uids}
    assert kept == {uids[0]: 200, uids[1]: 404, uids[2]: 200}
    assert len(client.app.state.volumes) == 2  # type: ignore[attr-defined]


def test_with_no_cache_the_images_are_not_kept(
    make_client: Callable[..., TestClient], studies: list[list[Path]]
) -> None:
    client = make_client(viewer_cache_studies=0)
    uid = _triage(client, studies[1])["study_uid"]
    body = _problem(
        client.get(f"/v1/studies/{uid}/slices", headers=AUTH), 404, "study_images_not_found"
    )
    assert "0 most recent" in body["detail"]


def test_the_cache_holds_pixels_and_no_patient_identifiers(
    make_client: Callable[..., TestClient], studies: list[list[Path]]
) -> None:
    client = make_client()
    uid = _triage(client, studies[0])["study_uid"]
    assert client.get(f"/v1/studies/{uid}/slices/brain.png", headers=AUTH).status_code == 200
    volumes = client.app.state.volumes  # type: ignore[attr-defined]
    assert uid in volumes
    held = pickle.dumps(volumes._entries)
    for secret in (PATIENT.name, PATIENT.patient_id, PATIENT.birth_date):
        assert secret.encode() not in held


def _volume(value: int) -> GridVolume:
    return GridVolume(
        hu=np.full((3, 4, 4), value, np.int16),
        spacing_mm=(5.0, 1.0, 1.0),
        positions_mm=np.arange(3.0),
        source_positions_mm=np.arange(3.0),
    )


def test_recent_volumes_is_least_recently_used_and_renders_once() -> None:
    volumes = RecentVolumes(2)
    brain = HUWindow(name="brain", center=40, width=80)
    volumes.keep("a", _volume(0))
    volumes.keep("b", _volume(40))
    first = volumes.sheet("a", brain)
    assert volumes.sheet("a", brain) is first  # rendered once, kept
    volumes.keep("c", _volume(80))  # "b" was used least recently
    assert "a" in volumes and "c" in volumes and "b" not in volumes
    with pytest.raises(StudyImagesNotFoundError):
        volumes.images("b")
    volumes.keep("a", _volume(80))  # triaged again: the new volume, its sheets rendered anew
    grey = np.asarray(Image.open(io.BytesIO(volumes.sheet("a", brain))))
    assert grey[:4, :4].min() == 255
    volumes.keep("", _volume(0))  # a study without a UID cannot be asked for
    assert len(volumes) == 2


def test_the_page_is_served_with_its_assets_and_names_no_other_host(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client()
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == "/viewer/"
    page = client.get("/viewer/")  # no API key: the page holds no data
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert re.search(r"Content-Security-Policy\"\s+content=\"default-src 'self'", page.text)
    for asset in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        if asset.startswith("data:"):
            continue
        assert "/" not in asset, asset  # beside the page, in the package
        served = client.get("/viewer/" + asset)
        assert served.status_code == 200, asset
        if asset.endswith(".js"):  # module scripts load only with a JavaScript type
            assert served.headers["content-type"].startswith("text/javascript")
    for path in STATIC_DIR.iterdir():
        text = path.read_text()
        if path.suffix == ".js":
            for module in re.findall(r'from "([^"]+)"', text):
                assert module.startswith("./") and (STATIC_DIR / module).is_file(), module
        urls = re.findall(r"https?://[^\s\"')]+", text)
        assert set(urls) <= {"http://www.w3.org/2000/svg"}, (path.name, urls)  # a namespace
