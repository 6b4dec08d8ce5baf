"""Headless Chromium from Debian's packages (chromium, chromium-driver), driven by selenium: the
browser the console's tests use. Missing, it skips locally and fails in CI (conftest.require)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..conftest import require

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as e:  # pragma: no cover - a machine without the test requirements
    webdriver = None
    IMPORT_ERROR = str(e)

WAIT_S = 30


def _binaries() -> tuple[str, str]:
    if webdriver is None:
        require("selenium", f"{IMPORT_ERROR} (pip install -r requirements.txt)")
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        require("Chromium and chromedriver", "not on PATH (run scripts/ensure-chromium.sh)")
    return str(chromium), str(driver)


@contextmanager
def chromium(width: int = 1280, height: int = 1000) -> Iterator[Any]:
    """A fresh headless Chromium (its own profile: empty storage), quit afterwards."""
    binary, driver_path = _binaries()
    profile = tempfile.mkdtemp(prefix="postgraas-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in (
        "--headless=new",
        # Root (CI, these machines) cannot use Chromium's sandbox.
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    # Every URL the page requests, to prove none carries the token.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    try:
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
    except WebDriverException as e:
        shutil.rmtree(profile, ignore_errors=True)
        require("headless Chromium", e.msg or str(e))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def until(driver: Any, condition: Callable[[Any], Any], what: str, timeout: float = WAIT_S) -> Any:
    """What condition(driver) gave once truthy; fails naming ``what`` (and the page's console log)."""
    try:
        # A row the page replaced while the condition read it: read again.
        wait = WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
        return wait.until(condition)
    except TimeoutException:
        logs = [entry["message"] for entry in driver.get_log("browser")]
        raise AssertionError(f"not within {timeout:g} s: {what}; browser log: {logs}") from None


def visible(driver: Any, css: str) -> Any:
    return until(
        driver, lambda d: next((e for e in d.find_elements(By.CSS_SELECTOR, css) if e.is_displayed()), None), css
    )


def requested_urls(driver: Any) -> list[str]:
    """The URLs of every request the page made since the last call (Chromium's performance log)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


__all__ = ["By", "chromium", "requested_urls", "until", "visible"]
