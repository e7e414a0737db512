"""The reference service against hostile senders: decompression bombs, compressed bodies, long text,
clients that never read, sniffing browsers, foreign Host names, and the API key kept off the command line.

Where memory is the point the service runs in a child process and its peak resident memory
(``VmHWM``, reset after a warm-up) is held to a stated bound; the same attacks took gigabytes before.
Everything else runs an in-process ReferenceService. Every service listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import os
import socket
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import requests
import simplejpeg
from support.service_process import TIMEOUT, peak_rss, port_of, reset_peak_rss, start_service, wait_until

from fastsend import Event, ValidationError, prepare_event
from fastsend.events import TEXT_MAX_CHARS
from fastsend.server import ReferenceService
from fastsend.server import thumbnails as thumbnails_module
from fastsend.server.hosts import HostPolicy
from fastsend.server.index import SUMMARY_TEXT_CHARS
from fastsend.server.options import API_KEY_ENV, add_service_arguments, config_from_arguments
from fastsend.server.store import EventStore
from fastsend.server.thumbnails import THUMBNAIL_DECODE_MAX_BYTES, THUMBNAIL_SIDE, THUMBNAIL_WORKERS
from fastsend.server.validation import Image, validate_body

MiB = 2**20
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/status")


# --- images -----------------------------------------------------------------------------


def jpeg(width: int, height: int, *, progressive: bool = False) -> bytes:
    """A JPEG of 8×8 blocks of noise (so it does not compress to nothing), 4:2:0."""
    rng = np.random.default_rng(width * height)
    pixels = rng.integers(0, 255, (-(-height // 8), -(-width // 8), 3), np.uint8).repeat(8, 0).repeat(8, 1)
    flags = [cv2.IMWRITE_JPEG_QUALITY, 90, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(pixels[:height, :width]), flags)
    assert ok
    return encoded.tobytes()


def jpeg_bomb(side: int = 30000) -> bytes:
    """The issue's bomb: a 16×16 progressive grey JPEG whose header declares ``side``×``side`` (280 bytes)."""
    ok, encoded = cv2.imencode(".jpg", np.full((16, 16), 128, np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert ok
    data = bytearray(encoded.tobytes())
    frame = data.index(b"\xff\xc2")
    data[frame + 5 : frame + 9] = struct.pack(">HH", side, side)
    return bytes(data)


def png(width: int, height: int) -> bytes:
    """A grey PNG of zeros, compressed as it is written: a 12000×12000 one is about 140 kB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = bytes(1 + width)  # filter byte, then the pixels
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


SMALL_JPEG = jpeg(64, 48)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def body(image: bytes = SMALL_JPEG, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "inference_timestamp": "2026-11-26T04:44:12+00:00",
        "event_schema": "quality_check",
        "event_data": {"result": "pass"},
        "images": [{"base64Image": b64(image)}],
        "displayImagePosition": 0,
    }
    event.update(overrides)
    return event


def store_events(data_dir: Path, events: list[Any]) -> list[str]:
    """Store events as an older service did, before today's limits: straight into the store."""
    store = EventStore(data_dir)
    try:
        return [event_id for event_id, _ in store.add([(event, None) for event in events])]
    finally:
        store.close()


def unlimited(image: bytes) -> Any:
    return validate_body(body(image), max_image_pixels=2**62)


def post(url: str, event: Any, **headers: str) -> requests.Response:
    return requests.post(f"{url}/v2/events", json=event, headers=headers, timeout=TIMEOUT)


@pytest.fixture
def child_service(tmp_path: Path) -> Iterator[Callable[..., tuple[int, str]]]:
    """``start(data_dir, *options, env=..., cwd=...)``: the service in a child process; ``(pid, url)``."""
    started: list[subprocess.Popen[str]] = []

    def start(data_dir: Path | None, *options: str, **kwargs: Any) -> tuple[int, str]:
        process, url = start_service(data_dir, 0, *options, **kwargs)
        started.append(process)
        return process.pid, url

    yield start
    for process in started:
        process.terminate()
        process.wait(TIMEOUT)


# --- 1. decompression bombs -------------------------------------------------------------


def test_an_image_declaring_more_than_the_pixel_limit_is_refused_at_post(make_service: Any) -> None:
    service = make_service()
    answer = post(service.url, body(jpeg_bomb()))
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail.startswith("images[0].base64Image: ")
    assert "must declare at most 50000000 pixels (the service's --max-image-pixels)" in detail
    assert detail.endswith("this image declares 30000×30000 = 900000000")
    bomb_input = body(images=[{"base64Image": b64(SMALL_JPEG), "inputBase64Image": b64(png(12000, 12000))}])
    answer = post(service.url, bomb_input)
    assert answer.status_code == 422
    assert answer.json()["detail"].startswith("images[0].inputBase64Image: ")
    assert "12000×12000" in answer.json()["detail"]
    assert service.stored_count() == 0

    strict = make_service(max_image_pixels=64 * 48)
    assert post(strict.url, body(SMALL_JPEG)).status_code == 201
    assert post(strict.url, body(jpeg(64, 49))).status_code == 422
    assert post(strict.url, body(png(64, 49))).status_code == 422


@linux_only
def test_stored_bombs_get_no_thumbnail_and_the_service_stays_small(tmp_path: Path, child_service: Any) -> None:
    bomb, png_bomb, small, small_png = store_events(
        tmp_path, [unlimited(jpeg_bomb()), unlimited(png(12000, 12000)), unlimited(SMALL_JPEG), unlimited(png(40, 30))]
    )
    pid, url = child_service(tmp_path)

    def thumbnail(event_id: str) -> requests.Response:
        return requests.get(f"{url}/viewer/api/events/{event_id}/thumbnail", timeout=TIMEOUT)

    assert thumbnail(small).status_code == thumbnail(small_png).status_code == 200  # loads what decoding needs
    reset_peak_rss(pid)
    baseline = peak_rss(pid)
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(thumbnail, [bomb, bomb, bomb, png_bomb]))
    assert [answer.status_code for answer in answers] == [422] * 4
    assert answers[0].json()["detail"] == (
        "no thumbnail: decoding this 30000×30000 image/jpeg would take about 1838 MiB,"
        " over the thumbnail bound of 64 MiB"
    )
    assert answers[3].json()["detail"].startswith("no thumbnail: decoding this 12000×12000 image/png would take")
    # Bound: 16 MiB. Before, each of these decodes took 1.8 GB (the JPEG) or 1.3 GB (the PNG).
    assert peak_rss(pid) - baseline < 16 * MiB


@linux_only
def test_thumbnails_of_large_images_are_made_within_the_decode_bound(tmp_path: Path, child_service: Any) -> None:
    progressive, baseline_48mp = store_events(
        tmp_path, [unlimited(jpeg(5000, 4000, progressive=True)), unlimited(jpeg(8000, 6000))]
    )
    warm = store_events(tmp_path, [unlimited(SMALL_JPEG)])[0]
    pid, url = child_service(tmp_path)
    assert requests.get(f"{url}/viewer/api/events/{warm}/thumbnail", timeout=TIMEOUT).status_code == 200
    for event_id in (progressive, baseline_48mp):
        reset_peak_rss(pid)
        baseline = peak_rss(pid)
        answer = requests.get(f"{url}/viewer/api/events/{event_id}/thumbnail", timeout=TIMEOUT)
        assert answer.status_code == 200
        assert answer.headers["Content-Type"] == "image/jpeg"
        height, width, _, _ = simplejpeg.decode_jpeg_header(answer.content)
        assert max(width, height) <= THUMBNAIL_SIDE
        # The decode's own bound (the progressive one needs 60 MiB of coefficients), plus the file read.
        assert peak_rss(pid) - baseline < THUMBNAIL_DECODE_MAX_BYTES + 16 * MiB, event_id


def test_thumbnails_run_on_their_own_pool_and_never_hold_up_posts(
    make_service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    running: list[int] = []
    most = [0]
    lock = threading.Lock()
    real = thumbnails_module.make_thumbnail

    def slow_thumbnail(data: bytes, content_type: str, **bounds: Any) -> bytes | None:
        with lock:
            running.append(1)
            most[0] = max(most[0], len(running))
        try:
            assert release.wait(TIMEOUT)
            return real(data, content_type, **bounds)
        finally:
            with lock:
                running.pop()

    monkeypatch.setattr(thumbnails_module, "make_thumbnail", slow_thumbnail)
    service = make_service()
    ids = [post(service.url, body()).json()["id"] for _ in range(10)]
    thumbnails = ThreadPoolExecutor(len(ids))
    try:
        # More thumbnails than the loop's default executor has threads (min(32, CPUs + 4)), all stuck.
        answers = [
            thumbnails.submit(requests.get, f"{service.url}/viewer/api/events/{i}/thumbnail", timeout=TIMEOUT)
            for i in ids
        ]
        assert wait_until(lambda: len(running) == THUMBNAIL_WORKERS, TIMEOUT)
        # Meanwhile the service stores, lists and serves: its own work never waits behind a thumbnail.
        stored = post(service.url, body())
        assert stored.status_code == 201
        assert requests.get(f"{service.url}/v2/events", timeout=TIMEOUT).json()["total"] == len(ids) + 1
        image = requests.get(f"{service.url}/v2/events/{stored.json()['id']}/images/output", timeout=TIMEOUT)
        assert image.content == SMALL_JPEG
        assert len(running) == THUMBNAIL_WORKERS
    finally:
        release.set()
        results = [answer.result(TIMEOUT) for answer in answers]
        thumbnails.shutdown()
    assert [result.status_code for result in results] == [200] * len(ids)
    assert most[0] == THUMBNAIL_WORKERS


# --- 2. compressed bodies --------------------------------------------------------------


def gzip_bomb(inflated: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip format
    zeros = bytes(MiB)
    return b"".join(compressor.compress(zeros) for _ in range(inflated // MiB)) + compressor.flush()


def test_a_compressed_body_is_refused_unread(make_service: Any) -> None:
    service = make_service()
    data = zlib.compress(requests.models.complexjson.dumps(body()).encode())
    for encoding in ("gzip", "deflate", "br", "identity, gzip"):
        answer = requests.post(
            f"{service.url}/v2/events",
            data=data,
            headers={"Content-Type": "application/json", "Content-Encoding": encoding},
            timeout=TIMEOUT,
        )
        assert answer.status_code == 415, encoding
        assert answer.json()["detail"] == (
            f"Content-Encoding must be absent (identity), not {encoding!r}: send the body uncompressed"
        )
    assert service.stored_count() == 0
    plain = requests.post(
        f"{service.url}/v2/events", json=body(), headers={"Content-Encoding": "identity"}, timeout=TIMEOUT
    )
    assert plain.status_code == 201


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@linux_only
def test_gzip_bombs_cost_the_service_nothing(tmp_path: Path, child_service: Any) -> None:
    pid, url = child_service(tmp_path)
    port = int(url.rsplit(":", 1)[1])
    bomb = gzip_bomb(1024 * MiB)  # 1 MiB on the wire, 1 GiB inflated
    head = (
        b"POST /v2/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb)
    )

    async def send_bomb() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(head + bomb)
            try:
                await writer.drain()
            except ConnectionError:
                pass  # answered and closed before the whole bomb went out
            return await asyncio.wait_for(reader.readline(), TIMEOUT)
        finally:
            writer.close()

    async def scenario() -> tuple[list[bytes], int]:
        bombs = [asyncio.ensure_future(send_bomb()) for _ in range(10)]
        health = await asyncio.to_thread(requests.get, f"{url}/healthz", timeout=TIMEOUT)
        return list(await asyncio.gather(*bombs)), health.status_code

    before = _cpu_seconds(pid)
    statuses, health = asyncio.run(scenario())
    assert [status.split()[1] for status in statuses] == [b"415"] * 10
    assert health == 200
    # Bound: 2 CPU-seconds for all ten. Inflating them took 21 on the loop thread (and /healthz waited 11 s).
    assert _cpu_seconds(pid) - before < 2.0


# --- 3. text fields ---------------------------------------------------------------------

TEXT_FIELDS = [
    ("inventory_count", "location", lambda text: Event.inventory_count(location=text)),
    ("inventory_count", "itemType", lambda text: Event.inventory_count(item_type=text)),
    ("operator_feedback", "relatedEventId", lambda text: Event.operator_feedback(related_event_id=text)),
    ("safety_alert", "alertType", lambda text: Event.safety_alert(alert_type=text)),
    ("quality_check", "externalId", lambda text: Event.quality_check(external_id=text)),
]


@pytest.mark.parametrize(("schema", "key", "build"), TEXT_FIELDS, ids=[field[1] for field in TEXT_FIELDS])
def test_every_text_field_has_the_same_limit_on_both_ends(
    make_service: Any, schema: str, key: str, build: Callable[[str], Event]
) -> None:
    service = make_service()
    at_limit, over = "a" * TEXT_MAX_CHARS, "a" * (TEXT_MAX_CHARS + 1)
    assert build(at_limit).data[key] == at_limit
    with pytest.raises(ValidationError, match=f"must be at most {TEXT_MAX_CHARS} characters"):
        build(over)
    assert post(service.url, body(event_schema=schema, event_data={key: at_limit})).status_code == 201
    refused = post(service.url, body(event_schema=schema, event_data={key: over}))
    assert refused.status_code == 422
    assert refused.json()["detail"].startswith(f"event_data.{key}: ")
    assert f"must be at most {TEXT_MAX_CHARS} characters (got {TEXT_MAX_CHARS + 1})" in refused.json()["detail"]


def test_the_label_and_class_names_have_the_same_limit_on_both_ends(make_service: Any) -> None:
    service = make_service()
    at_limit, over = "c" * TEXT_MAX_CHARS, "c" * (TEXT_MAX_CHARS + 1)
    box = {"x": 5.0, "y": 5.0, "width": 2.0, "height": 2.0, "confidence": 0.5}
    # The client: refused on the caller's thread, naming the field.
    with pytest.raises(ValidationError) as label_error:
        prepare_event(Event.custom(), SMALL_JPEG, label=over)
    assert (label_error.value.field, label_error.value.wire_field) == ("label", "images[0].label")
    with pytest.raises(ValidationError) as class_error:
        prepare_event(Event.custom(), SMALL_JPEG, object_detections=[{**box, "class": "ok"}, {**box, "class": over}])
    assert class_error.value.field == "object_detections[1].class"
    with pytest.raises(ValidationError) as classification_error:
        prepare_event(Event.custom(), SMALL_JPEG, classifications={"class_name": [over], "confidence": [0.9]})
    assert classification_error.value.field == "classifications[0].class"
    prepared = prepare_event(Event.custom(), SMALL_JPEG, label=at_limit, object_detections=[{**box, "class": at_limit}])
    assert prepared.envelope.tail.count(at_limit.encode()) == 2
    # The service: the same rule.
    entry = {"base64Image": b64(SMALL_JPEG)}
    for field, image in [
        ("images[0].label", {**entry, "label": over}),
        ("images[0].objectDetections[0].class", {**entry, "objectDetections": [{**box, "class": over}]}),
        ("images[0].classifications[0].class", {**entry, "classifications": [{"class": over, "confidence": 1.0}]}),
    ]:
        refused = post(service.url, body(images=[image]))
        assert refused.status_code == 422
        assert refused.json()["detail"].startswith(f"{field}: "), refused.json()
    accepted = {**entry, "label": at_limit, "objectDetections": [{**box, "class": at_limit}]}
    assert post(service.url, body(images=[accepted])).status_code == 201


@linux_only
def test_lists_stay_small_whatever_is_stored(tmp_path: Path, child_service: Any) -> None:
    # Ten events stored before the limits, each with an 8 MiB location and a 1 MiB label.
    long_location, long_label = "L" * (8 * MiB), "l" * MiB
    template = validate_body(body(event_schema="inventory_count", event_data={"itemCount": 3}))
    legacy = dataclasses.replace(
        template,
        event_data={"location": long_location, "itemCount": 3},
        image_details={"label": long_label},
    )
    ids = store_events(tmp_path, [legacy] * 10)
    pid, url = child_service(tmp_path)
    requests.get(f"{url}/v2/events?limit=1", timeout=TIMEOUT)
    reset_peak_rss(pid)
    baseline = peak_rss(pid)
    pages = [
        requests.get(f"{url}/v2/events?limit=1000", timeout=TIMEOUT),
        requests.get(f"{url}/viewer/api/events?limit=200", timeout=TIMEOUT),
    ]
    # Bound: 48 MiB, what one long row costs SQLite to read and cut (about four times its size), whatever
    # the page's length. The two pages carried 180 MiB of JSON before.
    assert peak_rss(pid) - baseline < 48 * MiB
    for page in pages:
        assert len(page.content) < 64 * 1024
        events = page.json()["events"]
        assert [event["id"] for event in events] == ids[::-1]
        for event in events:
            assert event["event_data"] == {"location": "L" * SUMMARY_TEXT_CHARS + "…", "itemCount": 3}
            assert event["label"] == "l" * SUMMARY_TEXT_CHARS + "…"
            assert event["clipped"] is True
    # The whole event is still there.
    whole = requests.get(f"{url}/v2/events/{ids[0]}", timeout=TIMEOUT).json()
    assert whole["event_data"]["location"] == long_location


def test_a_summary_is_clipped_only_when_something_was_cut(make_service: Any) -> None:
    service = make_service()
    exact = "x" * SUMMARY_TEXT_CHARS
    post(service.url, body(event_schema="custom", event_data={"value": exact}))
    post(service.url, body(event_schema="custom", event_data={"value": exact + "y", "externalId": "e"}))
    cut, whole = requests.get(f"{service.url}/v2/events", timeout=TIMEOUT).json()["events"]
    assert (whole["event_data"], whole["clipped"]) == ({"value": exact}, False)
    assert (cut["event_data"], cut["clipped"]) == ({"value": exact + "…", "externalId": "e"}, True)


# --- 4. image GETs ----------------------------------------------------------------------


@linux_only
def test_image_gets_stream_from_disk(tmp_path: Path, child_service: Any) -> None:
    large = SMALL_JPEG + bytes(32 * MiB)  # NULs after the end of the image are allowed
    (event_id,) = store_events(
        tmp_path, [dataclasses.replace(validate_body(body()), output_image=Image(large, "image/jpeg"))]
    )
    pid, url = child_service(tmp_path)
    port = int(url.rsplit(":", 1)[1])
    requests.get(f"{url}/healthz", timeout=TIMEOUT)
    reset_peak_rss(pid)
    baseline = peak_rss(pid)
    request = f"GET /v2/events/{event_id}/images/output HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()

    async def never_read() -> None:
        # Twenty clients ask for the image, read its headers, and then never read the body.
        streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(20)]
        for _, writer in streams:
            writer.write(request)
        heads = [await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), TIMEOUT) for reader, _ in streams]
        assert all(head.startswith(b"HTTP/1.1 200 ") for head in heads)
        # Bound: 32 MiB. Before, each answer held a copy of the 32 MiB file: 640 MiB.
        assert peak_rss(pid) - baseline < 32 * MiB
        for _, writer in streams:
            writer.close()

    asyncio.run(never_read())
    answer = requests.get(f"{url}/v2/events/{event_id}/images/output", timeout=TIMEOUT)
    assert answer.headers["Content-Type"] == "image/jpeg"
    assert answer.content == large


# --- 5. nosniff on every answer -----------------------------------------------------------


def test_every_answer_says_nosniff(make_service: Any) -> None:
    service = make_service(api_key="k", max_body_bytes=100_000)
    key = {"X-API-Key": "k"}
    event_id = post(service.url, body(), **key).json()["id"]
    answers = {
        "page": requests.get(f"{service.url}/", timeout=TIMEOUT),
        "script": requests.get(f"{service.url}/viewer/static/app.js", timeout=TIMEOUT),
        "health": requests.get(f"{service.url}/healthz", timeout=TIMEOUT),
        "list": requests.get(f"{service.url}/v2/events", headers=key, timeout=TIMEOUT),
        "event": requests.get(f"{service.url}/v2/events/{event_id}", headers=key, timeout=TIMEOUT),
        "image": requests.get(f"{service.url}/v2/events/{event_id}/images/output", headers=key, timeout=TIMEOUT),
        "thumbnail": requests.get(
            f"{service.url}/viewer/api/events/{event_id}/thumbnail", headers=key, timeout=TIMEOUT
        ),
        "viewer list": requests.get(f"{service.url}/viewer/api/events", headers=key, timeout=TIMEOUT),
        "metrics": requests.get(f"{service.url}/metrics", headers=key, timeout=TIMEOUT),
        "201": post(service.url, body(), **key),
        "400": requests.get(f"{service.url}/v2/events?bogus=1", headers=key, timeout=TIMEOUT),
        "401": requests.get(f"{service.url}/v2/events", timeout=TIMEOUT),
        "404": requests.get(f"{service.url}/nowhere", timeout=TIMEOUT),
        "405": requests.delete(f"{service.url}/v2/events", headers=key, timeout=TIMEOUT),
        "413": requests.post(
            f"{service.url}/v2/events",
            data=b"x" * 100_001,
            headers={**key, "Content-Type": "application/json"},
            timeout=TIMEOUT,
        ),
        "415": requests.post(f"{service.url}/v2/events", data=b"{}", headers=key, timeout=TIMEOUT),
        "421": requests.get(f"{service.url}/healthz", headers={"Host": "rebound.example"}, timeout=TIMEOUT),
        "422": post(service.url, body(event_data={}), **key),
    }
    for name, answer in answers.items():
        assert answer.headers.get("X-Content-Type-Options") == "nosniff", (name, answer.status_code)
    assert answers["image"].content == SMALL_JPEG and answers["thumbnail"].status_code == 200
    # The connection guard answers before aiohttp sees the connection: its 503 says it too.
    crowded = make_service(max_connections=2)
    holders = [socket_to(crowded) for _ in range(2)]
    try:
        for holder in holders:  # a finished request proves the connection was admitted
            holder.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert holder.recv(4096).startswith(b"HTTP/1.1 200 ")
        with socket_to(crowded) as refused:
            answer = refused.recv(4096)
    finally:
        for holder in holders:
            holder.close()
    assert answer.startswith(b"HTTP/1.1 503 ") and b"\r\nX-Content-Type-Options: nosniff\r\n" in answer


def socket_to(service: ReferenceService) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port_of(service)), timeout=TIMEOUT)


