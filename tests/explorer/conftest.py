"""The headless browser of the page tests: Debian's chromium driven by selenium.

It comes from scripts/install-test-browser.sh (run by `make test`). Without it the browser tests
skip locally and fail under CI=true. Every page the browser opens gets :data:`DIALOG_TRAP` first:
``alert``, ``confirm`` and ``prompt`` only record their message in ``window.__dialogs``, so a
test can tell that no injected script ran (and no dialog blocks the driver).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

BROWSER_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--window-size=1200,900"]
DIALOG_TRAP = ("window.__dialogs = [];"
               "for (const name of ['alert', 'confirm', 'prompt']) {"
               "  window[name] = (message) => { window.__dialogs.push(String(message)); };"
               "}")


def _find(env: str, default: str, name: str) -> str | None:
    """A browser binary: $env (None if that file is missing), else Debian's, else on PATH."""
    if os.environ.get(env):
        return os.environ[env] if Path(os.environ[env]).is_file() else None
    return default if Path(default).is_file() else shutil.which(name)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium; skips locally, fails in CI, when it cannot be found."""
    chromium = _find("ATTNCONV_CHROMIUM", "/usr/bin/chromium", "chromium")
    driver_path = _find("ATTNCONV_CHROMEDRIVER", "/usr/bin/chromedriver", "chromedriver")
    problem = None
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        problem = "the selenium package is not installed (pip install -r requirements.txt)"
    if problem is None and (chromium is None or driver_path is None):
        problem = (f"no headless browser: chromium={chromium}, chromedriver={driver_path}; run "
                   f"scripts/install-test-browser.sh (make test does) or set "
                   f"ATTNCONV_CHROMIUM / ATTNCONV_CHROMEDRIVER")
    if problem is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI needs the browser test: {problem}")
        pytest.skip(problem)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in BROWSER_ARGS:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_script_timeout(20)
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": DIALOG_TRAP})
        yield driver
    finally:
        driver.quit()
