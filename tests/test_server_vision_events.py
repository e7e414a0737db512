"""The reference service takes both destinations of Roboflow's Vision Events block.

- Local mode: ``POST /v2/events`` with ``solution``, with or without images.
- Cloud mode: ``POST /vision-events/upload`` then ``POST /vision-events``
  (idempotent by ``eventId``), ``Authorization: Bearer <key>``.
- Both kinds are stored together, listed with their solution, and filterable by it.

The protocol tests talk to a ReferenceService on 127.0.0.1. The last tests run
Roboflow's own block (from the ``roboflow-workflows`` package inference
installs) in a child process, in both modes, against a service the test
starts, and compare what the service stored with what the block sent.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from inference_support import INFERENCE_REASON, OFFLINE_ENVIRONMENT
from service_process import python_env

from fastsend.jpeg import encode_jpeg
from fastsend.server import ReferenceService
from fastsend.server.store import EventStore

TIMEOUT = 10.0
KEY = "vision-key-1"
TIMESTAMP = "2026-11-26T04:44:12.123456+00:00"
BOX = {"class": "bolt", "x": 10.0, "y": 12.0, "width": 4.0, "height": 6.0, "confidence": 0.75}


def noisy_jpeg(height: int = 48, width: int = 64, seed: int = 0) -> bytes:
    """A JPEG of noise: its entropy-coded data holds CR and LF bytes, as a real photo's does."""
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    return encode_jpeg(pixels, "RGB", quality=90)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ReferenceService]:
    with ReferenceService(tmp_path / "data", api_key=KEY, max_image_pixels=100_000) as running:
        yield running


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(service: ReferenceService, data: bytes, **kwargs: Any) -> requests.Response:
    files = kwargs.pop("files", {"file": ("image.jpg", data, "image/jpeg")})
    headers = kwargs.pop("headers", bearer())
    return requests.post(
        f"{service.url}/vision-events/upload", files=files, headers=headers, timeout=TIMEOUT, **kwargs
    )


