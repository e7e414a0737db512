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
from support.inference import INFERENCE_REASON, OFFLINE_ENVIRONMENT
from support.service_process import python_env

from fastsend.imaging.jpeg import encode_jpeg
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
    return requests.post(f"{service.url}/vision-events/upload", files=files, headers=headers, timeout=TIMEOUT, **kwargs)


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


@pytest.mark.parametrize(
    ("content_type", "raw"),
    [
        ("multipart/form-data; boundary=xyz", b"no boundary anywhere"),
        ("multipart/form-data", b"--xyz\r\n\r\nJPEG\r\n--xyz--\r\n"),
        ("multipart/form-data; boundary=xyz", b"--xyz\r\nContent-Disposition: form-data; name=file\r\n\r\nJPEG"),
    ],
    ids=["no boundary in the body", "no boundary parameter", "no closing boundary"],
)
def test_a_malformed_multipart_body_is_400(service: ReferenceService, content_type: str, raw: bytes) -> None:
    reply = requests.post(
        f"{service.url}/vision-events/upload",
        data=raw,
        headers={**bearer(), "Content-Type": content_type},
        timeout=TIMEOUT,
    )
    assert reply.status_code == 400, reply.text
    assert reply.json()["detail"].startswith("body is not valid multipart/form-data")
    assert not list((service.data_dir / "sources").iterdir())


def test_capacity_and_injected_faults_apply_to_the_cloud_routes(tmp_path: Path) -> None:
    from fastsend.server import Faults

    with ReferenceService(tmp_path / "full", capacity=0) as service:
        for reply in (upload(service, noisy_jpeg(), headers={}), post_event(service, cloud_event(), headers={})):
            assert reply.status_code == 529 and reply.headers["Retry-After"] == "1"
            assert reply.json()["detail"].startswith("service at capacity")
        assert service.stored_count() == 0 and not list((service.data_dir / "sources").iterdir())
    faults = Faults(error_rate=1.0, error_status=503, error_detail="injected")
    with ReferenceService(tmp_path / "faulty", faults=faults) as service:
        for reply in (upload(service, noisy_jpeg(), headers={}), post_event(service, cloud_event(), headers={})):
            assert (reply.status_code, reply.json()) == (503, {"detail": "injected"})


def test_the_images_an_event_names_count_against_the_body_budget(tmp_path: Path) -> None:
    first, second = noisy_jpeg(seed=5), noisy_jpeg(seed=6)
    budget = max(len(first), len(second)) + 1_000  # one image and a body fit, two images do not
    with ReferenceService(tmp_path, max_body_bytes=budget, body_budget_bytes=budget) as service:
        sources = {"sourceId": source_id(service, first), "inputSourceId": source_id(service, second)}
        reply = post_event(service, cloud_event(**sources), headers={})
        assert reply.status_code == 529, reply.text
        assert "this event's body and images" in reply.json()["detail"]
        assert service.body_bytes_held() == 0
        one = post_event(service, cloud_event(sourceId=sources["sourceId"]), headers={})
        assert one.status_code == 201, one.text


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
    assert {key: image[key] for key in ("label", "objectDetections")} == {
        "label": "workflow",
        "objectDetections": [BOX],
    }
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
        ({"displayImagePosition": 0}, "images: [] must hold one image entry when displayImagePosition is given"),
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
def test_event_body_must_be_a_json_object(
    service: ReferenceService, raw: bytes, content_type: str, status: int
) -> None:
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


# --- a data directory from before -----------------------------------------------------

# The events table as the service made it before events could lack an output image.
FIRST_LAYOUT = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT UNIQUE,
    received_at TEXT NOT NULL,
    inference_timestamp TEXT NOT NULL,
    event_schema TEXT NOT NULL,
    event_data TEXT NOT NULL,
    custom_metadata TEXT,
    solution TEXT,
    display_image_position INTEGER NOT NULL,
    image_details TEXT NOT NULL,
    output_file TEXT NOT NULL,
    output_content_type TEXT NOT NULL,
    input_file TEXT,
    input_content_type TEXT
);
CREATE INDEX events_by_schema ON events (event_schema, seq);
"""


def test_a_database_of_the_first_layout_is_upgraded_keeping_its_events(tmp_path: Path) -> None:
    old_id, data = str(uuid.uuid4()), noisy_jpeg()
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / f"{old_id}.output.jpg").write_bytes(data)
    with sqlite3.connect(tmp_path / "events.sqlite3") as connection:
        connection.executescript(FIRST_LAYOUT)
        connection.execute(
            "INSERT INTO events (seq, id, idempotency_key, received_at, inference_timestamp, event_schema, event_data,"
            " display_image_position, image_details, output_file, output_content_type)"
            " VALUES (41, ?, 'key-1', ?, ?, 'custom', ?, 0, ?, ?, 'image/jpeg')",
            (old_id, TIMESTAMP, TIMESTAMP, '{"value": "v"}', '{"label": "cam"}', f"{old_id}.output.jpg"),
        )
    connection.close()
    with ReferenceService(tmp_path) as service:
        old = service.get_event(old_id)
        assert old is not None and old["idempotency_key"] == "key-1" and old["event_data"] == {"value": "v"}
        assert old["images"][0]["label"] == "cam" and service.get_image(old_id, "output") == data
        assert post_v2(service, v2_body()).status_code == 201
        assert post_event(service, cloud_event(), headers={}).status_code == 201
        assert [event["id"] == old_id for event in service.list_events()] == [False, False, True]
    with sqlite3.connect(tmp_path / "events.sqlite3") as connection:
        assert [seq for (seq,) in connection.execute("SELECT seq FROM events ORDER BY seq")] == [41, 42, 43]
    connection.close()
    EventStore(tmp_path).close()  # opens again as it is: nothing left to upgrade


# --- Roboflow's own block, both modes ------------------------------------------------

# Runs roboflow_core/roboflow_vision_events@v1 for each case and prints, per case, what the block returned and
# every request it made (recorded around requests.post, which still sends it). inference reads API_BASE_URL
# from the environment when it is first imported, hence a process of its own.
BLOCK_RUNNER = r"""
import base64, json, sys, warnings
warnings.simplefilter("ignore")
import numpy as np
import requests
import supervision as sv
import inference.core  # installs inference's configuration (API_BASE_URL) and platform client for the blocks
from roboflow_workflows.core_steps.sinks.roboflow.vision_events import v1
from roboflow_workflows.execution_engine.entities.base import ImageParentMetadata, WorkflowImageData

