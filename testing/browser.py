"""Debian's headless Chromium driven through its chromedriver (selenium), for the viewer's tests and
benchmark: a fresh profile in a temporary folder, no network beyond what the page asks for, and a
viewport of exactly ``width`` x ``height`` CSS pixels (so screenshots have that size)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# docs/ENVIRONMENT.md: what Chromium needs to run headless here, and no phoning home.
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--force-color-profile=srgb",
)


@contextmanager
def chromium(*, width: int = 1280, height: int = 800) -> Iterator[webdriver.Chrome]:
    """A headless Chromium, quit when the block ends."""
    with tempfile.TemporaryDirectory(prefix="headct-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (*_FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        try:
            driver.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            )
            yield driver
        finally:
            driver.quit()
