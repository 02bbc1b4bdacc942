"""The viewer in a real browser: Debian's headless Chromium (selenium, chromedriver) against a real
``headct serve`` on loopback with the shipped demo model and an API key. One gateway and one
browser for the module; each state is written as a 1280x800 screenshot (to
``HEADCT_VIEWER_SCREENSHOTS`` when set, else a temporary folder)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from selenium.webdriver import ActionChains, Chrome
from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from testing.browser import chromium
from testing.gateway_process import GatewayProcess, gateway_process
from testing.studies import multipart_files

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "viewer-test-key"
TIMEOUT_S = 90

# What the page's canvas shows: the sum of its red channel, a hash of all channels, how many
# pixels are tinted (red well above green: the slices are greyscale, so only the overlay does
# that), and the tint's mean strength (red minus green over the pixels with any: proportional to
# the overlay's opacity, whatever the size of the head on the slice).
CANVAS_SIGNATURE = """
const c = document.getElementById('slice-canvas');
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let red = 0, hash = 0, tinted = 0, excess = 0, any = 0;
for (let i = 0; i < d.length; i += 4) {
  red += d[i];
  hash = (hash * 31 + d[i] + 7 * d[i + 1] + 13 * d[i + 2]) % 1000000007;
  if (d[i] > d[i + 1] + 30) tinted++;
  if (d[i] > d[i + 1]) { any++; excess += d[i] - d[i + 1]; }
}
return {red, hash, tinted, strength: excess / Math.max(any, 1),
        slice: Number(c.dataset.slice), window: c.dataset.window};
"""

FINDING_ROWS = """
return [...document.querySelectorAll('#findings section.group')].map(s => ({
  category: s.dataset.category,
  codes: [...s.querySelectorAll('tr.finding')].map(r => r.dataset.code),
  positive: [...s.querySelectorAll('tr.finding')].map(r => r.classList.contains('positive')),
}));
"""

DROP_NOTES = """
const dt = new DataTransfer();
dt.items.add(new File(['notes, not an image\\n'], 'notes.txt', {type: 'text/plain'}));
const zone = document.getElementById('dropzone');
for (const type of ['dragenter', 'dragover', 'drop']) {
  zone.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEADCT_")}
    env.update(PYTHONPATH=str(ROOT), HEADCT_API_KEYS=API_KEY, HEADCT_ONNX_INTRA_OP_THREADS="2")
    log = tmp_path_factory.mktemp("gateway") / "stderr.log"
    command = [sys.executable, "-m", "service.cli", "serve"]  # the shipped demo model
    with gateway_process(command, log=log, env=env, cwd=ROOT) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Chrome]:
    with chromium(width=1280, height=800) as driver:
        yield driver


