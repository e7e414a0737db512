"""The event viewer with 10,000 stored events: how long its first page takes.

Run on demand (the store is filled once per run, which takes a while: every
image is fsynced)::

    pytest benchmarks/test_bench_viewer.py --benchmark-only --benchmark-columns=median,min,max,rounds

Measured over HTTP on loopback against the reference service, the way the page
asks: the first page of event summaries (50), the same with each filter, a
deep page, the "newest" poll, the events-over-time chart's counts (all
events, and schema + text filtered), the page's 50 thumbnails (made cold, then served
from the disk cache), and, when Chromium is installed, the whole page in a
headless browser from navigation until the 50 cards show their thumbnails.
The newest 50 events carry 1920x1080 JPEGs (the first page's thumbnails are
made from full frames); the rest carry 320x180 JPEGs, to keep the store small.
``--benchmark-disable`` smoke-runs everything over 200 events.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pybase64
import pytest
import requests

from benchmarks.frames import SIZES
from fastsend.imaging.jpeg import encode_jpeg
from fastsend.server import ReferenceService, validate_body
from fastsend.server.store import EventStore

EVENTS = 10_000
SMOKE_EVENTS = 200
PAGE = 50
BATCH = 500
SCHEMAS = ("quality_check", "inventory_count", "safety_alert", "custom")


def _jpeg_base64(width: int, height: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    frame = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    return pybase64.b64encode(encode_jpeg(np.ascontiguousarray(frame), quality=90)).decode()


def _body(index: int, image: str) -> dict[str, Any]:
    schema = SCHEMAS[index % len(SCHEMAS)]
    data: dict[str, Any] = {
        "quality_check": {"result": "pass" if index % 5 else "fail", "externalId": f"part-{index:05d}"},
        "inventory_count": {"location": f"aisle-{index % 12}", "itemCount": index % 40, "externalId": f"bin-{index}"},
        "safety_alert": {"alertType": "zone_intrusion", "severity": "medium", "description": "person in zone"},
        "custom": {"value": f"{index % 7} shapes tracked", "externalId": f"track-{index}"},
    }[schema]
    boxes = [
        {"class": "box", "x": 100.0 + 40 * k, "y": 90.0, "width": 30.0, "height": 40.0, "confidence": 0.9}
        for k in range(5)
    ]
    return {
        "inference_timestamp": f"2026-03-{1 + index // 86400:02d}T{index // 3600 % 24:02d}:{index // 60 % 60:02d}:"
        f"{index % 60:02d}+00:00",
        "event_schema": schema,
        "event_data": data,
        "custom_metadata": {"camera": f"cam-{index % 8}", "line": f"L{index % 3}", "frame": index},
        "images": [{"base64Image": image, "label": "bench", "objectDetections": boxes}],
        "displayImagePosition": 0,
    }


@pytest.fixture(scope="module")
def events(request: pytest.FixtureRequest) -> int:
    return SMOKE_EVENTS if request.config.getoption("benchmark_disable") else EVENTS


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory, events: int) -> Iterator[ReferenceService]:
    """The reference service over ``events`` stored events; the last PAGE carry 1080p images."""
    data_dir = tmp_path_factory.mktemp("viewer-bench")
    small = _jpeg_base64(320, 180, seed=1)
    large = _jpeg_base64(*SIZES["1080p"], seed=2)
    store = EventStore(data_dir)
    try:
        for start in range(0, events, BATCH):
            batch = range(start, min(start + BATCH, events))
            bodies = [validate_body(_body(i, large if i >= events - PAGE else small)) for i in batch]
            store.add([(body, None) for body in bodies])
    finally:
        store.close()
    with ReferenceService(data_dir) as service:
        yield service


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        yield http


def _get(http: requests.Session, url: str, **params: Any) -> Any:
    response = http.get(url, params=params, timeout=30)
    response.raise_for_status()
    return response


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"schema": "safety_alert"},
        {"q": "part-0001"},
        {"q": "cam-3"},
        {"since": "2026-03-01T00:01:00Z", "until": "2026-03-01T00:02:00Z"},
        {"schema": "quality_check", "q": "L1", "since": "2026-03-01T00:00:30Z"},
        {"offset": "9950"},
    ],
    ids=["first-page", "schema", "text-external-id", "text-metadata", "time-range", "combined", "deep-page"],
)
def test_event_page(
    benchmark: Any, viewer: ReferenceService, session: requests.Session, filters: dict[str, str]
) -> None:
    url = f"{viewer.url}/viewer/api/events"
    page = benchmark(lambda: _get(session, url, limit=PAGE, **filters).json())
    benchmark.extra_info.update(filters=filters, total=page["total"], shown=len(page["events"]))
    assert page["total"] > 0


def test_newest_poll(benchmark: Any, viewer: ReferenceService, session: requests.Session, events: int) -> None:
    assert benchmark(lambda: _get(session, f"{viewer.url}/viewer/api/newest").json()["newest"]) == events


@pytest.mark.parametrize("filters", [{}, {"schema": "quality_check", "q": "L1"}], ids=["all-events", "schema-and-text"])
def test_timeline(benchmark: Any, viewer: ReferenceService, session: requests.Session, filters: dict[str, str]) -> None:
    """The chart's buckets: every matching event counted per bucket and schema."""
    url = f"{viewer.url}/viewer/api/timeline"
    chart = benchmark(lambda: _get(session, url, **filters).json())
    benchmark.extra_info.update(
        filters=filters, total=chart["total"], buckets=len(chart["buckets"]), bucket_seconds=chart["bucket_seconds"]
    )
    listed = _get(session, f"{viewer.url}/viewer/api/events", limit=1, **filters).json()["total"]
    assert chart["total"] == listed > 0


