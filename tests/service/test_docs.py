"""The API documentation pages work without internet (their assets come from the gateway), and the
README's endpoint table says truly which endpoints need an API key."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.routing import Mount

README = Path(__file__).resolve().parents[2] / "README.md"
API_KEY = "k-docs"


@pytest.fixture
def keyed(make_client: Callable[..., TestClient], tmp_path: Path) -> TestClient:
    """With a study store, so its routes (STOW-RS, /v1/studies) are mounted too."""
    return make_client(api_keys=(API_KEY,), data_dir=tmp_path / "data")


@pytest.mark.parametrize(
    ("page", "script_marker"), [("/docs", "SwaggerUIBundle"), ("/redoc", "Redoc")]
)
def test_docs_pages_reference_no_external_host(
    client: TestClient, page: str, script_marker: str
) -> None:
    response = client.get(page)
    assert response.status_code == 200
    html = response.text
    assert not re.search(r"(https?:)?//", html), "the page names another host"
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    scripts = [a for a in assets if a.endswith(".js")]
    assert scripts, html
    for asset in assets:
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 1000, asset
    assert any(script_marker in client.get(s).text for s in scripts)


def test_swagger_ui_reads_the_openapi_version_the_gateway_writes(client: TestClient) -> None:
    """Swagger UI 4 shows 'Unable to render this definition' for OpenAPI 3.1; 5 reads it."""
    version = client.get("/openapi.json").json()["openapi"]
    (script,) = re.findall(r'src="([^"]+\.js)"', client.get("/docs").text)
    bundle = client.get(script).text
    assert version.startswith("3.1") and "isOAS31" in bundle


def _endpoint_table() -> dict[str, tuple[str, bool]]:
    """Path -> (method, needs an API key), from the README's table of endpoints (`METHOD /path`
    cells)."""
    needs_key: dict[str, tuple[str, bool]] = {}
    rows = [line for line in README.read_text().splitlines() if line.startswith("| `")]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        if cells[-1] not in ("yes", "no"):
            continue
        for method, path in re.findall(r"`(GET|POST) (/[^`]*)`", cells[0]):
            needs_key[path] = (method, cells[-1] == "yes")
        # folders a row's description names (assets) belong to it too
        for path in re.findall(r"`(/[^`]*/)`", cells[1]):
            needs_key[path] = ("GET", cells[-1] == "yes")
    return needs_key


def test_readme_says_which_endpoints_need_a_key(keyed: TestClient) -> None:
    table = _endpoint_table()
    assert {"/v1/triage", "/healthz", "/docs"} <= set(table), table
    assets = re.findall(r'(?:src|href)="([^"]+)"', keyed.get("/docs").text)
    for path, (method, needs_key) in table.items():
        # a folder: the docs' assets in it
        urls = [a for a in assets if a.startswith(path)] if path.endswith("/") else [path]
        assert urls, path
        for url in urls:
            status = keyed.request(method, url).status_code
            assert (status == 401) == needs_key, f"{method} {url}: {status}"
            if needs_key:
                authorised = keyed.request(method, url, headers={"X-API-Key": API_KEY})
                assert authorised.status_code != 401, url

    def documented(path: str) -> bool:
        # "/" names only itself: as a prefix it would cover every path
        return path in table or any(path.startswith(p.rstrip("/")) for p in table if p != "/")

    # the app's own routes and mounts, and those of included routers (FastAPI keeps these out of
    # app.routes): every path in the schema
    routes = [r.path for r in keyed.app.routes if isinstance(r, APIRoute | Mount)]
    routes += list(keyed.app.openapi()["paths"])
    undocumented = [p for p in routes if not documented(p)]
    assert not undocumented, f"endpoints missing from the README's table: {undocumented}"
