"""What one request may cost the reference service: annotation and point limits held before a body is
parsed, the memory a request holds, and a body budget that idle uploads cannot fill.

Where memory is the point the service runs in a child process and its peak resident memory
(``VmHWM``, reset after a warm-up) is measured around one request. Every service listens on 127.0.0.1.
"""

from __future__ import annotations

import base64
import socket
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import requests
import simplejpeg
from support.service_process import TIMEOUT, peak_rss, port_of, reset_peak_rss, start_service, wait_until

from fastsend import ValidationError
from fastsend.server.structure import PARSED_AT_ONCE, TooManyValues, check_structure
from fastsend.server.validation import BodyLimits, validate_body

MiB = 2**20
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status")
SMALL_JPEG = simplejpeg.encode_jpeg(np.full((48, 64, 3), 128, np.uint8))
BOX = {"class": "person", "x": 100.5, "y": 200.5, "width": 30.25, "height": 40.75, "confidence": 0.91}


def body(image: bytes = SMALL_JPEG, **entry: Any) -> dict[str, Any]:
    return {
        "inference_timestamp": "2026-11-26T04:44:12+00:00",
        "event_schema": "quality_check",
        "event_data": {"result": "pass"},
        "images": [{"base64Image": base64.b64encode(image).decode(), **entry}],
        "displayImagePosition": 0,
    }


def polygon(points: int) -> dict[str, Any]:
    return {**BOX, "points": [[123.5, 456.25]] * points}


def keypoints(count: int) -> dict[str, Any]:
    return {**BOX, "keypoints": [{"id": 3, "x": 123.5, "y": 456.25}] * count}


def post_raw(url: str, data: bytes) -> requests.Response:
    return requests.post(f"{url}/v2/events", data=data, headers={"Content-Type": "application/json"}, timeout=60)


# --- 1. limits on annotations and points, named -----------------------------------------------


def _refusal(limits: BodyLimits, event: dict[str, Any]) -> str:
    """The error the service gives ``event``: before parsing when it holds many values, after otherwise."""
    raw = orjson.dumps(event)
    try:
        check_structure(raw, limits)
        validate_body(orjson.loads(raw), limits=limits)
    except (ValidationError, TooManyValues) as refused:
        return str(refused)
    return ""


@pytest.mark.parametrize(
    ("entry", "detail"),
    [
        (
            {"objectDetections": [BOX] * 1001},
            "images[0].objectDetections: '<1001 annotations>' must hold at most 1000 annotations"
            " (the service's --max-annotations)",
        ),
        (
            {"classifications": [{"class": "cat", "confidence": 0.5}] * 1001},
            "images[0].classifications: '<1001 annotations>' must hold at most 1000 annotations",
        ),
        (
            {"instanceSegmentations": [polygon(3), polygon(1001)]},
            "images[0].instanceSegmentations[1].points: '<1001 points>' must hold at most 1000 points"
            " (the service's --max-points)",
        ),
        (
            {"keypoints": [keypoints(1001)]},
            "images[0].keypoints[0].keypoints: '<1001 keypoints>' must hold at most 1000 keypoints",
        ),
        (
            {"instanceSegmentations": [polygon(1000)] * 60, "keypoints": [keypoints(1000)] * 41},
            "images[0]: '<101000 points>' must hold at most 100000 polygon points and keypoints in all"
            " (the service's --max-total-points)",
        ),
    ],
)
def test_lists_past_their_limits_are_422s_naming_the_list_and_the_limit(
    make_service: Any, entry: dict[str, Any], detail: str
) -> None:
    service = make_service()
    answer = post_raw(service.url, orjson.dumps(body(**entry)))
    assert answer.status_code == 422
    shown = answer.json()["detail"]
    # A body of many values is read before it is parsed, and reading stops past the limit: "more than".
    assert shown == detail or shown.startswith(detail.split("'")[0]), shown
    assert detail.split("must", 1)[1] in shown
    assert service.stored_count() == 0


def test_lists_at_their_limits_are_stored(make_service: Any) -> None:
    service = make_service()
    at_limits = body(
        objectDetections=[BOX] * 1000,
        classifications=[{"class": "cat", "confidence": 0.5}] * 1000,
        instanceSegmentations=[polygon(1000)] * 50,
        keypoints=[keypoints(1000)] * 50,
    )
    answer = post_raw(service.url, orjson.dumps(at_limits))
    assert answer.status_code == 201, answer.text
    stored = service.get_event(answer.json()["id"])["images"][0]
    assert len(stored["objectDetections"]) == 1000 and len(stored["keypoints"][0]["keypoints"]) == 1000


