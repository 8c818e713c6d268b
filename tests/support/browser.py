"""Headless Debian chromium driven by selenium through Debian's chromedriver, and where screenshots go.

Both paths are given to selenium explicitly (and SE_OFFLINE is set), so selenium-manager never tries
to download a browser or a driver: nothing but Debian's packages is used. scripts/setup installs them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# Git-ignored; CI keeps whatever a run leaves here.
ARTIFACTS = Path(os.environ.get("HXP_TEST_ARTIFACTS") or REPO / "test-artifacts")
# Screenshots taken in this pytest session, listed at the end of the run (tests/conftest.py).
SAVED: list[Path] = []


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver); skips outside CI and fails in CI when they are missing."""
    chromium = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        reason = ("Debian's chromium and chromium-driver are not installed "
                  "(scripts/setup installs them: apt-get install chromium chromium-driver)")
        if _in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    return chromium, driver


@contextmanager
def chromium_driver(width: int = 1400, height: int = 1000) -> Iterator[Any]:
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must not reach the network, ever
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--no-first-run", "--disable-extensions",
                     "--disable-background-networking", "--disable-component-update"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver: Any, folder: str, name: str) -> Path:
    """Save a PNG under test-artifacts/<folder>/ and return its path."""
    path = ARTIFACTS / folder / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    SAVED.append(path)
    return path


def wait_for(condition: Callable[[], Any], what: str, timeout: float) -> Any:
    """Poll the page until `condition()` is truthy and return it; fail naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout} s waiting for: {what}")