# --- 6. one query validation for every route ------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/v2/events?offset=99999999999999999999999",
        "/viewer/api/events?offset=99999999999999999999999",
    ],
)
def test_an_offset_past_the_largest_integer_is_a_400_on_every_list(make_service: Any, path: str) -> None:
    answer = requests.get(f"{make_service().url}{path}", timeout=TIMEOUT)
    assert answer.status_code == 400
    assert answer.json()["detail"] == (
        "query parameter offset: '99999999999999999999999' must be an integer from 0 to 9223372036854775807"
    )


# --- 7. Host names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "LOCALHOST.", "camera.localhost", "127.0.0.2", "[::1]", "localhost:1"]
)
def test_loopback_host_names_are_answered(make_service: Any, host: str) -> None:
    answer = requests.get(f"{make_service().url}/v2/events", headers={"Host": host}, timeout=TIMEOUT)
    assert answer.status_code == 200


@pytest.mark.parametrize("host", ["rebound.example", "rebound.example:8001", "10.0.0.5", "127.0.0.1.nip.io", "[::2]"])
def test_other_host_names_get_421_when_bound_to_loopback(make_service: Any, host: str) -> None:
    service = make_service()
    post(service.url, body())
    for path in ("/v2/events", "/viewer/api/events", "/", "/healthz"):
        answer = requests.get(f"{service.url}{path}", headers={"Host": host}, timeout=TIMEOUT)
        assert answer.status_code == 421, path
        assert answer.json()["detail"] == (
            f"Host {host!r} is not served here: this service answers only loopback names"
            " (localhost, 127.0.0.1, [::1]); start it with --allowed-host NAME to add one"
        )
    assert post(service.url, body(), Host=host).status_code == 421
    assert service.stored_count() == 1


