"""A real browser for tests: Debian's headless Chromium driven by selenium through Debian's
chromedriver (``make browser`` installs both where it can), and where its screenshots go.

No browser is downloaded at test time (selenium's own manager is never asked: the driver's path is
given); where Chromium or its driver is missing the tests that need them skip, saying so.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.support.paths import REPO

# Test artifacts (gitignored): one PNG per screenshot a test takes.
SCREENSHOTS = Path(os.environ.get("RAG_SCREENSHOTS", REPO / "reports" / "browser"))
T = TypeVar("T")


def _binaries() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed here (`make browser` installs them "
            "as root with apt-get; elsewhere: sudo apt-get install chromium chromium-driver)"
        )
    return chromium, driver


@contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Chromium window of ``width`` x ``height`` CSS pixels, closed afterwards."""
    chromium_path, driver_path = _binaries()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (extra: dev)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium_path
    for arg in (
        "--headless=new",
        "--no-sandbox",  # the suite runs as root in CI, where Chromium's sandbox cannot start
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    # Exactly this viewport (a headless window is never narrower than 500 px), phone-like when narrow.
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 760},
    )
    try:
        yield driver
    finally:
        driver.quit()


def version(driver: Any) -> str:
    return f"{driver.capabilities['browserName']} {driver.capabilities['browserVersion']}"


def screenshot(driver: Any, name: str) -> Path:
    """A PNG of the window under ``SCREENSHOTS``; its path is printed (``pytest -s`` shows it)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot ({version(driver)}): {path}")
    return path


def wait_for(check: Callable[[], T | None], what: str, timeout_s: float = 120, driver: Any = None) -> T:
    """``check()``'s first truthy value, polled; a failure names ``what`` (and the browser's console)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            console = console_messages(driver) if driver is not None else []
            pytest.fail(f"timed out after {timeout_s} s waiting for {what}; browser console: {console}")
        time.sleep(0.1)


def console_messages(driver: Any) -> list[str]:
    """What the page wrote to the console (errors included) since the last call."""
    return [entry["message"] for entry in driver.get_log("browser")]


def set_request_headers(driver: Any, headers: dict[str, str]) -> None:
    """Every request the page makes from now on carries ``headers`` (``{}``: none), set through the
    DevTools protocol; the page itself knows nothing of them."""
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})