def frame(seed):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(60, 80, 3), dtype=np.uint8)
    return WorkflowImageData(parent_metadata=ImageParentMetadata(parent_id=f"frame-{seed}"), numpy_image=pixels)

def predictions(kind):
    boxes = np.array([[10.0, 12.0, 30.0, 40.0], [40.0, 5.0, 70.0, 50.0]])
    data = {"class_name": np.array(["bolt", "nut"])}
    if kind == "detections":
        return sv.Detections(xyxy=boxes, confidence=np.array([0.9, 0.4]), data=data)
    if kind == "segmentation":
        mask = np.zeros((2, 60, 80), dtype=bool)
        mask[0, 12:40, 10:30] = mask[1, 5:50, 40:70] = True
        return sv.Detections(xyxy=boxes, confidence=np.array([0.9, 1.3]), mask=mask, data=data)
    if kind == "classification":
        return {"predictions": [{"class": "ok", "confidence": 0.8}, {"class": "scratch", "confidence": 0.2}]}
    return None

sent = []
send = requests.post
def recording_post(url, **kwargs):
    response = send(url, **kwargs)
    record = {"url": url, "headers": dict(kwargs.get("headers") or {}), "status": response.status_code}
    is_json = response.headers.get("Content-Type", "").startswith("application/json")
    record["answer"] = response.json() if is_json else None
    if "json" in kwargs:
        record["json"] = kwargs["json"]
    if "files" in kwargs:
        name, data, content_type = kwargs["files"]["file"]
        record["file"] = [name, base64.b64encode(data).decode(), content_type]
    sent.append(record)
    return response
requests.post = recording_post

for case in json.loads(sys.argv[1]):
    del sent[:]
    block = v1.RoboflowVisionEventsBlockV1(api_key=case["api_key"], background_tasks=None, thread_pool_executor=None)
    result = block.run(
        input_image=frame(1) if case["images"] in ("input", "both") else None,
        output_image=frame(2) if case["images"] in ("output", "both") else None,
        predictions=predictions(case["predictions"]),
        solution=case["solution"],
        custom_metadata=case["custom_metadata"],
        fire_and_forget=False,
        disable_sink=False,
        write_to_event_store=case["local"],
        event_store_url=case["event_store_url"],
        **case["fields"],
    )
    print(json.dumps({"result": result, "sent": list(sent)}), flush=True)