@pytest.fixture(scope="module")
def api_result(gateway: GatewayProcess, study_folder: Path) -> dict[str, Any]:
    """The JSON API's answer for the study the page is given."""
    response = httpx2.post(
        gateway.url + "/v1/triage",
        files=multipart_files(sorted(study_folder.glob("*.dcm"))),
        headers={"X-API-Key": API_KEY},
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _wait(driver: Chrome, condition: Any, timeout_s: float = TIMEOUT_S) -> Any:
    return WebDriverWait(driver, timeout_s, poll_frequency=0.1).until(condition)


def _shown(driver: Chrome, element_id: str) -> bool:
    return bool(driver.find_element(By.ID, element_id).is_displayed())


def _mark_count(driver: Chrome, name: str) -> int:
    return int(driver.execute_script(f"return performance.getEntriesByName('{name}').length"))


def _pick_folder(driver: Chrome, folder: Path) -> None:
    driver.execute_script("performance.clearMarks()")  # the last upload's
    driver.find_element(By.ID, "pick-folder").send_keys(str(folder))
    # once the page has the files (its drop mark), the last upload's banner or problem is gone
    _wait(driver, lambda d: _mark_count(d, "headct:drop") == 1)
    _wait(driver, lambda d: _shown(d, "banner") or _shown(d, "problem"))
    assert not _shown(driver, "problem"), driver.find_element(By.ID, "problem").text
    _wait(driver, lambda d: _mark_count(d, "headct:slices-shown") == 1)


@pytest.fixture(scope="module")
def opened(
    browser: Chrome, gateway: GatewayProcess, study_folder: Path, screenshots: Path
) -> Chrome:
    """The page opened at ``/``: the gateway wants a key, the page asks for it, it is entered
    once; then the study's folder is picked."""
    browser.get(gateway.url + "/")
    assert browser.current_url == gateway.url + "/viewer/"
    _wait(browser, lambda d: _shown(d, "key-form"))
    assert "needs an API key" in browser.find_element(By.ID, "model-info").text
    browser.save_screenshot(str(screenshots / "01-api-key.png"))
    browser.find_element(By.ID, "api-key").send_keys(API_KEY, Keys.ENTER)
    _wait(browser, lambda d: "version" in d.find_element(By.ID, "model-info").text)
    assert not _shown(browser, "key-form")
    _pick_folder(browser, study_folder)
    browser.save_screenshot(str(screenshots / "02-result.png"))
    return browser


@pytest.fixture
def result_page(opened: Chrome, api_result: dict[str, Any], study_folder: Path) -> Chrome:
    """The page showing the study's result (picked again if another test left an error)."""
    if (
        not _shown(opened, "banner")
        or api_result["study_uid"] not in opened.find_element(By.ID, "study-line").text
    ):
        _pick_folder(opened, study_folder)
    return opened


def test_the_banner_and_findings_agree_with_the_json_api(
    result_page: Chrome, api_result: dict[str, Any], gateway: GatewayProcess
) -> None:
    page = result_page
    banner = page.find_element(By.ID, "banner")
    assert banner.get_attribute("data-priority") == api_result["triage"]["priority"]
    assert page.find_element(By.ID, "priority").text.lower() == api_result["triage"]["priority"]
    colour = page.find_element(By.CSS_SELECTOR, ".priority-block").value_of_css_property(
        "background-color"
    )
    expected = {"critical": "215, 38, 61", "urgent": "242, 158, 31", "routine": "46, 158, 91"}
    assert expected[api_result["triage"]["priority"]] in colour
    names = {f["code"]: f["name"] for f in api_result["findings"]}
    drivers = page.find_element(By.ID, "drivers").text
    for code in api_result["triage"]["findings"]:
        assert names[code] in drivers
    # A priority the study-level score set (no finding of its level positive) says so.
    assert ("study-level score" in drivers) == (api_result["triage"].get("basis") == "study_score")
    study_line = page.find_element(By.ID, "study-line").text
    model = api_result["model"]
    assert f"Model {model['name']} version {model['version']}" in study_line
    assert api_result["study_uid"] in study_line
    assert page.find_element(By.ID, "disclaimer").text == api_result["disclaimer"]
    assert "not for clinical use" in api_result["disclaimer"]

    rows = page.find_elements(By.CSS_SELECTOR, "#findings tr.finding")
    assert len(rows) == len(api_result["findings"]) == 75
    positives = [f for f in api_result["findings"] if f["positive"]]
    assert len(page.find_elements(By.CSS_SELECTOR, "#findings tr.finding.positive")) == len(
        positives
    )
    title = page.find_element(By.ID, "findings-title").text
    assert title == f"Findings: {len(positives)} positive of 75"
    # everything the page loaded came from the gateway
    loaded = page.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert loaded and all(url.startswith(gateway.url + "/") for url in loaded), loaded
    severe = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
    # the only failure is the model card refused before the key was entered
    assert all("/v1/model" in e["message"] and "401" in e["message"] for e in severe), severe


def test_findings_are_grouped_sorted_filtered_and_critical_first(
    result_page: Chrome, api_result: dict[str, Any]
) -> None:
    page = result_page
    by_code = {f["code"]: f for f in api_result["findings"]}
    groups = page.execute_script(FINDING_ROWS)
    assert sum(len(g["codes"]) for g in groups) == 75
    seen_ranks = []
    for group in groups:
        findings = [by_code[c] for c in group["codes"]]
        assert {f["category"] for f in findings} == {group["category"]}
        critical = [f for f in findings if f["critical"]]
        assert findings[: len(critical)] == critical, "critical findings lead their group"
        for part in (critical, findings[len(critical) :]):
            probabilities = [f["probability"] for f in part]
            assert probabilities == sorted(probabilities, reverse=True)
        has_critical = any(f["positive"] and f["critical"] for f in findings)
        seen_ranks.append(0 if has_critical else 1 if any(f["positive"] for f in findings) else 2)
    assert seen_ranks == sorted(seen_ranks), "groups with a positive critical finding come first"
    assert [g["positive"] for g in groups] == [
        [by_code[c]["positive"] for c in g["codes"]] for g in groups
    ]

    page.find_element(By.ID, "critical-first").click()
    for group in page.execute_script(FINDING_ROWS):
        probabilities = [by_code[c]["probability"] for c in group["codes"]]
        assert probabilities == sorted(probabilities, reverse=True)

    page.find_element(By.ID, "positives-only").click()
    shown = [c for g in page.execute_script(FINDING_ROWS) for c in g["codes"]]
    assert sorted(shown) == sorted(c for c, f in by_code.items() if f["positive"])
    for box in ("positives-only", "critical-first"):
        page.find_element(By.ID, box).click()
    assert len(page.find_elements(By.CSS_SELECTOR, "#findings tr.finding")) == 75


def test_slices_open_at_the_key_slice_and_scroll_by_keyboard_wheel_and_strip(
    result_page: Chrome, api_result: dict[str, Any], screenshots: Path
) -> None:
    page = result_page
    key, depth = api_result["slices"]["key_slice"], api_result["slices"]["count"]
    at_key = page.execute_script(CANVAS_SIGNATURE)
    assert at_key["slice"] == key and at_key["window"] == "brain" and at_key["red"] > 0
    shown = api_result["slices"]["key_finding"]
    assert f"key slice ({shown})" in page.find_element(By.ID, "slice-label").text

    stage = page.find_element(By.ID, "slice-stage")
    stage.click()
    stage.send_keys(Keys.HOME)
    assert page.execute_script(CANVAS_SIGNATURE)["slice"] == 0
    assert page.find_element(By.ID, "slice-label").text.startswith(f"Slice 1 of {depth}")
    stage.send_keys(Keys.END)
    assert page.execute_script(CANVAS_SIGNATURE)["slice"] == depth - 1
    stage.send_keys(Keys.PAGE_DOWN)
    assert page.execute_script(CANVAS_SIGNATURE)["slice"] == depth - 6
    stage.send_keys("k")
    assert page.execute_script(CANVAS_SIGNATURE) == at_key  # the same slice, drawn the same

    step = 1 if key < depth - 1 else -1
    stage.send_keys(Keys.ARROW_UP if step == 1 else Keys.ARROW_DOWN)
    moved = page.execute_script(CANVAS_SIGNATURE)
    assert moved["slice"] == key + step and moved["hash"] != at_key["hash"]
    page.save_screenshot(str(screenshots / "03-scrolled.png"))

    # a real wheel: down goes inferior
    ActionChains(page).scroll_from_origin(ScrollOrigin.from_element(stage), 0, 120).perform()
    _wait(page, lambda d: d.execute_script(CANVAS_SIGNATURE)["slice"] == key + step - 1, 5)

    # the range input moves by its own keys; the strip beside it is clickable per slice
    scroller = page.find_element(By.ID, "slice-range")
    scroller.send_keys(Keys.HOME)
    assert page.execute_script(CANVAS_SIGNATURE)["slice"] == 0
    strip = page.find_element(By.ID, "attention-strip")
    width = strip.size["width"]
    x = 8 + key * (width - 16) / (depth - 1) - width / 2  # offset from the strip's centre
    ActionChains(page).move_to_element_with_offset(strip, round(x), 0).click().perform()
    assert page.execute_script(CANVAS_SIGNATURE)["slice"] == key
    assert scroller.get_attribute("value") == str(key)


def test_the_overlay_and_the_windows(
    result_page: Chrome, api_result: dict[str, Any], screenshots: Path
) -> None:
    page = result_page
    page.find_element(By.ID, "key-slice").click()
    plain = page.execute_script(CANVAS_SIGNATURE)
    assert plain["slice"] == api_result["slices"]["key_slice"] and plain["tinted"] == 0
    page.find_element(By.ID, "overlay-toggle").click()
    tinted = page.execute_script(CANVAS_SIGNATURE)
    assert tinted["tinted"] > 1000, tinted
    assert _shown(page, "overlay-note")
    page.save_screenshot(str(screenshots / "04-overlay.png"))
    # the overlay follows the slice's attention: the least attended slice is tinted less
    attention = api_result["slices"]["attention"]
    least = attention.index(min(attention))
    if attention[least] < 0.5 * max(attention):
        stage = page.find_element(By.ID, "slice-stage")
        stage.send_keys(Keys.HOME, *[Keys.ARROW_UP] * least)
        faint = page.execute_script(CANVAS_SIGNATURE)
        assert faint["slice"] == least and faint["strength"] < tinted["strength"]
    page.find_element(By.ID, "slice-stage").send_keys("o", "k")
    assert page.execute_script(CANVAS_SIGNATURE) == plain

    windows = page.find_elements(By.CSS_SELECTOR, "#windows button")
    assert [w.text for w in windows] == ["brain", "subdural", "bone"]
    page.find_element(By.ID, "slice-stage").send_keys("3")
    bone = page.execute_script(CANVAS_SIGNATURE)
    assert bone["window"] == "bone" and bone["hash"] != plain["hash"]
    assert windows[2].get_attribute("aria-pressed") == "true"
    windows[0].click()
    assert page.execute_script(CANVAS_SIGNATURE) == plain


def test_the_router_chart(result_page: Chrome, api_result: dict[str, Any]) -> None:
    page = result_page
    router = api_result["router"]
    experts, depth = router["experts"], api_result["slices"]["count"]
    bars = page.find_elements(By.CSS_SELECTOR, "#router-chart rect.study-weight")
    assert len(bars) == experts
    widths = [float(b.get_attribute("width")) for b in bars]
    heaviest = max(range(experts), key=lambda i: router["study_weights"][i])
    assert max(range(experts), key=lambda i: widths[i]) == heaviest
    assert len(page.find_elements(By.CSS_SELECTOR, "#router-chart rect.slice-weight")) == (
        depth * experts
    )
    marker = page.find_element(By.ID, "router-current")
    page.find_element(By.ID, "slice-stage").send_keys(Keys.HOME)
    at_first = float(marker.get_attribute("x"))
    page.find_element(By.ID, "slice-stage").send_keys(Keys.END)
    assert float(marker.get_attribute("x")) > at_first
    page.find_element(By.ID, "slice-stage").send_keys("k")


def test_progress_shows_while_uploading_and_while_the_server_works(
    opened: Chrome, study_folder: Path, screenshots: Path
) -> None:
    """The upload throttled (DevTools) so that its progress can be watched."""
    page = opened
    size = sum(f.stat().st_size for f in study_folder.glob("*.dcm"))
    page.execute_cdp_cmd("Network.enable", {})
    page.execute_cdp_cmd(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": size / 2},
    )
    try:
        page.execute_script("performance.clearMarks()")
        page.find_element(By.ID, "pick-folder").send_keys(str(study_folder))
        seen: list[tuple[str, str | None]] = []

        def watch(d: Chrome) -> bool:
            # Text and value read in one script: two reads could straddle the page's switch from
            # uploading to working (the bar reset between them, as seen once in CI).
            text, value = d.execute_script(
                "const bar = document.getElementById('progress-bar');"
                "return [document.getElementById('progress-text').innerText,"
                " bar.getAttribute('value')];"
            )
            seen.append((text, value))
            if len(seen) == 5:
                d.save_screenshot(str(screenshots / "02-uploading.png"))
            return _mark_count(d, "headct:banner") == 1

        _wait(page, watch)
    finally:
        page.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )
    uploading = [float(v) for text, v in seen if text.startswith("Uploading:") and v]
    assert any(0 < v < 1 for v in uploading), seen
    assert uploading == sorted(uploading)
    assert any("The gateway is reading the study and running the model" in t for t, _ in seen)
    assert not _shown(page, "progress")


