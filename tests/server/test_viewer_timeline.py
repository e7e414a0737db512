"""The viewer's events-over-time chart: the timeline route's buckets and counts, then the chart in Chromium.

The browser test skips (with the reason) when selenium, /usr/bin/chromium or
/usr/bin/chromedriver is missing. Each test starts its own service on loopback.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pybase64
import pytest
import requests
from support.browser import browser_missing, grey_jpeg, post_event, wait_until

from fastsend.server import ReferenceService, validate_body
from fastsend.server.store import EventStore
from fastsend.server.timeline import BUCKET_WIDTHS, MAX_BUCKETS, bucket_width

ALERT = {"alertType": "zone", "severity": "low"}
EVENT_DATA = {"quality_check": {"result": "pass"}, "safety_alert": ALERT, "custom": {"value": "seen"}}


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ReferenceService]:
    with ReferenceService(tmp_path / "data") as running:
        yield running


def _timeline(url: str, **params: Any) -> dict[str, Any]:
    response = requests.get(f"{url}/viewer/api/timeline", params=params, timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _total_listed(url: str, **params: Any) -> int:
    response = requests.get(f"{url}/viewer/api/events", params={"limit": 1, **params}, timeout=10)
    assert response.status_code == 200, response.text
    total: int = response.json()["total"]
    return total


def _minute(minute: int) -> str:
    return f"2026-03-01T{minute // 60:02d}:{minute % 60:02d}:00+00:00"


def _nonempty(chart: dict[str, Any]) -> dict[int, dict[str, int]]:
    return {index: bucket["counts"] for index, bucket in enumerate(chart["buckets"]) if bucket["counts"]}


def _post_day(url: str) -> None:
    """Seven events between 00:00 and 05:59 UTC on 2026-03-01; one sent with a +02:00 offset."""
    for minute in (0, 10, 10, 90, 359):
        post_event(url, timestamp=_minute(minute), metadata={"line": "L1" if minute == 10 else "L2"})
    post_event(url, schema="safety_alert", event_data=ALERT, timestamp=_minute(91))
    post_event(url, timestamp="2026-03-01T02:40:00+02:00")  # 00:40 UTC


# ---------------------------------------------------------------- the route


def test_counts_per_bucket_and_schema(service: ReferenceService) -> None:
    _post_day(service.url)
    chart = _timeline(service.url)
    assert chart["bucket_seconds"] == 600  # 5-minute buckets would take 72 for these 6 hours
    assert chart["start"] == _minute(0)
    assert [bucket["start"] for bucket in chart["buckets"]] == [_minute(10 * i) for i in range(36)]
    assert _nonempty(chart) == {
        0: {"quality_check": 1},
        1: {"quality_check": 2},
        4: {"quality_check": 1},
        9: {"quality_check": 1, "safety_alert": 1},
        35: {"quality_check": 1},
    }
    assert chart["totals"] == {"quality_check": 6, "safety_alert": 1} and chart["total"] == 7
    newest = requests.get(f"{service.url}/viewer/api/newest", timeout=10).json()["newest"]
    assert chart["newest"] == newest


def test_counts_follow_the_lists_filters(service: ReferenceService) -> None:
    _post_day(service.url)

    window = {"since": "2026-03-01T00:05:00Z", "until": "2026-03-01T03:35:00+02:00"}  # 00:05 to 01:35 UTC
    chart = _timeline(service.url, **window)
    assert chart["bucket_seconds"] == 120 and chart["start"] == _minute(4) and len(chart["buckets"]) == 46
    assert _nonempty(chart) == {
        3: {"quality_check": 2},
        18: {"quality_check": 1},
        43: {"quality_check": 1, "safety_alert": 1},
    }

    alerts = _timeline(service.url, schema="safety_alert")
    assert alerts["bucket_ms"] == 1 and _nonempty(alerts) == {0: {"safety_alert": 1}}  # one event: one millisecond
    assert alerts["start"] == _minute(91)

    lines = _timeline(service.url, q="l1")
    assert lines["totals"] == {"quality_check": 2}

    for filters in ({}, window, {"schema": "safety_alert"}, {"q": "L2", "since": _minute(60)}, {"q": "nothing"}):
        assert _timeline(service.url, **filters)["total"] == _total_listed(service.url, **filters), filters


def _fill(data_dir: Path, timestamps: list[datetime], schemas: list[str]) -> None:
    image = pybase64.b64encode(grey_jpeg(16, 16)).decode()
    store = EventStore(data_dir)
    try:
        bodies = [
            validate_body(
                {
                    "inference_timestamp": moment.isoformat(),
                    "event_schema": schema,
                    "event_data": EVENT_DATA[schema],
                    "images": [{"base64Image": image}],
                    "displayImagePosition": 0,
                }
            )
            for moment, schema in zip(timestamps, schemas, strict=True)
        ]
        store.add([(body, None) for body in bodies])
    finally:
        store.close()


def _ms(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // timedelta(milliseconds=1)


def test_counts_match_the_events_one_by_one(tmp_path: Path) -> None:
    """400 events at random milliseconds over three days, in random offsets: every bucket counted exactly."""
    rng = random.Random(21)
    base = datetime(2026, 3, 1, 7, 13, tzinfo=timezone.utc)
    moments = [base + timedelta(milliseconds=rng.randrange(3 * 86_400_000)) for _ in range(400)]
    zones = [timezone(timedelta(minutes=rng.choice((-480, 0, 60, 330)))) for _ in moments]
    schemas = [rng.choice(("quality_check", "safety_alert", "custom")) for _ in moments]
    _fill(tmp_path, [moment.astimezone(zone) for moment, zone in zip(moments, zones, strict=True)], schemas)
    since = base + timedelta(hours=5, minutes=7, seconds=3)
    until = since + timedelta(hours=31)

    with ReferenceService(tmp_path) as service:
        for params, low, high in (
            ({}, min(moments), max(moments) + timedelta(milliseconds=1)),
            ({"since": since.isoformat(), "until": until.isoformat()}, since, until),
        ):
            chart = _timeline(service.url, **params)
            width = chart["bucket_ms"]
            assert chart["bucket_seconds"] * 1000 == width
            assert width == bucket_width(_ms(low), _ms(high))
            origin = _ms(low) // width * width
            assert chart["start"] == datetime.fromtimestamp(origin / 1000, timezone.utc).isoformat()
            expected = Counter(
                ((_ms(moment) - origin) // width, schema)
                for moment, schema in zip(moments, schemas, strict=True)
                if low <= moment < high
            )
            counted = Counter(
                {
                    (index, schema): n
                    for index, bucket in enumerate(chart["buckets"])
                    for schema, n in bucket["counts"].items()
                }
            )
            assert counted == expected
            assert chart["total"] == sum(expected.values()) > 0


@pytest.mark.parametrize(
    "span_ms",
    [1, 999, 1_000, 59_000, 60_001, 3_600_000, 6 * 3_600_000, 86_400_000, 45 * 86_400_000, 9_998 * 365 * 86_400_000],
)
@pytest.mark.parametrize("start_ms", [0, 1_772_366_400_123, -62_135_596_800_000])
def test_bucket_width_is_the_narrowest_round_one_within_the_limit(start_ms: int, span_ms: int) -> None:
    end_ms = start_ms + span_ms

    def buckets(width: int) -> int:
        origin = max(start_ms // width * width, -62_135_596_800_000)  # never before year 1
        return -(-(end_ms - origin) // width)

    width = bucket_width(start_ms, end_ms)
    assert width in BUCKET_WIDTHS and buckets(width) <= MAX_BUCKETS
    assert all(buckets(narrower) > MAX_BUCKETS for narrower in BUCKET_WIDTHS if narrower < width)


def test_an_hour_is_sixty_one_minute_buckets_and_a_millisecond_more_is_two_minute_ones() -> None:
    assert bucket_width(0, 3_600_000) == 60_000
    assert bucket_width(0, 3_600_001) == 120_000


BURST_MS = (100, 150, 400, 401, 900)


def _burst(url: str) -> None:
    """Five events within one second: 00:00:00.100 to 00:00:00.900 UTC on 2026-03-01."""
    for ms in BURST_MS:
        post_event(url, timestamp=f"2026-03-01T00:00:00.{ms:03d}+00:00")


def test_a_burst_within_a_second_is_spread_over_millisecond_buckets(service: ReferenceService) -> None:
    _burst(service.url)
    chart = _timeline(service.url)
    # 801 ms: 10 ms buckets would take 81, 20 ms ones take 41.
    assert chart["bucket_ms"] == 20 and chart["bucket_seconds"] == 0.02
    assert chart["start"] == "2026-03-01T00:00:00.100000+00:00" and len(chart["buckets"]) == 41
    assert _nonempty(chart) == {
        0: {"quality_check": 1},
        2: {"quality_check": 1},
        15: {"quality_check": 2},
        40: {"quality_check": 1},
    }
    assert bucket_width(0, 1000) == 20 and bucket_width(0, 60) == 1 and bucket_width(0, 30_000) == 500


def test_nothing_to_chart(service: ReferenceService) -> None:
    empty = _timeline(service.url)
    assert empty["buckets"] == [] and empty["total"] == 0 and empty["bucket_seconds"] is None
    assert empty["bucket_ms"] is None
    post_event(service.url, timestamp=_minute(30))
    assert _timeline(service.url, since="2026-03-02T00:00:00Z")["buckets"] == []
    backwards = _timeline(service.url, since="2026-03-02T00:00:00Z", until="2026-03-01T00:00:00Z")
    assert backwards["buckets"] == [] and backwards["total"] == 0
    # A closed range with no events still has its (empty) buckets.
    quiet = _timeline(service.url, since="2026-03-02T00:00:00Z", until="2026-03-02T01:00:00Z")
    assert len(quiet["buckets"]) == 60 and quiet["total"] == 0 and _nonempty(quiet) == {}


@pytest.mark.parametrize(
    ("query", "name", "rule"),
    [
        ("limit=5", "limit", "schema, solution, since, until, q"),  # the list's paging is not the chart's
        ("from=2026-03-01", "from", "schema, solution, since, until, q"),
        ("schema=custom&schema=custom", "schema", "once"),
        ("schema=nope", "schema", "must be one of"),
        ("since=yesterday", "since", "must be an ISO-8601 timestamp"),
        ("until=2026-03-01T00:00:00", "until", "must carry a UTC offset"),
        ("q=" + "x" * 201, "q", "must be at most 200 characters"),
    ],
)
def test_bad_query_names_the_parameter_and_the_rule(
    service: ReferenceService, query: str, name: str, rule: str
) -> None:
    response = requests.get(f"{service.url}/viewer/api/timeline?{query}", timeout=10)
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert re.search(rf"\b{name}\b", detail) and rule in detail, detail


# ---------------------------------------------------------------- the chart in the page

_NO_BROWSER = browser_missing()


def _bars(driver: Any) -> list[dict[str, Any]]:
    bars: list[dict[str, Any]] = driver.execute_script(
        """return [...document.querySelectorAll('#timeline-chart .bucket')].flatMap((group, index) =>
            [...group.querySelectorAll('.bar')].map(bar => {
                const box = bar.getBoundingClientRect();
                return {bucket: index, schema: bar.dataset.schema, count: Number(bar.dataset.count),
                        top: box.top, bottom: box.bottom, fill: getComputedStyle(bar).fill};
            }))"""
    )
    return bars


def _wait_for_bars(driver: Any, expected: dict[tuple[int, str], int], message: str) -> list[dict[str, Any]]:
    shown: list[dict[str, Any]] = []

    def drawn(driver: Any) -> bool:
        shown[:] = _bars(driver)
        return {(bar["bucket"], bar["schema"]): bar["count"] for bar in shown} == expected

    wait_until(driver, drawn, message)
    return shown


def _cards(driver: Any) -> int:
    count: int = driver.execute_script("return document.querySelectorAll('#events .card').length")
    return count


def _text(driver: Any, element_id: str) -> str:
    text: str = driver.find_element("id", element_id).text
    return text


def _attribute(driver: Any, element_id: str, name: str) -> str:
    value: str = driver.find_element("id", element_id).get_attribute(name)
    return value


def test_chart_draws_the_filtered_counts_and_a_bar_narrows_the_range(browser: Any, service: ReferenceService) -> None:
    from selenium.webdriver.support.ui import Select

    for minute in (0, 0, 0, 20):
        post_event(service.url, timestamp=_minute(minute), image=grey_jpeg(32, 24))
    for minute in (20, 20, 50):
        post_event(service.url, schema="safety_alert", event_data=ALERT, timestamp=_minute(minute))

    browser.get(service.url + "/")
    expected = {(0, "quality_check"): 3, (20, "quality_check"): 1, (20, "safety_alert"): 2, (50, "safety_alert"): 1}
    bars = _wait_for_bars(browser, expected, "the chart of all events")
    assert browser.execute_script("return document.querySelectorAll('#timeline-chart .bucket').length") == 51
    assert _text(browser, "timeline-caption") == "7 events · 1-minute buckets"
    assert _attribute(browser, "timeline-from", "datetime") == "2026-03-01T00:00:00.000Z"
    assert _attribute(browser, "timeline-to", "datetime") == "2026-03-01T00:51:00.000Z"

    # Heights in proportion to the counts; a bucket's schemas stacked; one colour per schema.
    per_event = {bar["count"]: (bar["bottom"] - bar["top"]) / bar["count"] for bar in bars}
    assert per_event[3] > 10 and all(abs(height - per_event[3]) < 0.5 for height in per_event.values())
    by_key = {(bar["bucket"], bar["schema"]): bar for bar in bars}
    stacked = by_key[(20, "quality_check")], by_key[(20, "safety_alert")]
    assert abs(stacked[0]["top"] - stacked[1]["bottom"]) < 0.5 or abs(stacked[1]["top"] - stacked[0]["bottom"]) < 0.5
    fills = {bar["schema"]: bar["fill"] for bar in bars}
    assert fills["quality_check"] != fills["safety_alert"] and "0, 0, 0, 0" not in str(fills)

    Select(browser.find_element("name", "schema")).select_by_value("safety_alert")
    browser.find_element("css selector", "#filters button[type=submit]").click()
    _wait_for_bars(browser, {(0, "safety_alert"): 2, (30, "safety_alert"): 1}, "the chart of the alerts")
    assert _text(browser, "timeline-caption") == "3 events · 1-minute buckets"

    browser.find_elements("css selector", "#timeline-chart .bucket")[0].click()
    _wait_for_bars(browser, {(0, "safety_alert"): 2}, "the chart of the clicked minute")
    wait_until(browser, lambda d: _cards(d) == 2, "the list of the clicked minute")
    assert _text(browser, "timeline-caption") == "2 events · 1-second buckets"
    assert "since=2026-03-01T00%3A20%3A00.000Z" in browser.current_url
    assert "until=2026-03-01T00%3A21%3A00.000Z" in browser.current_url

    browser.find_element("css selector", "#filters button[type=reset]").click()
    _wait_for_bars(browser, expected, "the chart of all events again")


def test_chart_says_when_nothing_matches(browser: Any, service: ReferenceService) -> None:
    post_event(service.url, timestamp=_minute(5))
    browser.get(service.url + "/")
    _wait_for_bars(browser, {(0, "quality_check"): 1}, "one bar")
    assert not browser.find_element("id", "timeline-empty").is_displayed()
    browser.find_element("name", "q").send_keys("no such text\n")
    wait_until(browser, lambda d: d.find_element("id", "timeline-empty").is_displayed(), "the empty chart")
    assert _bars(browser) == [] and _text(browser, "timeline-caption") == ""


def test_a_burst_is_drawn_as_bars_across_the_chart(browser: Any, service: ReferenceService) -> None:
    _burst(service.url)
    browser.get(service.url + "/")
    expected = {(0, "quality_check"): 1, (2, "quality_check"): 1, (15, "quality_check"): 2, (40, "quality_check"): 1}
    bars = _wait_for_bars(browser, expected, "the burst's bars")
    assert _text(browser, "timeline-caption") == "5 events · 20-millisecond buckets"
    lefts = sorted(
        browser.execute_script(
            "return [...document.querySelectorAll('#timeline-chart .bar')].map(b => b.getBoundingClientRect().left)"
        )
    )
    plot = browser.execute_script("return document.getElementById('timeline-chart').getBoundingClientRect().width")
    # Four bars, each a 41st of the plot wide, from its left edge to its right: not one bar across it all.
    assert len(lefts) == 4 and lefts[-1] - lefts[0] > 0.9 * plot
    widths = browser.execute_script(
        "return [...document.querySelectorAll('#timeline-chart .bar')].map(b => b.getBoundingClientRect().width)"
    )
    assert all(width < plot / 30 for width in widths)
    assert len(bars) == 4
    # The axis and a bar's title tell the milliseconds apart (the browser here runs in UTC or not: its zone).
    first_title = browser.execute_script(
        "return document.querySelector('#timeline-chart .bucket title').textContent.split('\\n')[0]"
    )
    assert re.fullmatch(r"\S+ \d\d:\d\d:00\.100 UTC\S* – \S+ \d\d:\d\d:00\.120 UTC\S*", first_title), first_title


def test_times_show_their_zone(browser: Any, service: ReferenceService) -> None:
    post_event(service.url, timestamp="2026-03-01T00:20:00+00:00")
    browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "Asia/Kolkata"})
    try:
        browser.get(service.url + "/")
        _wait_for_bars(browser, {(0, "quality_check"): 1}, "one bar")
        wait_until(browser, lambda d: _cards(d) == 1, "the card")
        card_time = browser.find_element("css selector", "#events .card time").text
        assert card_time == "2026-03-01 05:50:00 UTC+05:30"
        assert _text(browser, "timeline-from") == "2026-03-01 05:50:00.000 UTC+05:30"  # a one-millisecond bucket
        browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "America/Los_Angeles"})
        browser.get(service.url + "/")
        wait_until(browser, lambda d: _cards(d) == 1, "the card again")
        assert browser.find_element("css selector", "#events .card time").text == "2026-02-28 16:20:00 UTC-08:00"
        browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": "UTC"})
        browser.get(service.url + "/")
        wait_until(browser, lambda d: _cards(d) == 1, "the card in UTC")
        assert browser.find_element("css selector", "#events .card time").text == "2026-03-01 00:20:00 UTC"
    finally:
        browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": ""})