def post_event(service: ReferenceService, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(
        f"{service.url}/vision-events", json=body, headers=bearer() if headers is None else headers, timeout=TIMEOUT
    )


def source_id(service: ReferenceService, data: bytes) -> str:
    reply = upload(service, data)
    assert reply.status_code == 201, reply.text
    return str(reply.json()["sourceId"])


def cloud_event(**images: Any) -> dict[str, Any]:
    """A Vision Events body as the block builds it; ``images`` become the one image entry's keys."""
    body: dict[str, Any] = {
        "eventId": str(uuid.uuid4()),
        "eventType": "safety_alert",
        "useCaseId": "yard-safety",
        "timestamp": TIMESTAMP,
        "images": [],
        "eventData": {"alertType": "no_hard_hat", "severity": "high"},
        "customMetadata": {"camera": "gate 2", "shift": 3},
    }
    if images:
        body["images"] = [{"label": "workflow", **images}]
        body["displayImagePosition"] = 0
    return body


# --- uploads -------------------------------------------------------------------


def test_upload_answers_a_source_id_and_a_url_that_gives_the_image_back(service: ReferenceService) -> None:
    # A comment segment full of what a MIME parser could mistake for line ends and boundaries.
    comment = b"line\r\nnext\rlone CR\nlone LF\r\n--not-the-boundary\r\n\r\n"
    plain = noisy_jpeg()
    data = plain[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + plain[2:]
    reply = upload(service, data)
    assert reply.status_code == 201, reply.text
    answer = reply.json()
    assert set(answer) == {"sourceId", "url"}
    assert answer["url"] == f"{service.url}/vision-events/sources/{answer['sourceId']}"
    again = requests.get(answer["url"], headers=bearer(), timeout=TIMEOUT)
    assert again.status_code == 200 and again.headers["Content-Type"] == "image/jpeg"
    assert again.content == data  # byte for byte: the MIME parsing kept every CR and LF
    assert [path.read_bytes() for path in (service.data_dir / "sources").iterdir()] == [data]


@pytest.mark.parametrize(
    ("files", "status", "named"),
    [
        ({"image": ("image.jpg", b"", "image/jpeg")}, 422, "parts: ['image']"),
        ({"file": ("a.jpg", "JPEG", "image/jpeg"), "other": ("b.jpg", "JPEG", "image/jpeg")}, 422, "parts:"),
        ({"file": ("image.png", "JPEG", "image/png")}, 422, "file Content-Type: 'image/png'"),
        ({"file": ("image.jpg", "PNG", "image/jpeg")}, 422, "must be a JPEG, not a PNG"),
        ({"file": ("image.jpg", b"hello world", "image/jpeg")}, 422, "file: '<11 bytes>' must decode to a JPEG"),
        ({"file": ("image.jpg", "CUT", "image/jpeg")}, 422, "must be a complete JPEG"),
        ({"file": ("image.jpg", "HUGE", "image/jpeg")}, 422, "must declare at most 100000 pixels"),
    ],
    ids=["wrong part name", "two parts", "declared png", "png content", "not an image", "truncated", "pixels"],
)
def test_upload_refuses_anything_but_one_whole_jpeg_named_file(
    service: ReferenceService, files: dict[str, tuple[str, Any, str]], status: int, named: str
) -> None:
    from test_server import make_png  # the v2 tests' smallest valid PNG

    contents = {"JPEG": noisy_jpeg(), "PNG": make_png(), "CUT": noisy_jpeg()[:-40], "HUGE": noisy_jpeg(400, 400)}
    files = {name: (file, contents.get(data, data), kind) for name, (file, data, kind) in files.items()}
    reply = upload(service, b"", files=files)
    assert reply.status_code == status, reply.text
    assert named in reply.json()["detail"]
    assert not list((service.data_dir / "sources").iterdir())


def test_upload_limits_are_those_of_the_v2_route(tmp_path: Path) -> None:
    with ReferenceService(tmp_path, max_body_bytes=4096) as service:
        too_large = upload(service, noisy_jpeg(64, 64), headers={})
        assert too_large.status_code == 413, too_large.text
        not_multipart = requests.post(
            f"{service.url}/vision-events/upload",
            data=noisy_jpeg(8, 8),
            headers={"Content-Type": "image/jpeg"},
            timeout=TIMEOUT,
        )
        assert not_multipart.status_code == 415
        assert "multipart/form-data" in not_multipart.json()["detail"]
        compressed = upload(service, noisy_jpeg(8, 8), headers={"Content-Encoding": "gzip"})
        assert compressed.status_code == 415
        assert upload(service, noisy_jpeg(8, 8), headers={}).status_code == 201  # no key configured: open


# --- events --------------------------------------------------------------------


def test_cloud_event_is_stored_as_sent_with_its_images(service: ReferenceService) -> None:
    output, source = noisy_jpeg(seed=1), noisy_jpeg(seed=2)
    body = cloud_event(
        sourceId=source_id(service, output), inputSourceId=source_id(service, source), objectDetections=[BOX]
    )
    reply = post_event(service, body)
    assert reply.status_code == 201, reply.text
    answer = reply.json()
    assert answer["eventId"] == body["eventId"]
    stored = service.get_event(answer["id"])
    assert stored is not None
    assert {key: stored[key] for key in ("inference_timestamp", "event_schema", "event_data", "solution")} == {
        "inference_timestamp": body["timestamp"],
        "event_schema": body["eventType"],
        "event_data": body["eventData"],
        "solution": body["useCaseId"],
    }
    assert stored["custom_metadata"] == body["customMetadata"]
    assert stored["vision_event_id"] == body["eventId"]
    assert stored["displayImagePosition"] == 0
    image = stored["images"][0]
    assert {key: image[key] for key in ("label", "objectDetections")} == {"label": "workflow", "objectDetections": [BOX]}
    assert service.get_image(answer["id"], "output") == output
    assert service.get_image(answer["id"], "input") == source


@pytest.mark.parametrize("images", [{}, {"sourceId": "OUT"}, {"inputSourceId": "IN"}], ids=["none", "output", "input"])
def test_cloud_event_with_some_or_no_images(service: ReferenceService, images: dict[str, str]) -> None:
    data = {"OUT": noisy_jpeg(seed=3), "IN": noisy_jpeg(seed=4)}
    body = cloud_event(**{key: source_id(service, data[name]) for key, name in images.items()})
    del body["eventData"], body["customMetadata"]  # the block omits them when empty
    reply = post_event(service, body)
    assert reply.status_code == 201, reply.text
    stored = service.get_event(reply.json()["id"])
    assert stored is not None and stored["event_data"] == {} and "custom_metadata" not in stored
    assert ("displayImagePosition" in stored) is bool(images)
    assert len(stored["images"]) == (1 if images else 0)
    for key, role in (("sourceId", "output"), ("inputSourceId", "input")):
        expected = data[images[key]] if key in images else None
        assert service.get_image(reply.json()["id"], role) == expected


def test_a_repeated_event_id_gets_the_same_answer_and_is_stored_once(service: ReferenceService) -> None:
    body = cloud_event(sourceId=source_id(service, noisy_jpeg()))
    first = post_event(service, body)
    assert first.status_code == 201, first.text
    with ThreadPoolExecutor(4) as pool:  # concurrent repeats too: the committer may batch them together
        repeats = list(pool.map(lambda _: post_event(service, body), range(8)))
    assert {(reply.status_code, reply.text) for reply in repeats} == {(201, first.text)}
    assert service.stored_count() == 1
    assert len(list((service.data_dir / "images").iterdir())) == 1


def test_concurrent_first_posts_of_one_event_id_store_it_once(service: ReferenceService) -> None:
    body = cloud_event()
    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(lambda _: post_event(service, body), range(8)))
    assert {reply.status_code for reply in replies} == {201}
    assert len({reply.json()["id"] for reply in replies}) == 1
    assert service.stored_count() == 1


@pytest.mark.parametrize("key", ["sourceId", "inputSourceId"])
def test_an_unknown_source_id_is_422_naming_it(service: ReferenceService, key: str) -> None:
    unknown = str(uuid.uuid4())
    reply = post_event(service, cloud_event(**{key: unknown}))
    assert reply.status_code == 422
    assert reply.json()["detail"].startswith(f"images[0].{key}: {unknown!r} must name an image uploaded to")
    assert service.stored_count() == 0


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"eventType": "bogus"}, "eventType: 'bogus' must be one of"),
        ({"eventData": {"severity": "critical"}}, "eventData.severity: 'critical'"),
        ({"eventData": {"result": "pass"}}, "eventData.result: 'pass' is not a field of safety_alert"),
        ({"customMetadata": {"a.b": 1}}, "customMetadata key"),
        ({"useCaseId": 5}, "useCaseId: 5 must be a string"),
        ({"useCaseId": None}, "useCaseId: None"),
        ({"timestamp": "2026-11-26T04:44:12"}, "timestamp: '2026-11-26T04:44:12' must carry a UTC offset"),
        ({"timestamp": 1_700_000_000}, "timestamp: 1700000000 must be an ISO-8601 string"),
        ({"eventId": ""}, "eventId: '' must be a string of 1 to 255 printable ASCII"),
        ({"eventId": "a b"}, "eventId: 'a b'"),
        ({"eventId": 7}, "eventId: 7"),
        ({"displayImagePosition": 0}, "displayImagePosition: 0 must be absent when images is empty"),
        ({"images": {}}, "images: {} must be a list"),
        ({"images": [{"label": "workflow"}]}, "images[0]: {'label': 'workflow'} must hold sourceId, inputSourceId"),
        ({"images": [{"sourceId": 5}]}, "images[0].sourceId: 5 must be a string"),
        ({"images": [{"base64Image": "AAAA"}]}, "images[0].base64Image: 'AAAA' is not an allowed key"),
        ({"imageUrl": "http://x"}, "imageUrl: 'http://x' is not an allowed key of body"),
    ],
)
def test_invalid_cloud_event_is_422_naming_the_field_as_sent(
    service: ReferenceService, change: dict[str, Any], named: str
) -> None:
    body = {**cloud_event(), **change}
    reply = post_event(service, body)
    assert reply.status_code == 422, reply.text
    assert reply.json()["detail"].startswith(named), reply.json()["detail"]
    assert service.stored_count() == 0