def test_limits_are_options(make_service: Any) -> None:
    service = make_service(max_annotations=2, max_points=4, max_total_points=7)
    assert post_raw(service.url, orjson.dumps(body(objectDetections=[BOX] * 2))).status_code == 201
    three = post_raw(service.url, orjson.dumps(body(objectDetections=[BOX] * 3)))
    assert three.status_code == 422 and "at most 2 annotations" in three.json()["detail"]
    five = post_raw(service.url, orjson.dumps(body(instanceSegmentations=[polygon(5)])))
    assert five.status_code == 422 and "at most 4 points" in five.json()["detail"]
    eight = post_raw(service.url, orjson.dumps(body(instanceSegmentations=[polygon(4), polygon(4)])))
    assert eight.status_code == 422 and "'<8 points>' must hold at most 7 polygon points" in eight.json()["detail"]


@pytest.mark.parametrize(
    "entry",
    [
        {"objectDetections": [BOX] * 50_000},
        {"instanceSegmentations": [polygon(100_000)]},
        {"keypoints": [keypoints(100_000)]},
        {"instanceSegmentations": [polygon(1000)] * 101},
    ],
    ids=["boxes", "polygon", "keypoints", "total"],
)
def test_a_body_past_a_limit_is_refused_before_it_is_parsed(entry: dict[str, Any]) -> None:
    raw = orjson.dumps(body(**entry))
    assert raw.count(b",") > PARSED_AT_ONCE  # so it is read, not parsed at once
    with pytest.raises(ValidationError, match="must hold at most") as refused:
        check_structure(raw, BodyLimits())
    assert "more than" in str(refused.value.value)  # reading stopped at the limit


def test_reading_the_structure_skips_strings_and_counts_what_they_hide() -> None:
    # Commas and brackets inside strings are text: a label of them does not make a body refused...
    labels = body(label="[{,}]" * 190, objectDetections=[{**BOX, "class": ",[{" * 300}] * 1000)
    raw = orjson.dumps(labels)
    assert raw.count(b",") > PARSED_AT_ONCE
    assert check_structure(raw, BodyLimits()) < 10_000
    # ...and an escaped quote does not end one.
    escaped = orjson.dumps(body(label='\\"' * 10, objectDetections=[{**BOX, "class": '"[' * 100}] * 1001))
    with pytest.raises(ValidationError, match="objectDetections"):
        check_structure(escaped, BodyLimits())
    # A body of other values past any valid one's count is a 413's TooManyValues.
    with pytest.raises(TooManyValues, match="holds more than"):
        check_structure(orjson.dumps({"custom_metadata": list(range(500_000))}), BodyLimits())


# --- 2. memory per request ----------------------------------------------------------------------


@pytest.fixture
def child_service(tmp_path: Path) -> Iterator[Callable[..., tuple[int, str]]]:
    started: list[Any] = []

    def start(*options: str) -> tuple[int, str]:
        process, url = start_service(tmp_path / "data", 0, *options)
        started.append(process)
        return process.pid, url

    yield start
    for process in started:
        process.kill()
        process.wait(TIMEOUT)


def _noise_jpeg(megabytes: float) -> bytes:
    side = int((megabytes * MiB / 4.1) ** 0.5)  # noise at quality 100 takes about 4.1 bytes a pixel
    pixels = np.random.default_rng(7).integers(0, 255, (side, side, 3), np.uint8)
    jpeg: bytes = simplejpeg.encode_jpeg(pixels, quality=100)
    return jpeg


def _peak_growth(pid: int, url: str, data: bytes) -> tuple[int, requests.Response]:
    reset_peak_rss(pid)
    baseline = peak_rss(pid)
    answer = post_raw(url, data)
    return peak_rss(pid) - baseline, answer


@linux_only
def test_memory_per_request_is_held_to_four_times_the_body(child_service: Any) -> None:
    pid, url = child_service("--max-body-bytes", str(96 * MiB), "--body-budget-bytes", str(256 * MiB))
    assert post_raw(url, orjson.dumps(body())).status_code == 201  # warm-up: imports, first connection

    # A large valid body: a 45 MB image and every annotation list at its limit.
    large = orjson.dumps(
        body(
            _noise_jpeg(45),
            objectDetections=[BOX] * 1000,
            classifications=[{"class": "cat", "confidence": 0.5}] * 1000,
            instanceSegmentations=[polygon(1000)] * 50,
            keypoints=[keypoints(1000)] * 50,
        )
    )
    grown, answer = _peak_growth(pid, url, large)
    assert answer.status_code == 201, answer.text
    assert grown <= 4 * len(large), f"+{grown / MiB:.0f} MiB for a {len(large) / MiB:.0f} MiB body"

    # The hostile bodies, 60 MiB of small boxes and a polygon of ten million points: refused,
    # holding little more than their bytes (they took +671 MiB and +1.2 GB).
    for entry, field in [
        ({"objectDetections": [{**BOX, "class": "a", "x": 1, "y": 2}] * 700_000}, "objectDetections"),
        ({"instanceSegmentations": [{**polygon(0), "points": [[1, 2]] * 10_000_000}]}, "points"),
    ]:
        hostile = orjson.dumps(body(**entry))
        grown, answer = _peak_growth(pid, url, hostile)
        assert answer.status_code == 422 and field in answer.json()["detail"]
        assert grown <= 2 * len(hostile), f"+{grown / MiB:.0f} MiB for a {len(hostile) / MiB:.0f} MiB body"