def _first_page_ids(viewer: ReferenceService, http: requests.Session) -> list[str]:
    return [event["id"] for event in _get(http, f"{viewer.url}/viewer/api/events", limit=PAGE).json()["events"]]


def test_thumbnails_cold(benchmark: Any, viewer: ReferenceService, session: requests.Session) -> None:
    """The first page's 50 thumbnails made from 1080p JPEGs, one after another (the cache emptied each round)."""
    ids = _first_page_ids(viewer, session)

    def fetch_all() -> int:
        return sum(len(_get(session, f"{viewer.url}/viewer/api/events/{i}/thumbnail").content) for i in ids)

    def empty_cache() -> None:
        shutil.rmtree(Path(viewer.data_dir) / "thumbnails", ignore_errors=True)

    total = benchmark.pedantic(fetch_all, setup=empty_cache, rounds=5, iterations=1)
    benchmark.extra_info.update(thumbnails=len(ids), mean_bytes=total // len(ids))


def test_thumbnails_cached(benchmark: Any, viewer: ReferenceService, session: requests.Session) -> None:
    """The same 50 thumbnails served from the disk cache."""
    ids = _first_page_ids(viewer, session)
    urls = [f"{viewer.url}/viewer/api/events/{i}/thumbnail" for i in ids]
    for url in urls:
        _get(session, url)
    benchmark(lambda: [_get(session, url) for url in urls])


def test_page_in_chromium(benchmark: Any, viewer: ReferenceService) -> None:
    """Navigation to 50 cards with their thumbnails shown (thumbnails cached, browser cache disabled)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support.browser import browser_missing, start_chromium

    missing = browser_missing()
    if missing is not None:
        pytest.skip(missing)
    from selenium.webdriver.support.ui import WebDriverWait

    driver = start_chromium()
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    shown = "return [...document.querySelectorAll('#events img.thumb')].filter(img => img.naturalWidth > 0).length"

    def load() -> None:
        driver.get(f"{viewer.url}/")
        WebDriverWait(driver, 30, poll_frequency=0.005).until(lambda d: d.execute_script(shown) == PAGE)

    try:
        load()  # warm the thumbnail cache and the service
        benchmark.pedantic(load, rounds=10, iterations=1)
    finally:
        driver.quit()
