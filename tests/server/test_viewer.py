"""The event viewer: its JSON API and thumbnails over HTTP, then the page in a headless Chromium.

The browser tests skip (with the reason) when selenium, /usr/bin/chromium or
/usr/bin/chromedriver is missing. Each test starts its own service on loopback.
"""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import simplejpeg
from support.browser import GREY, browser_missing, grey_jpeg, post_event, wait_until
from support.service_process import python_env

import fastsend
from fastsend.imaging.jpeg import encode_jpeg
from fastsend.server import ReferenceService
from fastsend.server.thumbnails import THUMBNAIL_SIDE

TIMEOUT = 15.0


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ReferenceService]:
    with ReferenceService(tmp_path / "data") as running:
        yield running


def _events(url: str, **params: Any) -> dict[str, Any]:
    response = requests.get(f"{url}/viewer/api/events", params=params, timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _hour(hour: int) -> str:
    return f"2026-03-01T{hour:02d}:00:00+00:00"


# ---------------------------------------------------------------- JSON API


def test_list_is_newest_first_with_the_key_fields(service: ReferenceService) -> None:
    first = post_event(service.url, event_data={"result": "pass", "externalId": "a-1"})
    second = post_event(
        service.url,
        schema="inventory_count",
        event_data={"location": "aisle-7", "itemCount": 3},
        input_image=grey_jpeg(64, 48),
        label="cam",
        objectDetections=[{"class": "box", "x": 5, "y": 5, "width": 4, "height": 4, "confidence": 0.5}] * 2,
    )
    page = _events(service.url)
    assert page["total"] == 2
    assert [event["id"] for event in page["events"]] == [second, first]
    assert page["newest"] == page["events"][0]["seq"]
    newest = page["events"][0]
    assert newest["event_schema"] == "inventory_count"
    assert newest["event_data"] == {"location": "aisle-7", "itemCount": 3}
    assert newest["label"] == "cam"
    assert newest["has_input_image"] is True
    assert newest["annotations"] == {"objectDetections": 2}
    assert page["events"][1]["annotations"] == {}
    assert "quality_check" in page["schemas"]


def test_filters_and_paging(service: ReferenceService) -> None:
    for hour in range(12):
        schema, data = (
            ("safety_alert", {"alertType": "zone", "severity": "high"})
            if hour % 3 == 0
            else ("quality_check", {"result": "fail", "externalId": f"part-{hour}"})
        )
        post_event(
            service.url, schema=schema, event_data=data, timestamp=_hour(hour), metadata={"line": f"L{hour % 2}"}
        )

    alerts = _events(service.url, schema="safety_alert")
    assert alerts["total"] == 4
    assert {e["event_schema"] for e in alerts["events"]} == {"safety_alert"}

    # since is inclusive, until exclusive; an offset other than UTC means the same instant.
    window = _events(service.url, since=_hour(3), until="2026-03-01T08:00:00+02:00")
    assert sorted(e["inference_timestamp"] for e in window["events"]) == [_hour(h) for h in (3, 4, 5)]

    assert [e["event_data"]["externalId"] for e in _events(service.url, q="PART-1")["events"]] == [
        "part-11",
        "part-10",
        "part-1",
    ]
    assert _events(service.url, q="L1")["total"] == 6  # a metadata value
    assert _events(service.url, q="line")["total"] == 12  # a metadata key
    assert _events(service.url, q="%")["total"] == 0  # LIKE wildcards are literal
    assert _events(service.url, q="zone")["total"] == 0  # other event_data fields are not searched

    combined = _events(service.url, schema="quality_check", q="L0", since=_hour(4))
    assert sorted(e["event_data"]["externalId"] for e in combined["events"]) == ["part-10", "part-4", "part-8"]

    first, second = _events(service.url, limit=5), _events(service.url, limit=5, offset=10)
    assert first["total"] == second["total"] == 12
    assert [e["inference_timestamp"] for e in first["events"]] == [_hour(h) for h in range(11, 6, -1)]
    assert [e["inference_timestamp"] for e in second["events"]] == [_hour(1), _hour(0)]


def test_text_search_reads_metadata_keys_and_values_as_text(service: ReferenceService) -> None:
    quoted = post_event(service.url, metadata={"note": 'said "stop" \\ twice', "checked": True})
    plain = post_event(service.url, event_data={"result": "pass", "externalId": 'lot "7"'}, metadata={"count": 12})

    def found(text: str) -> list[str]:
        return [event["id"] for event in _events(service.url, q=text)["events"]]

    assert found('"stop" \\') == [quoted]  # quotes and backslashes as written, not as JSON escapes them
    assert found("true") == [quoted] and found("CHECKED") == [quoted]
    assert found('lot "7"') == [plain] and found("12") == [plain]
    assert found("note:") == [] and found('":"') == []  # never the JSON punctuation between them


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": "0"}, "query parameter limit: '0' must be an integer from 1 to 200"),
        ({"offset": "x"}, "query parameter offset: 'x' must be an integer from 0 to 9223372036854775807"),
        ({"offset": "9" * 23}, "query parameter offset: '99999999999999999999999' must be an integer from 0 to"),
        ({"schema": "nope"}, "query parameter schema: 'nope' must be one of quality_check,"),
        ({"since": "yesterday"}, "query parameter since: 'yesterday' must be an ISO-8601 timestamp"),
        ({"until": "2026-03-01T00:00:00"}, "query parameter until: '2026-03-01T00:00:00' must carry a UTC offset"),
        ({"q": "x" * 201}, "must be at most 200 characters (got 201)"),
        ({"page": "2"}, "query parameter page: '2' is not a parameter of this endpoint"),
        ({"limit": ["5", "6"]}, "query parameter limit: '6' is given more than once"),
    ],
)
def test_bad_query_names_the_parameter(service: ReferenceService, params: dict[str, Any], named: str) -> None:
    response = requests.get(f"{service.url}/viewer/api/events", params=params, timeout=10)
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("application/json")
    assert named in response.json()["detail"]