@linux_only
def test_the_densest_body_within_the_limits_costs_some_fifty_megabytes(child_service: Any) -> None:
    pid, url = child_service()
    assert post_raw(url, orjson.dumps(body())).status_code == 201
    # Keypoints cost the most once parsed (an object each): 100,000 of them, the most a body may hold.
    densest = orjson.dumps(body(objectDetections=[BOX] * 1000, keypoints=[keypoints(1000)] * 100))
    grown, answer = _peak_growth(pid, url, densest)
    assert answer.status_code == 201, answer.text
    assert grown <= 64 * MiB, f"+{grown / MiB:.0f} MiB for a {len(densest) / MiB:.1f} MiB body"


# --- 3. the body budget fills as bytes arrive ---------------------------------------------------


def _idle_upload(port: int, declared: int) -> socket.socket:
    """A connection that declares a body of ``declared`` bytes and sends one."""
    connection = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    head = (
        b"POST /v2/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n{" % declared
    )
    connection.sendall(head)
    return connection


def test_idle_uploads_declaring_the_largest_body_do_not_lock_others_out(make_service: Any) -> None:
    service = make_service(body_timeout=30.0)  # the defaults: 64 MiB bodies, a 256 MiB budget
    port = port_of(service)
    idle = [_idle_upload(port, 64 * MiB) for _ in range(4)]
    try:
        assert wait_until(lambda: service.body_bytes_held() == 4, 10.0), service.body_bytes_held()
        data = orjson.dumps(body(_noise_jpeg(1)))
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: post_raw(service.url, data), range(8)))
        assert [answer.status_code for answer in answers] == [201] * 8
        assert service.stored_count() == 8
    finally:
        for connection in idle:
            connection.close()
    assert wait_until(lambda: service.body_bytes_held() == 0, 10.0)


def test_the_budget_counts_what_arrived_and_refuses_only_past_it(make_service: Any) -> None:
    service = make_service(max_body_bytes=1_000_000, body_budget_bytes=1_000_000)
    port = port_of(service)
    # Half a body held: 500 kB arrived of a declared 1 MB.
    holder = _idle_upload(port, 1_000_000)
    try:
        holder.sendall(b" " * 499_999)
        assert wait_until(lambda: service.body_bytes_held() == 500_000, 10.0), service.body_bytes_held()
        # A body that fits beside it is stored; one that does not gets 529, and then holds nothing.
        assert post_raw(service.url, orjson.dumps(body())).status_code == 201
        large = orjson.dumps(body(label="x" * 900, image=SMALL_JPEG + b"\0" * 600_000))
        refused = post_raw(service.url, large)
        assert refused.status_code == 529 and refused.headers["Retry-After"] == "1"
        assert "hold 500000 of 1000000 bytes" in refused.json()["detail"]
        assert service.body_bytes_held() == 500_000
    finally:
        holder.close()
    assert wait_until(lambda: service.body_bytes_held() == 0, 10.0)


def test_help_names_the_limits_and_their_defaults() -> None:
    import argparse

    from fastsend.server.options import add_service_arguments

    parser = argparse.ArgumentParser()
    add_service_arguments(parser)
    text = " ".join(parser.format_help().split())
    for option, default in [("--max-annotations", "1000"), ("--max-points", "1000"), ("--max-total-points", "100000")]:
        assert f"{option} {option.upper().lstrip('-').replace('-', '_')}" in text
        assert f"(default {default}" in text.split(option, 2)[2][:400], option


def test_deep_nesting_is_scanned_in_memory_linear_in_the_depth() -> None:
    """A path per level would grow as the square of the depth: 100 000 ``[`` cost gigabytes before."""
    import tracemalloc

    raw = bytearray(b"[" * 200_000 + b"]" * 200_000)
    tracemalloc.start()
    try:
        check_structure(raw, BodyLimits())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2**20, peak