def test_allowed_hosts_are_added(make_service: Any) -> None:
    service = make_service(allowed_hosts=("camera-gateway.lan",))
    for host, status in [("camera-gateway.lan:8001", 200), ("localhost", 200), ("other.lan", 421)]:
        answer = requests.get(f"{service.url}/v2/events", headers={"Host": host}, timeout=TIMEOUT)
        assert answer.status_code == status, host
    assert "and camera-gateway.lan;" in answer.json()["detail"]


def test_host_policy_off_loopback() -> None:
    anywhere = HostPolicy("0.0.0.0")
    assert anywhere.admits("rebound.example") and anywhere.admits("10.0.0.5:8001")
    named = HostPolicy("0.0.0.0", ["events.lan:8001"])
    assert named.admits("events.lan:8001") and named.admits("localhost") and not named.admits("10.0.0.5")
    assert HostPolicy("::1").admits(None)  # HTTP/1.0 without Host: no browser sends that


# --- 8. the API key off the command line ----------------------------------------------------


def _config(*argv: str, environ: dict[str, str] | None = None) -> Any:
    parser = argparse.ArgumentParser()
    add_service_arguments(parser)
    return config_from_arguments(parser.parse_args(list(argv)), environ or {})


def test_the_api_key_comes_from_the_option_the_file_or_the_environment(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    environ = {API_KEY_ENV: "from-env"}
    assert _config("--api-key", "from-option", environ=environ).api_key == "from-option"
    assert _config("--api-key-file", str(key_file), environ=environ).api_key == "from-file"
    assert _config(environ=environ).api_key == "from-env"
    assert _config().api_key is None
    with pytest.raises(ValidationError, match="cannot be given with --api-key"):
        _config("--api-key", "a", "--api-key-file", str(key_file))
    (tmp_path / "empty").write_text(" \n")
    for path, rule in [(tmp_path / "empty", "the file is empty"), (tmp_path / "absent", "must be a readable")]:
        with pytest.raises(ValidationError, match=rule) as raised:
            _config("--api-key-file", str(path))
        assert raised.value.field == "--api-key-file"


@linux_only
@pytest.mark.parametrize("source", ["environment", "file"])
def test_a_service_started_with_a_secret_key_keeps_it_off_its_command_line(
    tmp_path: Path, child_service: Any, source: str
) -> None:
    secret = "s3cret-for-this-test"
    if source == "environment":
        pid, url = child_service(tmp_path / "data", env={API_KEY_ENV: secret})
    else:
        (tmp_path / "key").write_text(secret + "\n")
        pid, url = child_service(tmp_path / "data", "--api-key-file", str(tmp_path / "key"))
    assert requests.get(f"{url}/v2/events", timeout=TIMEOUT).status_code == 401
    assert requests.get(f"{url}/v2/events", headers={"X-API-Key": secret}, timeout=TIMEOUT).status_code == 200
    assert secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()


def test_help_says_where_the_key_may_come_from() -> None:
    parser = argparse.ArgumentParser()
    add_service_arguments(parser)
    text = " ".join(parser.format_help().split())
    assert "--api-key-file PATH" in text and API_KEY_ENV in text and "(ps)" in text


def test_python_m_fastsend_server_stores_in_fastsend_data_by_default(tmp_path: Path, child_service: Any) -> None:
    _, url = child_service(None, cwd=tmp_path)
    assert post(url, body()).status_code == 201
    assert (tmp_path / "fastsend-data" / "events.sqlite3").is_file()
