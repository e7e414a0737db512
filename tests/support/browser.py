"""Helpers for the viewer tests: a headless Chromium driven by Selenium, and v2 bodies posted as is.

The browser and driver are Debian's ``chromium`` and ``chromium-driver`` at
fixed paths, so Selenium Manager never looks for (or downloads) anything.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from typing import Any

import numpy as np
import pybase64
import requests

from fastsend.imaging.jpeg import encode_jpeg

__all__ = [
    "CHROMEDRIVER",
    "CHROMIUM",
    "WAIT_SECONDS",
    "browser_missing",
    "grey_jpeg",
    "post_event",
    "start_chromium",
    "wait_until",
]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
GREY = 128
WAIT_SECONDS = 15.0  # the longest a test waits for the page to show something


# CI drives the browser on one Python only: the page does not change with the interpreter.
BROWSER_TESTS_ENV = "BROWSER_TESTS"


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or ``None`` when they can."""
    if os.environ.get(BROWSER_TESTS_ENV) == "off":
        return f"{BROWSER_TESTS_ENV}=off (CI runs the browser tests on one Python only)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if shutil.which(path) is None:
            return f"{path} not found (apt install {package})"
    return None


def start_chromium() -> Any:
    """A headless Chromium session through the system chromedriver (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: never download a browser or a driver
    options = Options()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(20)
    return driver


def wait_until(driver: Any, condition: Callable[[Any], object], message: str) -> None:
    """Poll ``condition(driver)`` every 0.1 s until it is truthy; fail with ``message`` after WAIT_SECONDS."""
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_SECONDS, poll_frequency=0.1).until(condition, message)


def grey_jpeg(width: int = 640, height: int = 360) -> bytes:
    """A uniform mid-grey JPEG, so any coloured pixel over it was drawn by the page."""
    jpeg: bytes = encode_jpeg(np.full((height, width, 3), GREY, np.uint8), quality=95)
    return jpeg


def post_event(
    url: str,
    *,
    schema: str = "quality_check",
    event_data: dict[str, Any] | None = None,
    timestamp: str = "2026-01-01T00:00:00+00:00",
    image: bytes | None = None,
    input_image: bytes | None = None,
    metadata: dict[str, Any] | None = None,
    api_key: str | None = None,
    **image_entry: Any,
) -> str:
    """POST one v2 body built from these parts; ``image_entry`` adds ``label`` and annotation lists. Returns the id."""
    entry: dict[str, Any] = {"base64Image": pybase64.b64encode(image or grey_jpeg()).decode(), **image_entry}
    if input_image is not None:
        entry["inputBase64Image"] = pybase64.b64encode(input_image).decode()
    body: dict[str, Any] = {
        "inference_timestamp": timestamp,
        "event_schema": schema,
        "event_data": event_data if event_data is not None else {"result": "pass"},
        "images": [entry],
        "displayImagePosition": 0,
    }
    if metadata is not None:
        body["custom_metadata"] = metadata
    headers = {"X-API-Key": api_key} if api_key else {}
    response = requests.post(f"{url}/v2/events", json=body, headers=headers, timeout=10)
    assert response.status_code == 201, response.text
    event_id: str = response.json()["id"]
    return event_id
