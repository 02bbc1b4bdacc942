"""What the viewer costs: a 32-slice 256x256 synthetic study, the demo model, a real
``headct serve`` (uvicorn) subprocess on loopback and Debian's headless Chromium.

(a) drop to banner: the study's folder given to the page's folder picker, timed by the page itself
    (its ``headct:drop`` and ``headct:banner`` performance marks: the files taken, uploaded as
    multipart parts, triaged, the banner and findings drawn), interleaved round by round with
(b) the plain API call for the same files (``POST /v1/triage``, multipart, from Python);
    (a)/(b) at the median is what the page adds to the wait;
(c) banner to the first slice drawn (the layout request, the first window's sheet, decoding);
(d) the bytes the slice endpoints send per study: the layout JSON and the three windows' PNG sheets
    on the model grid (target < 2 MB), against the INT16 volume they show and the result JSON;
    and a sheet's first request (rendered) against a repeat (kept).

Run: ``python -m bench.viewer``. Results go to bench/results/viewer.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
from selenium.webdriver import Chrome
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from bench.common import median, write_result
from service.ingest import ingest_study
from service.model_card import ModelCard
from service.settings import DEFAULT_MODEL_REPOSITORY
from service.viewer.render import render_sheet
from testing.browser import chromium
from testing.gateway_process import GatewayProcess, gateway_process
from testing.studies import multipart_files, write_synthetic_study

ROOT = Path(__file__).resolve().parent.parent
SLICES, MATRIX = 32, 256
BUDGET_BYTES = 2_000_000
REPEATS = 5
TIMEOUT_S = 120

_MEASURES = """
const mark = (name) => performance.getEntriesByName(name)[0].startTime;
return {banner: mark('headct:banner') - mark('headct:drop'),
        slices: mark('headct:slices-shown') - mark('headct:banner')};
"""


def _through_page(driver: Chrome, folder: Path) -> dict[str, float]:
    """One drop: the folder picked, until every window's sheet has arrived (their rendering must
    not overlap the next API call); the page's own times (ms)."""
    driver.execute_script("performance.clearMarks()")  # the last drop's
    driver.find_element(By.ID, "pick-folder").send_keys(str(folder))
    WebDriverWait(driver, TIMEOUT_S, poll_frequency=0.02).until(
        lambda d: (
            d.execute_script("return performance.getEntriesByName('headct:slices-loaded').length")
            or d.find_element(By.ID, "problem").is_displayed()
        )
    )
    problem = driver.find_element(By.ID, "problem")
    if problem.is_displayed():
        raise RuntimeError(f"the page refused the study: {problem.text}")
    measures: dict[str, float] = driver.execute_script(_MEASURES)
    return measures


def _through_api(url: str, files: list[Path]) -> tuple[float, float]:
    """The client's time for the call and the server's own ``timing_ms.total`` (ms)."""
    started = time.perf_counter()
    response = httpx2.post(url + "/v1/triage", files=multipart_files(files), timeout=TIMEOUT_S)
    elapsed = (time.perf_counter() - started) * 1e3
    response.raise_for_status()
    return elapsed, float(response.json()["timing_ms"]["total"])