def test_an_event_with_images_needs_its_display_position(service: ReferenceService) -> None:
    body = cloud_event(sourceId=source_id(service, noisy_jpeg()))
    del body["displayImagePosition"]
    reply = post_event(service, body)
    assert reply.status_code == 422
    assert reply.json()["detail"] == "displayImagePosition: <missing> is required with an image entry"
    for bad in (1, True, "0"):
        assert post_event(service, {**body, "displayImagePosition": bad}).status_code == 422
    assert service.stored_count() == 0


@pytest.mark.parametrize(
    ("raw", "content_type", "status"),
    [(b"{not json", "application/json", 400), (b"[]", "application/json", 400), (b"{}", "text/plain", 415)],
)
def test_event_body_must_be_a_json_object(service: ReferenceService, raw: bytes, content_type: str, status: int) -> None:
    reply = requests.post(
        f"{service.url}/vision-events", data=raw, headers={**bearer(), "Content-Type": content_type}, timeout=TIMEOUT
    )
    assert reply.status_code == status, reply.text


# --- the key -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "missing Authorization: Bearer header"),
        ({"X-API-Key": KEY}, "missing Authorization: Bearer header"),
        ({"Authorization": KEY}, "missing Authorization: Bearer header"),
        ({"Authorization": f"Basic {KEY}"}, "missing Authorization: Bearer header"),
        ({"Authorization": "Bearer wrong"}, "invalid API key"),
        ({"Authorization": f"Bearer {KEY}x"}, "invalid API key"),
    ],
)
def test_every_route_wants_the_services_key_as_a_bearer_token(
    service: ReferenceService, headers: dict[str, str], detail: str
) -> None:
    replies = [
        upload(service, noisy_jpeg(), headers=headers),
        post_event(service, cloud_event(), headers=headers),
        requests.get(f"{service.url}/vision-events/sources/{uuid.uuid4()}", headers=headers, timeout=TIMEOUT),
    ]
    for reply in replies:
        assert reply.status_code == 401
        assert reply.json() == {"detail": detail}
        assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert service.stored_count() == 0
    assert not list((service.data_dir / "sources").iterdir())