def test_a_dropped_file_that_is_not_dicom_is_refused_in_plain_words(
    opened: Chrome, screenshots: Path
) -> None:
    page = opened
    page.execute_script(DROP_NOTES)
    _wait(page, lambda d: _shown(d, "problem"))
    problem = page.find_element(By.ID, "problem")
    assert problem.get_attribute("data-code") == "not_dicom"
    text = problem.text
    assert "The study was not triaged: Not readable DICOM" in text
    assert "Drop the study's folder of DICOM images" in text
    assert "status 400 · code not_dicom" in text
    assert not _shown(page, "banner") and not _shown(page, "result")
    page.save_screenshot(str(screenshots / "05-not-dicom.png"))


def test_a_study_too_short_shows_the_reason_for_each_series(
    opened: Chrome, short_study_zip: Path, screenshots: Path
) -> None:
    page = opened
    page.find_element(By.ID, "pick-files").send_keys(str(short_study_zip))
    problem = page.find_element(By.ID, "problem")
    _wait(page, lambda d: problem.get_attribute("data-code") == "too_few_slices")
    assert "not a head CT the model can read" in problem.text
    rows = problem.find_elements(By.CSS_SELECTOR, "table.series tbody tr")
    assert len(rows) == 1
    assert "fewer than the 16 required" in rows[0].text
    page.save_screenshot(str(screenshots / "06-too-few-slices.png"))


def test_reopening_a_study_without_a_stored_result_says_so(
    opened: Chrome, screenshots: Path
) -> None:
    page = opened
    field = page.find_element(By.ID, "reopen-uid")
    field.clear()
    field.send_keys("1.2.826.0.1.3680043.8.498.999", Keys.ENTER)
    _wait(
        page,
        lambda d: (
            _shown(d, "problem") and "No stored result" in d.find_element(By.ID, "problem").text
        ),
    )
    assert (
        "no stored result for study 1.2.826.0.1.3680043.8.498.999"
        in page.find_element(By.ID, "problem").text
    )
    page.save_screenshot(str(screenshots / "07-no-stored-result.png"))