def _slice_bytes(gateway: GatewayProcess, files: list[Path]) -> dict[str, Any]:
    """Triage once more (a fresh entry, no sheet rendered yet), then fetch what the page fetches."""
    result = httpx2.post(
        gateway.url + "/v1/triage", files=multipart_files(files), timeout=TIMEOUT_S
    )
    result.raise_for_status()
    uid = result.json()["study_uid"]
    layout = httpx2.get(f"{gateway.url}/v1/studies/{uid}/slices", timeout=30)
    layout.raise_for_status()
    meta = layout.json()
    windows: dict[str, dict[str, float]] = {}
    for window in meta["windows"]:
        timings = []
        for _ in range(1 + REPEATS):  # the first renders the sheet; the others get it as kept
            started = time.perf_counter()
            sheet = httpx2.get(gateway.url + window["url"], timeout=30)
            timings.append((time.perf_counter() - started) * 1e3)
            sheet.raise_for_status()
        windows[window["name"]] = {
            "bytes": len(sheet.content),
            "first_ms": round(timings[0], 1),
            "kept_median_ms": round(median(timings[1:]), 1),
        }
    # the rendering alone, in this process, on the same grid
    card = ModelCard.from_json(httpx2.get(gateway.url + "/v1/model", timeout=30).content)
    hu = ingest_study(files, grid=card.grid.to_model_grid()).volume.hu
    for window in card.windows:
        renders = []
        for _ in range(REPEATS):
            started = time.perf_counter()
            render_sheet(hu, window)
            renders.append((time.perf_counter() - started) * 1e3)
        windows[window.name]["render_median_ms"] = round(median(renders), 1)
    volume_bytes = meta["slices"] * meta["height"] * meta["width"] * 2
    sheets = sum(w["bytes"] for w in windows.values())
    return {
        "grid": [meta["slices"], meta["height"], meta["width"]],
        "layout_json_bytes": len(layout.content),
        "windows": windows,
        "sheets_bytes": sheets,
        "total_bytes": sheets + len(layout.content),
        "int16_volume_bytes": volume_bytes,
        "result_json_bytes": len(result.content),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="headct-bench-viewer-") as tmp:
        folder = Path(tmp) / "study"
        files = write_synthetic_study(folder, seed=21, slices=SLICES, matrix=MATRIX)
        upload_mb = sum(f.stat().st_size for f in files) / 1e6
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEADCT_")}
        env["PYTHONPATH"] = str(ROOT)
        command = [sys.executable, "-m", "service.cli", "serve"]
        log = Path(tmp) / "gateway.log"
        with gateway_process(command, log=log, env=env, cwd=ROOT) as gateway, chromium() as driver:
            driver.get(gateway.url + "/viewer/")
            WebDriverWait(driver, 30).until(
                lambda d: "version" in d.find_element(By.ID, "model-info").text
            )
            _through_page(driver, folder)  # warm: the page's modules, the model's first run
            _through_api(gateway.url, files)
            page: list[dict[str, float]] = []
            api: list[float] = []
            server: list[float] = []
            for _ in range(args.rounds):
                page.append(_through_page(driver, folder))
                client_ms, server_ms = _through_api(gateway.url, files)
                api.append(client_ms)
                server.append(server_ms)
            sizes = _slice_bytes(gateway, files)
    load_after = os.getloadavg()

    banner = [p["banner"] for p in page]
    slices = [p["slices"] for p in page]
    ratio = median(banner) / median(api)
    payload = {
        "study": f"{SLICES}-slice {MATRIX}x{MATRIX} synthetic, {upload_mb:.1f} MB upload",
        "model": str(DEFAULT_MODEL_REPOSITORY / "headct_molre") + " (demo model, embedded onnx)",
        "rounds": args.rounds,
        "drop_to_banner_ms": [round(v, 1) for v in banner],
        "api_call_ms": [round(v, 1) for v in api],
        "api_call_server_total_ms": [round(v, 1) for v in server],
        "banner_to_first_slice_ms": [round(v, 1) for v in slices],
        "drop_to_banner_over_api_call": round(ratio, 3),
        "slice_endpoint": sizes,
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "note": "shared 2-core machine (other jobs ran at the same time): compare the ratios, "
        "not the absolute times",
    }
    windows_rows = "\n".join(
        f"| {name} | {w['bytes']:,} | {w['render_median_ms']} | {w['first_ms']} | "
        f"{w['kept_median_ms']} |"
        for name, w in sizes["windows"].items()
    )
    overlap = min(banner) < max(api) and min(api) < max(banner)
    verdict = (
        "the two ranges overlap: on this machine the page adds no cost that stands out of the noise"
        if overlap
        else "the ranges do not overlap"
    )
    grid = "x".join(map(str, sizes["grid"]))
    table = f"""# Viewer benchmark ({payload["study"]}; demo model, embedded onnx)

Headless Chromium ({args.rounds} rounds, interleaved with the plain API call, after one warm-up of
each) against a real `headct serve` on loopback. **Shared 2-core machine**: other jobs ran at the
same time (1-minute load average {load_before[0]:.1f} before, {load_after[0]:.1f} after), so
compare ratios, not absolute times.

| path | median ms | min ms | max ms |
|---|---|---|---|
| drop to banner (the page's marks) | {median(banner):.0f} | {min(banner):.0f} | {max(banner):.0f} |
| plain API call, same files (httpx) | {median(api):.0f} | {min(api):.0f} | {max(api):.0f} |
| its `timing_ms.total` | {median(server):.0f} | {min(server):.0f} | {max(server):.0f} |
| banner to first slice drawn | {median(slices):.0f} | {min(slices):.0f} | {max(slices):.0f} |

Drop to banner / API call at the median: **{ratio:.2f}x**; {verdict}. The page's time covers
reading the files, the multipart upload from the browser, the triage and drawing the banner and
75 findings; the API call's covers the upload and the triage.

## Bytes the slice endpoints send per study (model grid {grid})

| window | PNG bytes | render ms | first request ms | later requests ms |
|---|---|---|---|---|
{windows_rows}

Render: the sheet made in this process (median of {REPEATS}); first request: the gateway renders
it; later requests: it is kept (median of {REPEATS}).

Three windows: **{sizes["sheets_bytes"]:,} bytes** ({sizes["sheets_bytes"] / BUDGET_BYTES:.0%} of
the 2 MB target), plus {sizes["layout_json_bytes"]:,} bytes of layout JSON; the INT16 volume they
show is {sizes["int16_volume_bytes"]:,} bytes (sheets / volume:
{sizes["sheets_bytes"] / sizes["int16_volume_bytes"]:.2f}x), the triage result JSON
{sizes["result_json_bytes"]:,} bytes. PNG is lossless, so a scan's noise sets its size; whatever
the content, a window's sheet cannot exceed its 8-bit pixels ({sizes["int16_volume_bytes"] // 2:,}
bytes) by more than PNG's framing, so three stay under 2 MB on this grid.
"""
    path = write_result("viewer", payload, table)
    print(table)
    print(f"wrote {path}")
    if sizes["sheets_bytes"] >= BUDGET_BYTES:
        raise SystemExit("the three windows' sheets are over the 2 MB budget")


if __name__ == "__main__":
    main()