def test_the_bearer_scheme_is_case_insensitive_and_v2_keeps_its_own_header(service: ReferenceService) -> None:
    assert post_event(service, cloud_event(), headers={"Authorization": f"bearer {KEY}"}).status_code == 201
    v2 = requests.get(f"{service.url}/v2/events", headers=bearer(), timeout=TIMEOUT)
    assert v2.status_code == 401 and v2.json() == {"detail": "missing X-API-Key header"}


# --- local mode: v2 bodies as the block sends them -------------------------------------


def v2_body(**changes: Any) -> dict[str, Any]:
    body = {
        "inference_timestamp": TIMESTAMP,
        "solution": "line-3-qc",
        "event_schema": "quality_check",
        "event_data": {"result": "fail"},
        "images": [],
    }
    return {**body, **changes}


def post_v2(service: ReferenceService, body: dict[str, Any]) -> requests.Response:
    return requests.post(f"{service.url}/v2/events", json=body, headers={"X-API-Key": KEY}, timeout=TIMEOUT)


def test_v2_event_without_images_is_stored_and_shown_without_images(service: ReferenceService) -> None:
    reply = post_v2(service, v2_body())
    assert reply.status_code == 201, reply.text
    event_id = reply.json()["id"]
    shown = requests.get(f"{service.url}/v2/events/{event_id}", headers={"X-API-Key": KEY}, timeout=TIMEOUT).json()
    assert shown["images"] == [] and "displayImagePosition" not in shown and shown["solution"] == "line-3-qc"
    for role in ("output", "input"):
        missing = requests.get(
            f"{service.url}/v2/events/{event_id}/images/{role}", headers={"X-API-Key": KEY}, timeout=TIMEOUT
        )
        assert missing.status_code == 404
    thumbnail = requests.get(
        f"{service.url}/viewer/api/events/{event_id}/thumbnail", headers={"X-API-Key": KEY}, timeout=TIMEOUT
    )
    assert thumbnail.status_code == 404 and "has no image" in thumbnail.json()["detail"]