def test_newest_follows_new_events(service: ReferenceService) -> None:
    def newest() -> int:
        value: int = requests.get(f"{service.url}/viewer/api/newest", timeout=10).json()["newest"]
        return value

    assert newest() == 0
    post_event(service.url)
    after_one = newest()
    post_event(service.url)
    assert newest() > after_one > 0


def test_thumbnail_is_small_and_cached_on_disk(service: ReferenceService) -> None:
    frame = np.zeros((1080, 1920, 3), np.uint8)
    frame[:, :960] = (0, 0, 255)  # left half red (BGR), right half black
    event_id = post_event(service.url, image=encode_jpeg(frame))
    url = f"{service.url}/viewer/api/events/{event_id}/thumbnail"

    response = requests.get(url, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "image/jpeg"
    pixels = simplejpeg.decode_jpeg(response.content, colorspace="RGB")
    height, width = pixels.shape[:2]
    assert width <= THUMBNAIL_SIDE and abs(width / height - 16 / 9) < 0.05
    assert pixels[height // 2, width // 4, 0] > 200 and pixels[height // 2, 3 * width // 4].max() < 40
    assert len(response.content) < 20_000

    cached = service.data_dir / "thumbnails" / f"{event_id}.jpg"
    assert cached.read_bytes() == response.content
    cached.write_bytes(b"cached")  # a second request is served from the file, not made again
    assert requests.get(url, timeout=10).content == b"cached"


def test_thumbnail_of_a_portrait_png_fits_the_box(service: ReferenceService) -> None:
    cv2 = pytest.importorskip("cv2")
    png = cv2.imencode(".png", np.full((800, 300, 3), 90, np.uint8))[1].tobytes()
    event_id = post_event(service.url, image=png)
    response = requests.get(f"{service.url}/viewer/api/events/{event_id}/thumbnail", timeout=10)
    height, width = simplejpeg.decode_jpeg(response.content).shape[:2]
    assert height <= THUMBNAIL_SIDE < 800 and width < height


@pytest.mark.parametrize("event_id", ["00000000-0000-0000-0000-000000000000", "..%2F..%2Fevents.sqlite3", "x"])
def test_thumbnail_of_an_unknown_event_is_404(service: ReferenceService, event_id: str) -> None:
    response = requests.get(f"{service.url}/viewer/api/events/{event_id}/thumbnail", timeout=10)
    assert response.status_code == 404


def test_api_key_guards_the_viewer_api_but_not_the_page(tmp_path: Path) -> None:
    with ReferenceService(tmp_path, api_key="s3cret") as service:
        event_id = post_event(service.url, api_key="s3cret")
        thumbnail = f"/viewer/api/events/{event_id}/thumbnail"
        for path in ("/viewer/api/events", "/viewer/api/newest", "/viewer/api/timeline", thumbnail):
            assert requests.get(service.url + path, timeout=10).status_code == 401
            wrong = requests.get(service.url + path, headers={"X-API-Key": "guess"}, timeout=10)
            assert wrong.status_code == 401
            assert requests.get(service.url + path, headers={"X-API-Key": "s3cret"}, timeout=10).status_code == 200
        page = requests.get(service.url + "/", timeout=10)
        assert page.status_code == 200 and "s3cret" not in page.text
        assert requests.get(service.url + "/viewer/static/app.js", timeout=10).status_code == 200


def test_page_and_assets_are_served_locally(service: ReferenceService) -> None:
    page = requests.get(service.url + "/", timeout=10)
    assert page.status_code == 200
    assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert assets and all(asset.startswith("/viewer/static/") for asset in assets)
    static = Path(fastsend.__file__).parent / "server" / "static"
    for source in static.glob("*.js"):
        text = source.read_text()
        assert "innerHTML" not in text and "insertAdjacentHTML" not in text and "document.write" not in text
        assert "http://" not in text and "https://" not in text
        served = requests.get(f"{service.url}/viewer/static/{source.name}", timeout=10)
        assert served.status_code == 200 and "javascript" in served.headers["Content-Type"]


# ---------------------------------------------------------------- in the browser

_NO_BROWSER = browser_missing()
browser_test = pytest.mark.skipif(_NO_BROWSER is not None, reason=_NO_BROWSER or "")


def _cards(driver: Any) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = driver.execute_script(
        """return [...document.querySelectorAll('#events .card')].map(card => ({
            id: card.dataset.id,
            schema: card.querySelector('.schema').textContent,
            solution: card.querySelector('.solution')?.textContent ?? null,
            text: card.textContent,
            thumb: card.querySelector('img.thumb')?.naturalWidth ?? null,
        }))"""
    )
    return result


def _wait_for_cards(driver: Any, count: int, message: str) -> list[dict[str, Any]]:
    shown: list[dict[str, Any]] = []

    def ready(driver: Any) -> bool:
        shown[:] = _cards(driver)
        return len(shown) == count

    wait_until(driver, ready, message)
    return shown


def _open_page(driver: Any, url: str, expected_cards: int) -> list[dict[str, Any]]:
    driver.get(url + "/")
    return _wait_for_cards(driver, expected_cards, "cards shown")


def _wait_drawn(driver: Any) -> None:
    drawn = "return document.querySelector('#detail canvas')?.dataset.drawn === 'true'"
    wait_until(driver, lambda d: d.execute_script(drawn), "the opened event drawn")


def _apply_filters(driver: Any, expected_cards: int) -> list[dict[str, Any]]:
    driver.find_element("css selector", "#filters button[type=submit]").click()
    return _wait_for_cards(driver, expected_cards, "filtered cards")


@browser_test
def test_page_lists_stored_events_newest_first_with_thumbnails(browser: Any, service: ReferenceService) -> None:
    with fastsend.EventWriter(service.url) as writer:
        ids = [
            writer.send(
                fastsend.Event.quality_check(result="pass", external_id=f"part-{i}", custom_metadata={"line": "A"}),
                np.full((360, 640, 3), 60 * i, np.uint8),
            ).event_id
            for i in range(3)
        ]
    cards = _open_page(browser, service.url, 3)
    assert [card["id"] for card in cards] == ids[::-1]
    assert all(card["schema"] == "quality_check" for card in cards)
    assert "part-2" in cards[0]["text"] and "pass" in cards[0]["text"]
    wait_until(browser, lambda d: all(0 < card["thumb"] <= THUMBNAIL_SIDE for card in _cards(d)), "thumbnails loaded")
    assert "3 events" in browser.find_element("id", "status").text


@browser_test
def test_filters_and_paging_in_the_page(browser: Any, service: ReferenceService) -> None:
    for i in range(56):
        schema, data = (
            ("safety_alert", {"alertType": "zone", "severity": "low"})
            if i % 7 == 0
            else ("quality_check", {"result": "pass", "externalId": f"unit-{i}"})
        )
        post_event(
            service.url,
            schema=schema,
            event_data=data,
            timestamp=f"2026-03-{1 + i // 24:02d}T{i % 24:02d}:00:00+00:00",
            image=grey_jpeg(32, 24),
        )
    from selenium.webdriver.support.ui import Select

    _open_page(browser, service.url, 50)
    assert browser.find_element("id", "range").text == "1\u201350 of 56"
    browser.find_element("id", "older").click()
    _wait_for_cards(browser, 6, "second page")
    assert browser.find_element("id", "range").text == "51\u201356 of 56"

    Select(browser.find_element("name", "schema")).select_by_value("safety_alert")
    cards = _apply_filters(browser, 8)
    assert {card["schema"] for card in cards} == {"safety_alert"}

    Select(browser.find_element("name", "schema")).select_by_value("")
    browser.find_element("name", "q").send_keys("unit-5")
    cards = _apply_filters(browser, 7)  # unit-5 and unit-50 … unit-55
    assert all("unit-5" in card["text"] for card in cards)

    browser.find_element("name", "q").clear()
    # datetime-local holds the browser's local time: convert the instant there.
    for name, instant in (("since", "2026-03-02T00:00:00Z"), ("until", "2026-03-02T05:00:00Z")):
        browser.execute_script(
            """const date = new Date(arguments[1]);
               const local = new Date(date - date.getTimezoneOffset() * 60000);
               document.querySelector(`[name=${arguments[0]}]`).value = local.toISOString().slice(0, 19);""",
            name,
            instant,
        )
    cards = _apply_filters(browser, 5)
    assert [card["text"].count("unit-") for card in cards] == [0] + [1] * 4  # 28 (an alert) down to 24
    assert "since=2026-03-02T00%3A00%3A00.000Z" in browser.current_url  # the filters survive a reload
    browser.refresh()
    _wait_for_cards(browser, 5, "filtered cards after reload")


@browser_test
def test_solution_filter_and_events_without_images_in_the_page(browser: Any, service: ReferenceService) -> None:
    from selenium.webdriver.support.ui import Select

    def post(path: str, body: dict[str, Any]) -> str:
        reply = requests.post(f"{service.url}{path}", json=body, timeout=10)
        assert reply.status_code == 201, reply.text
        return str(reply.json()["id"])

    for hour, solution in enumerate(["line-3", "yard", "line-3"]):
        post_event(service.url, timestamp=_hour(hour), image=grey_jpeg(32, 24))  # a v2 event without a solution
        body = {"inference_timestamp": _hour(hour), "event_schema": "custom", "event_data": {"value": f"v{hour}"}}
        post("/v2/events", {**body, "solution": solution, "images": []})
    cloud_id = post(
        "/vision-events",
        {"eventId": "cloud-1", "eventType": "custom", "useCaseId": "yard", "timestamp": _hour(5), "images": []},
    )
    cards = _open_page(browser, service.url, 7)
    assert [card["solution"] for card in cards][:2] == ["yard", "line-3"]
    assert cards[0]["thumb"] is None and "no image" in cards[0]["text"]

    solutions = Select(browser.find_element("name", "solution"))
    assert [option.get_attribute("value") for option in solutions.options] == ["", "line-3", "yard"]
    solutions.select_by_value("yard")
    cards = _apply_filters(browser, 2)
    assert cards[0]["id"] == cloud_id and {card["solution"] for card in cards} == {"yard"}
    assert "solution=yard" in browser.current_url
    browser.refresh()  # the filter survives a reload
    _wait_for_cards(browser, 2, "filtered cards after reload")
    assert Select(browser.find_element("name", "solution")).first_selected_option.get_attribute("value") == "yard"

    browser.find_element("css selector", f'.card[data-id="{cloud_id}"]').click()
    wait_until(browser, lambda d: "cloud-1" in d.find_element("id", "detail").text, "the opened cloud event")
    detail = browser.find_element("id", "detail").text
    assert "This event has no image." in detail and "solution (use case)\nyard" in detail
    assert "Vision Events id\ncloud-1" in detail
    assert not browser.find_elements("css selector", "#detail canvas")


def _pixel(driver: Any, x: int, y: int) -> tuple[int, int, int]:
    rgba = driver.execute_script(
        "const canvas = document.querySelector('#detail canvas');"
        "return [...canvas.getContext('2d').getImageData(arguments[0], arguments[1], 1, 1).data]",
        x,
        y,
    )
    return rgba[0], rgba[1], rgba[2]


def _swatch(driver: Any, class_name: str) -> tuple[int, int, int]:
    colour = driver.execute_script(
        """const item = [...document.querySelectorAll('.legend li')]
               .find(li => li.querySelector('.class-name').textContent === arguments[0]);
           return getComputedStyle(item.querySelector('.swatch')).backgroundColor""",
        class_name,
    )
    red, green, blue = map(int, re.findall(r"\d+", colour)[:3])
    return red, green, blue


def _near(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 6) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


@browser_test
def test_detail_draws_the_annotations_and_shows_the_data(browser: Any, service: ReferenceService) -> None:
    event_id = post_event(
        service.url,
        event_data={"result": "fail", "externalId": "lot-42"},
        input_image=grey_jpeg(320, 180),
        metadata={"camera": "dock-3", "shift": 2},
        label="station A",
        objectDetections=[{"class": "widget", "x": 200, "y": 150, "width": 120, "height": 100, "confidence": 0.91}],
        instanceSegmentations=[
            {
                "class": "blob",
                "x": 480,
                "y": 260,
                "width": 160,
                "height": 120,
                "confidence": 0.8,
                "points": [[400, 200], [560, 200], [560, 320], [400, 320]],
            }
        ],
        keypoints=[
            {
                "class": "person",
                "x": 100,
                "y": 290,
                "width": 60,
                "height": 80,
                "confidence": 0.7,
                "keypoints": [{"id": 0, "x": 90, "y": 280}, {"id": 1, "x": 110, "y": 310}],
            }
        ],
        classifications=[{"class": "defect", "confidence": 0.66}],
    )
    _open_page(browser, service.url, 1)
    browser.find_element("css selector", f'.card[data-id="{event_id}"]').click()
    _wait_drawn(browser)

    assert browser.execute_script("return document.querySelector('#detail canvas').width") == 640
    background = _pixel(browser, 600, 30)
    assert _near(background, (GREY, GREY, GREY), 4)
    assert _near(_pixel(browser, 200, 150), background, 4)  # a box is an outline: its inside is untouched
    widget = _swatch(browser, "widget")
    assert not _near(widget, background, 30)
    assert _near(_pixel(browser, 140, 150), widget)  # left edge of the box
    assert _near(_pixel(browser, 260, 180), widget)  # right edge
    blob = _swatch(browser, "blob")
    assert _near(_pixel(browser, 400, 260), blob)  # polygon edge
    inside = _pixel(browser, 480, 260)  # polygon fill: a quarter of the class colour over the grey
    assert _near(inside, tuple(round(0.25 * c + 0.75 * GREY) for c in blob), 8)
    person = _swatch(browser, "person")
    assert _near(_pixel(browser, 90, 280), person) and _near(_pixel(browser, 110, 310), person)

    text = browser.find_element("id", "detail").text
    for shown in ("lot-42", "dock-3", "station A", "defect", "66%", "camera", "shift", "Input image"):
        assert shown in text
    input_width = "return document.querySelector('#detail figure.input img').naturalWidth"
    wait_until(browser, lambda d: d.execute_script(input_width) == 320, "the input image shown")
    assert f"event={event_id}" in browser.current_url


# COCO's 17 keypoints of a standing figure facing the camera, as (x, y): nose, eyes, ears, shoulders,
# elbows, wrists, hips, knees, ankles (the person's left first). Shoulders, hips and shins are straight
# horizontal or vertical lines, so their pixels are wholly covered by a 2-pixel line.
FIGURE = [
    (320, 60), (335, 50), (305, 50), (350, 60), (290, 60),
    (380, 130), (260, 130), (420, 200), (220, 200), (440, 270), (200, 270),
    (360, 260), (280, 260), (370, 350), (270, 350), (370, 440), (270, 440),
]  # fmt: skip


def _pose(name: str, points: dict[int, tuple[int, int]], box: tuple[int, int, int, int]) -> dict[str, Any]:
    x, y, width, height = box
    keypoints = [{"id": i, "x": px, "y": py} for i, (px, py) in points.items()]
    return {"class": name, "x": x, "y": y, "width": width, "height": height, "confidence": 0.9, "keypoints": keypoints}


@browser_test
def test_known_skeletons_join_their_keypoints(browser: Any, service: ReferenceService) -> None:
    event_id = post_event(
        service.url,
        image=grey_jpeg(640, 480),
        keypoints=[
            # All 17 COCO ids: the COCO skeleton, whatever the class is called.
            _pose("player", dict(enumerate(FIGURE)), (320, 250, 300, 420)),
            # A "person" missing some keypoints, one of them marked not found at (0, 0).
            _pose(
                "Person",
                {5: (610, 150), 6: (530, 150), 11: (600, 300), 12: (540, 300), 13: (600, 390), 14: (0, 0)},
                (570, 270, 100, 280),
            ),
            # Two keypoints of a class with no known skeleton: dots only.
            _pose("widget", {0: (60, 420), 1: (140, 420)}, (100, 420, 120, 40)),
        ],
    )
    _open_page(browser, service.url, 1)
    browser.find_element("css selector", f'.card[data-id="{event_id}"]').click()
    _wait_drawn(browser)
    grey = (GREY, GREY, GREY)
    player, person, widget = (_swatch(browser, name) for name in ("player", "Person", "widget"))
    assert not any(_near(colour, grey, 30) for colour in (player, person, widget))

    for x, y in [(320, 130), (320, 260), (370, 395), (270, 395)]:  # shoulders, hips, both shins
        assert _near(_pixel(browser, x, y), player), (x, y)
    for x, y in [(400, 265), (330, 195), (320, 440)]:  # wrist–hip, shoulder–opposite hip, ankle–ankle
        assert _near(_pixel(browser, x, y), grey, 4), (x, y)

    assert _near(_pixel(browser, 570, 150), person) and _near(_pixel(browser, 600, 345), person)
    assert _near(_pixel(browser, 135, 75), grey, 4)  # no line to the keypoint at (0, 0) …
    assert _near(_pixel(browser, 2, 2), grey, 4)  # … and no dot there

    assert _near(_pixel(browser, 60, 420), widget) and _near(_pixel(browser, 140, 420), widget)
    assert _near(_pixel(browser, 100, 420), grey, 4)


# The "skeleton" of the person category in the COCO keypoint annotations (ids from 1).
COCO_ANNOTATION_SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9],
    [8, 10], [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]  # fmt: skip


@browser_test
def test_the_coco_skeleton_is_cocos(browser: Any, service: ReferenceService) -> None:
    browser.get(service.url + "/")
    edges = browser.execute_async_script(
        "import('/viewer/static/skeletons.js').then(module => arguments[0](module.COCO_SKELETON))"
    )
    assert sorted(sorted(edge) for edge in edges) == sorted(sorted([a - 1, b - 1]) for a, b in COCO_ANNOTATION_SKELETON)


HOSTILE = {
    "external": '<img src=x onerror="window.__pwned=1;alert(1)">',
    "class": "</script><script>window.__pwned=2</script>",
    "label": '"\'><svg onload="window.__pwned=3"></svg>',
    "metadata": "<b>bold</b> & <i>'quotes\"</i>",
}


@browser_test
def test_hostile_strings_stay_text(browser: Any, service: ReferenceService) -> None:
    from selenium.common.exceptions import NoAlertPresentException

    event_id = post_event(
        service.url,
        event_data={"result": "pass", "externalId": HOSTILE["external"]},
        metadata={"note": HOSTILE["metadata"]},
        label=HOSTILE["label"],
        objectDetections=[
            {"class": HOSTILE["class"], "x": 100, "y": 100, "width": 50, "height": 50, "confidence": 0.5}
        ],
    )
    cards = _open_page(browser, service.url, 1)
    assert HOSTILE["external"] in cards[0]["text"]
    browser.find_element("css selector", f'.card[data-id="{event_id}"]').click()
    _wait_drawn(browser)

    detail = browser.find_element("id", "detail").text
    for value in HOSTILE.values():
        assert value.strip() in detail
    counts = browser.execute_script(
        """return {
            pwned: window.__pwned ?? null,
            scripts: document.scripts.length,
            injected: document.querySelectorAll('img[src="x"], svg:not(#timeline-chart), b, i').length,
            images: document.querySelectorAll('img:not(.thumb)').length,
        }"""
    )
    assert counts == {"pwned": None, "scripts": 1, "injected": 0, "images": 0}
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - reading it raises when no alert is open


@browser_test
def test_new_events_appear_without_a_reload(browser: Any, service: ReferenceService) -> None:
    post_event(service.url, event_data={"result": "pass", "externalId": "before"})
    _open_page(browser, service.url, 1)
    caption = browser.find_element("id", "timeline-caption")
    wait_until(browser, lambda _: caption.text.startswith("1 event "), "the chart counts the first event")
    browser.execute_script("window.__samePage = true")
    browser.find_element("name", "q").send_keys("typed, not applied")  # the refresh keeps the applied filters
    late = post_event(service.url, event_data={"result": "fail", "externalId": "arrived-later"})
    cards = _wait_for_cards(browser, 2, "the new event shown")
    assert cards[0]["id"] == late and "arrived-later" in cards[0]["text"]
    assert browser.execute_script("return window.__samePage") is True
    assert "2 events" in browser.find_element("id", "status").text
    wait_until(browser, lambda _: caption.text.startswith("2 events "), "the chart counts the new event")


@browser_test
def test_page_asks_for_the_api_key(browser: Any, tmp_path: Path) -> None:
    with ReferenceService(tmp_path, api_key="s3cret") as service:
        post_event(service.url, event_data={"result": "pass", "externalId": "guarded"}, api_key="s3cret")
        browser.get(service.url + "/")
        form = browser.find_element("id", "key-form")
        wait_until(browser, lambda _: form.is_displayed(), "key form")
        assert _cards(browser) == []
        form.find_element("name", "key").send_keys("s3cret\n")
        cards = _wait_for_cards(browser, 1, "cards after the key")
        assert "guarded" in cards[0]["text"]
        wait_until(browser, lambda d: _cards(d)[0]["thumb"] > 0, "thumbnail fetched with the key")
        caption = browser.find_element("id", "timeline-caption")
        wait_until(browser, lambda _: caption.text.startswith("1 event "), "the chart fetched with the key")
        assert not browser.find_element("id", "key-form").is_displayed()


@browser_test
def test_every_resource_comes_from_the_service(browser: Any, service: ReferenceService) -> None:
    post_event(service.url)
    _open_page(browser, service.url, 1)
    browser.find_element("css selector", ".card").click()
    _wait_drawn(browser)
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(r => r.name)")
    assert resources and all(name.startswith(service.url + "/") for name in resources)
    assert browser.execute_script("return document.styleSheets[0].cssRules.length") > 10  # the stylesheet applied


# ---------------------------------------------------------------- fastsend demo --keep


def _lines_to(stream: Any, lines: queue.Queue[str]) -> None:
    for line in stream:
        lines.put(line)


def test_demo_prints_the_viewer_url_and_keeps_serving_until_interrupted() -> None:
    command = [sys.executable, "-m", "fastsend", "demo", "--frames", "6", "--width", "160", "--height", "120", "--keep"]
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=python_env())
    try:
        assert demo.stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        # A reader thread: select() on a buffered text pipe misses lines already read into the buffer.
        threading.Thread(target=_lines_to, args=(demo.stdout, lines), daemon=True).start()
        viewer = None
        deadline = time.monotonic() + 60
        while viewer is None and time.monotonic() < deadline:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            if line.startswith("viewer"):
                viewer = line.split()[1]
        assert viewer is not None and viewer.startswith("http://127.0.0.1:") and viewer.endswith("/")
        assert "fastsend" in requests.get(viewer, timeout=10).text
        assert _events(viewer.rstrip("/"))["total"] == 6  # still serving after the demo ended
        demo.send_signal(signal.SIGINT)
        assert demo.wait(TIMEOUT) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(TIMEOUT)


def test_demo_keep_needs_the_embedded_service() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "fastsend", "demo", "--url", "http://127.0.0.1:9", "--keep"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT * 2,
        env=python_env(),
    )
    assert done.returncode == 2 and "--keep" in done.stderr