"""

BLOCK_CASES = [
    ("no image", "none", None, {"event_type": "quality_check", "qc_result": "fail", "external_id": "sn-1"}),
    ("output image, boxes", "output", "detections", {"event_type": "safety_alert", "alert_type": "no_vest"}),
    (
        "input image, classes",
        "input",
        "classification",
        {"event_type": "operator_feedback", "related_event_id": "e-9", "feedback": "incorrect"},
    ),
    (
        "both images, polygons",
        "both",
        "segmentation",
        {"event_type": "inventory_count", "location": "bay 4", "item_count": 2, "item_type": "bolt"},
    ),
    ("custom, nothing optional", "none", None, {"event_type": "custom"}),
]
# The annotation lists the block makes of each kind of predictions.
ANNOTATION_LISTS = {"detections": {"objectDetections"}, "segmentation": {"instanceSegmentations"}}
ANNOTATION_LISTS["classification"] = {"classifications"}


def annotation_lists(case: str) -> set[str]:
    (kind,) = [kind for name, _, kind, _ in BLOCK_CASES if name == case]
    return ANNOTATION_LISTS.get(kind, set())


@pytest.fixture(scope="module")
def block_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ReferenceService, dict[str, Any]]]:
    """The service, and what Roboflow's block returned and sent for each (mode, case)."""
    if importlib.util.find_spec("inference") is None:
        pytest.skip(INFERENCE_REASON)
    with ReferenceService(tmp_path_factory.mktemp("block") / "data", api_key=KEY) as service:
        cases = [
            {
                "local": local,
                "api_key": KEY,
                "images": images,
                "predictions": kind,
                "solution": f"use-case-{index}",
                "custom_metadata": {"station": index} if index % 2 else {},
                "event_store_url": f"{service.url}/",
                "fields": fields,
            }
            for local in (True, False)
            for index, (_, images, kind, fields) in enumerate(BLOCK_CASES)
        ]
        environment = {**python_env(), **OFFLINE_ENVIRONMENT, "API_BASE_URL": service.url}
        environment["EVENT_INGESTION_API_KEY"] = KEY
        finished = subprocess.run(
            [sys.executable, "-c", BLOCK_RUNNER, json.dumps(cases)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert finished.returncode == 0, finished.stderr[-4000:]
        lines = finished.stdout.splitlines()
        assert len(lines) == len(cases), finished.stdout + finished.stderr[-4000:]
        runs = {
            (case["local"], name): json.loads(line)
            for case, line, (name, *_) in zip(cases, lines, BLOCK_CASES * 2, strict=True)
        }
        yield service, runs


def _stored_images(service: ReferenceService, event_id: str) -> tuple[bytes | None, bytes | None]:
    return service.get_image(event_id, "output"), service.get_image(event_id, "input")


@pytest.mark.parametrize("case", [name for name, *_ in BLOCK_CASES])
def test_roboflows_block_in_local_mode_is_stored_as_it_sent_it(
    block_runs: tuple[ReferenceService, dict[str, Any]], case: str
) -> None:
    service, runs = block_runs
    run = runs[(True, case)]
    (request,) = run["sent"]
    assert request["url"] == f"{service.url}/v2/events" and request["headers"]["X-API-Key"] == KEY
    assert run["result"]["error_status"] is False, run["result"]["message"]
    assert run["result"]["event_id"] == request["answer"]["id"]
    sent, stored = request["json"], service.get_event(run["result"]["event_id"])
    assert stored is not None
    for key in ("inference_timestamp", "solution", "event_schema", "event_data", "displayImagePosition"):
        assert stored.get(key) == sent.get(key), key
    assert stored.get("custom_metadata") == sent.get("custom_metadata")
    assert len(stored["images"]) == len(sent["images"])
    if sent["images"]:
        (entry,) = sent["images"]
        images = {key: entry.pop(key, None) for key in ("base64Image", "inputBase64Image")}
        assert set(entry) == {"label", *annotation_lists(case)}  # the case sends what it means to
        shown = {key: value for key, value in stored["images"][0].items() if not key.endswith(("Url", "Type"))}
        assert shown == entry
        expected = tuple(None if text is None else base64.b64decode(text) for text in images.values())
        assert _stored_images(service, stored["id"]) == expected


@pytest.mark.parametrize("case", [name for name, *_ in BLOCK_CASES])
def test_roboflows_block_in_cloud_mode_is_stored_as_it_sent_it(
    block_runs: tuple[ReferenceService, dict[str, Any]], case: str
) -> None:
    service, runs = block_runs
    run = runs[(False, case)]
    *uploads, request = run["sent"]
    assert run["result"]["error_status"] is False, run["result"]["message"]
    assert all(record["headers"]["Authorization"] == f"Bearer {KEY}" for record in run["sent"])
    assert all(record["url"] == f"{service.url}/vision-events/upload" for record in uploads)
    assert request["url"] == f"{service.url}/vision-events"
    uploaded = {record["answer"]["sourceId"]: base64.b64decode(record["file"][1]) for record in uploads}
    sent = request["json"]
    assert run["result"]["event_id"] == sent["eventId"] == request["answer"]["eventId"]
    (stored,) = [event for event in service.list_events() if event.get("vision_event_id") == sent["eventId"]]
    assert stored["id"] == request["answer"]["id"]
    assert {key: stored.get(key) for key in ("inference_timestamp", "event_schema", "solution", "event_data")} == {
        "inference_timestamp": sent["timestamp"],
        "event_schema": sent["eventType"],
        "solution": sent["useCaseId"],
        "event_data": sent.get("eventData", {}),
    }
    assert stored.get("custom_metadata") == sent.get("customMetadata")
    assert stored.get("displayImagePosition") == sent.get("displayImagePosition")
    assert len(stored["images"]) == len(sent["images"]) == (1 if uploads else 0)
    if sent["images"]:
        (entry,) = sent["images"]
        sources = [entry.pop(key, None) for key in ("sourceId", "inputSourceId")]
        assert set(entry) == {"label", *annotation_lists(case)}  # the case sends what it means to
        shown = {key: value for key, value in stored["images"][0].items() if not key.endswith(("Url", "Type"))}
        assert shown == entry
        expected = tuple(None if source is None else uploaded[source] for source in sources)
        assert _stored_images(service, stored["id"]) == expected