def test_v2_event_with_only_an_input_image_shows_it(service: ReferenceService) -> None:
    data = noisy_jpeg()
    body = v2_body(images=[{"inputBase64Image": base64.b64encode(data).decode(), "label": "workflow"}])
    body["displayImagePosition"] = 0
    reply = post_v2(service, body)
    assert reply.status_code == 201, reply.text
    event_id = reply.json()["id"]
    stored = service.get_event(event_id)
    assert stored is not None
    assert stored["images"][0]["outputImageUrl"] is None and stored["images"][0]["label"] == "workflow"
    assert service.get_image(event_id, "input") == data and service.get_image(event_id, "output") is None
    thumbnail = requests.get(
        f"{service.url}/viewer/api/events/{event_id}/thumbnail", headers={"X-API-Key": KEY}, timeout=TIMEOUT
    )
    assert thumbnail.status_code == 200 and thumbnail.content.startswith(b"\xff\xd8")


# --- listing and filtering ------------------------------------------------------


def test_cloud_and_v2_events_are_listed_together_and_filtered_by_solution(service: ReferenceService) -> None:
    cloud = post_event(service, cloud_event())  # use case yard-safety
    local = post_v2(service, v2_body())  # solution line-3-qc
    plain = post_v2(service, {**v2_body(), "solution": "yard-safety"})
    assert {cloud.status_code, local.status_code, plain.status_code} == {201}
    key = {"X-API-Key": KEY}

    def listed(path: str, **params: str) -> list[dict[str, Any]]:
        reply = requests.get(f"{service.url}{path}", params=params, headers=key, timeout=TIMEOUT)
        assert reply.status_code == 200, reply.text
        return list(reply.json()["events"])

    everything = listed("/v2/events")
    assert [event["solution"] for event in everything] == ["yard-safety", "line-3-qc", "yard-safety"]
    assert [event["vision_event_id"] for event in everything] == [None, None, cloud.json()["eventId"]]
    for path, extra in (("/v2/events", {}), ("/viewer/api/events", {"schema": ""})):
        yard = listed(path, solution="yard-safety", **extra)
        assert [event["id"] for event in yard] == [plain.json()["id"], cloud.json()["id"]]
        assert [event["id"] for event in listed(path, solution="nothing")] == []
    page = requests.get(f"{service.url}/viewer/api/events", headers=key, timeout=TIMEOUT).json()
    assert page["solutions"] == ["line-3-qc", "yard-safety"]
    timeline = requests.get(
        f"{service.url}/viewer/api/timeline", params={"solution": "line-3-qc"}, headers=key, timeout=TIMEOUT
    )
    assert timeline.status_code == 200 and timeline.json()["totals"] == {"quality_check": 1}


@pytest.mark.parametrize("path", ["/v2/events", "/viewer/api/events", "/viewer/api/timeline"])
def test_a_bad_solution_parameter_is_400_naming_it(service: ReferenceService, path: str) -> None:
    reply = requests.get(
        f"{service.url}{path}", params={"solution": "s" * 1001}, headers={"X-API-Key": KEY}, timeout=TIMEOUT
    )
    assert reply.status_code == 400
    assert reply.json()["detail"].startswith("query parameter solution: 'sss")
    assert "must be at most 1000 characters (got 1001)" in reply.json()["detail"]
