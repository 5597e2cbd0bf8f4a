"""Helpers for browser tests: the API served by uvicorn on loopback, headless Debian Chromium via Selenium."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"


def require_chromium() -> None:
    """Skip the calling test, saying why, where Debian's chromium or chromedriver is not installed."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.skip(f"headless browser tests need {' and '.join(missing)} (apt-get install chromium chromium-driver)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise AssertionError(f"uvicorn did not start on {base}")
        time.sleep(0.05)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextmanager
def chromium(user_data_dir: Path, *, width: int = 1400, height: int = 2200) -> Iterator[Any]:
    """A headless Chromium driven by Selenium, its console log readable with ``console_errors``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver: Any) -> list[str]:
    """Messages at SEVERE level in the browser console since the last call (JS errors, failed requests)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def wait_until(driver: Any, script: str, *, timeout_s: float, what: str, every_s: float = 0.25) -> Any:
    """Run ``script`` (a JS function body that returns a value) until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    value = None
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last value {value!r})")


def screenshot(driver: Any, name: str) -> Path:
    """Save a full-page PNG under test-artifacts/ and return its path."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    for _ in range(2):  # resizing can reflow the page, so measure again
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1400, max(900, min(int(height) + 120, 8000)))
    driver.save_screenshot(str(path))
    return path


def get_json(base: str, path: str, token: str | None = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(base + path, headers=headers, timeout=30)
    response.raise_for_status()
    return response.json()


def requested(driver: Any, prefix: str = "/api/") -> list[str]:
    """Paths (with their query) the page has fetched under ``prefix``, EventSource streams included, in order."""
    return driver.execute_script("""
        return performance.getEntriesByType('resource').map(e => new URL(e.name))
          .filter(u => u.pathname.startsWith(arguments[0])).map(u => u.pathname + u.search);
    """, prefix)
