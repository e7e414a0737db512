"""The reference Event Ingestion Service: validation, status codes, faults, idempotency, listing.

Every test talks to a ReferenceService it starts on 127.0.0.1 with a free port
and a temporary data directory.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import simplejpeg

from fastsend.server import Faults, ReferenceService
from fastsend.server.store import EventStore
from fastsend.server.validation import validate_body

TIMEOUT = 10.0


# --- images and bodies -------------------------------------------------------


def make_jpeg(height: int = 8, width: int = 8) -> bytes:
    pixels = np.arange(height * width * 3, dtype=np.uint8).reshape(height, width, 3)
    return bytes(simplejpeg.encode_jpeg(pixels, quality=95, colorspace="BGR"))


def make_png(width: int = 2, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    rows = b"".join(b"\x00" + b"\x7f" * (3 * width) for _ in range(height))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


JPEG = make_jpeg()
PNG = make_png()
TIMESTAMP = "2026-11-26T04:44:12.123456+00:00"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def valid_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inference_timestamp": TIMESTAMP,
        "event_schema": "quality_check",
        "event_data": {"result": "pass"},
        "images": [{"base64Image": b64(JPEG)}],
        "displayImagePosition": 0,
    }
    body.update(overrides)
    return body


DETECTION = {"class": "scratch", "x": 10.5, "y": 20.0, "width": 4.0, "height": 6.0, "confidence": 0.9}
POLYGON = [[1.0, 1.0], [5.0, 1.0], [3.0, 4.0]]
KEYPOINT = {"id": 0, "x": 1.5, "y": 2.5}


# --- HTTP ----------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes
    headers: Any

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    method: str, url: str, data: bytes | Iterable[bytes] | None = None, headers: dict[str, str] | None = None
) -> Reply:
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
            return Reply(response.status, response.read(), response.headers)
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, error.read(), error.headers)


def post_event(service: ReferenceService, body: Any, headers: dict[str, str] | None = None) -> Reply:
    data = body if isinstance(body, bytes) else json.dumps(body, allow_nan=False).encode()
    return request("POST", f"{service.url}/v2/events", data, {"Content-Type": "application/json", **(headers or {})})


def get(service: ReferenceService, path: str, headers: dict[str, str] | None = None) -> Reply:
    return request("GET", f"{service.url}{path}", headers=headers)


# --- fixtures ------------------------------------------------------------------


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterable[ReferenceService]:
    with ReferenceService(tmp_path_factory.mktemp("shared-service")) as running:
        yield running


# --- validation table ----------------------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def set_top(**values: Any) -> Mutation:
    return lambda body: body.update(values)


def drop_top(key: str) -> Mutation:
    return lambda body: body.pop(key)


def set_data(schema: str, **data: Any) -> Mutation:
    return lambda body: body.update(event_schema=schema, event_data=data)


def set_image(**values: Any) -> Mutation:
    return lambda body: body["images"][0].update(values)


def drop_padding(body: dict[str, Any]) -> None:
    body["images"][0]["base64Image"] = body["images"][0]["base64Image"].rstrip("=")


def metadata(count: int) -> dict[str, int]:
    return {f"key_{index}": index for index in range(count)}


assert len(JPEG) % 3, "drop_padding needs a JPEG whose base64 form ends in '='"

ACCEPTED: dict[str, Mutation] = {
    "minimal": lambda body: None,
    "quality_check fail, externalId 1000 chars": set_data("quality_check", result="fail", externalId="x" * 1000),
    "quality_check empty event_data": set_data("quality_check"),
    "inventory_count": set_data("inventory_count", location="A1", itemCount=0, itemType="box", externalId="e"),
    "inventory_count large itemCount": set_data("inventory_count", itemCount=2**63),
    "safety_alert description 10000 chars": set_data(
        "safety_alert", alertType="no_hard-hat_2", severity="high", description="d" * 10_000
    ),
    "custom value 10000 chars": set_data("custom", value="v" * 10_000, externalId="e"),
    "operator_feedback": set_data("operator_feedback", relatedEventId="abc", feedback="inconclusive"),
    "timestamp +05:30": set_top(inference_timestamp="2026-11-26T10:14:12+05:30"),
    "timestamp Z": set_top(inference_timestamp="2026-11-26T04:44:12Z"),
    "timestamp Z with millis": set_top(inference_timestamp="2026-11-26T04:44:12.123Z"),
    "timestamp 9-digit fraction": set_top(inference_timestamp="2026-11-26T04:44:12.123456789Z"),
    "metadata empty": set_top(custom_metadata={}),
    "metadata 100 keys": set_top(custom_metadata=metadata(100)),
    "metadata value types": set_top(custom_metadata={"s": "x" * 1000, "i": -3, "f": 0.5, "b": True}),
    "metadata key 100 chars": set_top(custom_metadata={"Line A_1-" + "k" * 91: 1}),
    "solution": set_top(solution="yard-safety"),
    "label": set_image(label="camera 1"),
    "png output image": set_image(base64Image=b64(PNG)),
    "jpeg with NUL padding": set_image(base64Image=b64(JPEG + b"\x00" * 3)),
    "input image png": set_image(inputBase64Image=b64(PNG)),
    "input image jpeg": set_image(inputBase64Image=b64(JPEG)),
    "objectDetections": set_image(objectDetections=[DETECTION, {**DETECTION, "x": 3, "confidence": 1}]),
    "classifications": set_image(classifications=[{"class": "ok", "confidence": 0.0}]),
    "instanceSegmentations 3 points": set_image(instanceSegmentations=[{**DETECTION, "points": POLYGON}]),
    "keypoints 1 point": set_image(keypoints=[{**DETECTION, "keypoints": [KEYPOINT]}]),
    "no images, no displayImagePosition": lambda body: body.update(images=[]) or body.pop("displayImagePosition"),
    "input image only": lambda body: body["images"][0].update(inputBase64Image=body["images"][0].pop("base64Image")),
}

# id -> (mutation, field the detail must start with)
REJECTED: dict[str, tuple[Mutation, str]] = {
    "schema unknown": (set_top(event_schema="bogus"), "event_schema"),
    "schema not a string": (set_top(event_schema=5), "event_schema"),
    "result not a choice": (set_data("quality_check", result="maybe"), "event_data.result"),
    "externalId 1001 chars": (set_data("quality_check", externalId="x" * 1001), "event_data.externalId"),
    "description 10001 chars": (set_data("safety_alert", description="d" * 10_001), "event_data.description"),
    "value 10001 chars": (set_data("custom", value="v" * 10_001), "event_data.value"),
    "alertType with a space": (set_data("safety_alert", alertType="fire alarm"), "event_data.alertType"),
    "severity not a choice": (set_data("safety_alert", severity="critical"), "event_data.severity"),
    "itemCount float": (set_data("inventory_count", itemCount=1.5), "event_data.itemCount"),
    "itemCount bool": (set_data("inventory_count", itemCount=True), "event_data.itemCount"),
    "itemCount negative": (set_data("inventory_count", itemCount=-1), "event_data.itemCount"),
    "itemCount string": (set_data("inventory_count", itemCount="3"), "event_data.itemCount"),
    "event_data null value": (set_data("inventory_count", location=None), "event_data.location"),
    "event_data key of another schema": (set_data("quality_check", location="A1"), "event_data.location"),
    "event_data unknown key": (set_data("custom", extra=1), "event_data.extra"),
    "feedback not a choice": (set_data("operator_feedback", feedback="maybe"), "event_data.feedback"),
    "event_data a list": (set_top(event_data=[]), "event_data"),
    "top-level unknown key": (set_top(extra=1), "extra"),
    "top-level misspelt key": (set_top(displayImagePostion=0), "displayImagePostion"),
    "missing inference_timestamp": (drop_top("inference_timestamp"), "inference_timestamp"),
    "missing event_schema": (drop_top("event_schema"), "event_schema"),
    "missing event_data": (drop_top("event_data"), "event_data"),
    "missing images": (drop_top("images"), "images"),
    "missing displayImagePosition": (drop_top("displayImagePosition"), "displayImagePosition"),
    "timestamp without offset": (set_top(inference_timestamp="2026-11-26T04:44:12"), "inference_timestamp"),
    "timestamp not ISO": (set_top(inference_timestamp="yesterday"), "inference_timestamp"),
    "timestamp a number": (set_top(inference_timestamp=1_700_000_000), "inference_timestamp"),
    "displayImagePosition 1": (set_top(displayImagePosition=1), "displayImagePosition"),
    "displayImagePosition bool": (set_top(displayImagePosition=False), "displayImagePosition"),
    "displayImagePosition float": (set_top(displayImagePosition=0.0), "displayImagePosition"),
    "displayImagePosition string": (set_top(displayImagePosition="0"), "displayImagePosition"),
    "metadata null": (set_top(custom_metadata=None), "custom_metadata"),
    "metadata a list": (set_top(custom_metadata=[]), "custom_metadata"),
    "metadata 101 keys": (set_top(custom_metadata=metadata(101)), "custom_metadata"),
    "metadata nested": (set_top(custom_metadata={"a": {"b": 1}}), "custom_metadata['a']"),
    "metadata null value": (set_top(custom_metadata={"a": None}), "custom_metadata['a']"),
    "metadata list value": (set_top(custom_metadata={"a": [1]}), "custom_metadata['a']"),
    "metadata value 1001 chars": (set_top(custom_metadata={"a": "x" * 1001}), "custom_metadata['a']"),
    "metadata key bad char": (set_top(custom_metadata={"a.b": 1}), "custom_metadata key"),
    "metadata key 101 chars": (set_top(custom_metadata={"k" * 101: 1}), "custom_metadata key"),
    "solution null": (set_top(solution=None), "solution"),
    "solution a number": (set_top(solution=5), "solution"),
    "solution 1001 chars": (set_top(solution="s" * 1001), "solution"),
    "images empty with a displayImagePosition": (set_top(images=[]), "images"),
    "images two entries": (set_top(images=[{"base64Image": b64(JPEG)}] * 2), "images"),
    "images an object": (set_top(images={"base64Image": b64(JPEG)}), "images"),
    "image entry a string": (set_top(images=[b64(JPEG)]), "images[0]"),
    "image entry unknown key": (set_image(imageUrl="http://x"), "images[0].imageUrl"),
    "image entry without an image": (lambda body: body["images"][0].clear(), "images[0]"),
    "image entry with only a label": (set_top(images=[{"label": "x"}]), "images[0]"),
    "no images and a displayImagePosition 0": (set_top(images=[], displayImagePosition=0), "images"),
    "label a number": (set_image(label=5), "images[0].label"),
    "base64 data: prefix": (set_image(base64Image="data:image/jpeg;base64," + b64(JPEG)), "images[0].base64Image"),
    "base64 line breaks": (
        set_image(base64Image=base64.encodebytes(JPEG).decode().rstrip("\n") + "\n"),
        "images[0].base64Image",
    ),
    "base64 unpadded": (drop_padding, "images[0].base64Image"),
    "base64 url-safe alphabet": (set_image(base64Image="-_-_"), "images[0].base64Image"),
    "base64 bad characters": (set_image(base64Image="!!!!"), "images[0].base64Image"),
    "base64 a number": (set_image(base64Image=5), "images[0].base64Image"),
    "base64 empty": (set_image(base64Image=""), "images[0].base64Image"),
    "not an image": (set_image(base64Image=b64(b"hello world!")), "images[0].base64Image"),
    "gif": (set_image(base64Image=b64(b"GIF89a" + b"\x00" * 30)), "images[0].base64Image"),
    "truncated jpeg": (set_image(base64Image=b64(JPEG[: len(JPEG) // 2])), "images[0].base64Image"),
    "jpeg magic then garbage": (set_image(base64Image=b64(JPEG[:4] + b"\x00" * 200)), "images[0].base64Image"),
    "truncated png": (set_image(base64Image=b64(PNG[:-5])), "images[0].base64Image"),
    "png signature only": (set_image(base64Image=b64(PNG[:8])), "images[0].base64Image"),
    "input image not an image": (set_image(inputBase64Image=b64(b"plain text")), "images[0].inputBase64Image"),
    "input image null": (set_image(inputBase64Image=None), "images[0].inputBase64Image"),
    "objectDetections empty": (set_image(objectDetections=[]), "images[0].objectDetections"),
    "objectDetections an object": (set_image(objectDetections=DETECTION), "images[0].objectDetections"),
    "detection unknown key": (
        set_image(objectDetections=[{**DETECTION, "label": "x"}]),
        "images[0].objectDetections[0].label",
    ),
    "detection missing key": (
        set_image(objectDetections=[{k: v for k, v in DETECTION.items() if k != "confidence"}]),
        "images[0].objectDetections[0].confidence",
    ),
    "detection bool coordinate": (
        set_image(objectDetections=[{**DETECTION, "x": True}]),
        "images[0].objectDetections[0].x",
    ),
    "detection string coordinate": (
        set_image(objectDetections=[{**DETECTION, "width": "4"}]),
        "images[0].objectDetections[0].width",
    ),
    "detection null confidence": (
        set_image(objectDetections=[{**DETECTION, "confidence": None}]),
        "images[0].objectDetections[0].confidence",
    ),
    "detection class a number": (
        set_image(objectDetections=[{**DETECTION, "class": 3}]),
        "images[0].objectDetections[0].class",
    ),
    "detection a list": (set_image(objectDetections=[[1, 2]]), "images[0].objectDetections[0]"),
    "classification with a box key": (
        set_image(classifications=[{"class": "ok", "confidence": 0.5, "x": 1.0}]),
        "images[0].classifications[0].x",
    ),
    "classification string confidence": (
        set_image(classifications=[{"class": "ok", "confidence": "high"}]),
        "images[0].classifications[0].confidence",
    ),
    "segmentation 2 points": (
        set_image(instanceSegmentations=[{**DETECTION, "points": POLYGON[:2]}]),
        "images[0].instanceSegmentations[0].points",
    ),
    "segmentation point with 3 coordinates": (
        set_image(instanceSegmentations=[{**DETECTION, "points": [[1.0, 2.0, 3.0], *POLYGON]}]),
        "images[0].instanceSegmentations[0].points[0]",
    ),
    "segmentation point not numeric": (
        set_image(instanceSegmentations=[{**DETECTION, "points": [["a", 1.0], *POLYGON]}]),
        "images[0].instanceSegmentations[0].points[0]",
    ),
    "segmentation without points": (
        set_image(instanceSegmentations=[DETECTION]),
        "images[0].instanceSegmentations[0].points",
    ),
    "keypoints none": (
        set_image(keypoints=[{**DETECTION, "keypoints": []}]),
        "images[0].keypoints[0].keypoints",
    ),
    "keypoint unknown key": (
        set_image(keypoints=[{**DETECTION, "keypoints": [{**KEYPOINT, "name": "nose"}]}]),
        "images[0].keypoints[0].keypoints[0].name",
    ),
    "keypoint float id": (
        set_image(keypoints=[{**DETECTION, "keypoints": [{**KEYPOINT, "id": 1.5}]}]),
        "images[0].keypoints[0].keypoints[0].id",
    ),
    "keypoint bool id": (
        set_image(keypoints=[{**DETECTION, "keypoints": [{**KEYPOINT, "id": True}]}]),
        "images[0].keypoints[0].keypoints[0].id",
    ),
    "keypoint null x": (
        set_image(keypoints=[{**DETECTION, "keypoints": [{**KEYPOINT, "x": None}]}]),
        "images[0].keypoints[0].keypoints[0].x",
    ),
}


@pytest.mark.parametrize("mutate", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_valid_body_is_stored(service: ReferenceService, mutate: Mutation) -> None:
    body = valid_body()
    mutate(body)
    reply = post_event(service, body)
    assert reply.status == 201, reply.body
    event_id = reply.json()["id"]
    assert isinstance(event_id, str) and event_id
    assert service.get_event(event_id) is not None


@pytest.mark.parametrize(("mutate", "field"), REJECTED.values(), ids=REJECTED.keys())
def test_invalid_body_is_422_naming_the_field(service: ReferenceService, mutate: Mutation, field: str) -> None:
    body = valid_body()
    mutate(body)
    before = service.stored_count()
    reply = post_event(service, body)
    assert reply.status == 422, reply.body
    assert reply.json()["detail"].startswith(f"{field}: ")
    assert service.stored_count() == before


def test_422_detail_names_value_and_rule(service: ReferenceService) -> None:
    reply = post_event(service, valid_body(event_data={"result": "maybe"}))
    assert reply.json() == {"detail": "event_data.result: 'maybe' must be one of pass, fail"}
    reply = post_event(service, valid_body(event_data={"externalId": "x" * 1001}))
    assert "at most 1000 characters (got 1001)" in reply.json()["detail"]


def test_validate_body_keeps_annotations_and_decodes_images() -> None:
    entry = {"base64Image": b64(JPEG), "inputBase64Image": b64(PNG), "label": "l", "objectDetections": [DETECTION]}
    event = validate_body(valid_body(images=[entry], custom_metadata={"a": 1}))
    assert event.output_image.data == JPEG and event.output_image.content_type == "image/jpeg"
    assert event.input_image is not None and event.input_image.content_type == "image/png"
    assert event.image_details == {"label": "l", "objectDetections": [DETECTION]}
    assert event.custom_metadata == {"a": 1} and event.solution is None


# --- other request errors ------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"", b"[1, 2]", b'"a string"', b"null", b'{"a": NaN}', b'{"a": 1e999}', b"\xff\xfe{}"],
    ids=["text", "empty", "array", "string", "null", "NaN", "infinity", "invalid utf-8"],
)
def test_body_not_a_json_object_is_400(service: ReferenceService, raw: bytes) -> None:
    reply = post_event(service, raw)
    assert reply.status == 400
    assert reply.json()["detail"]


def test_wrong_content_type_is_415(service: ReferenceService) -> None:
    data = json.dumps(valid_body()).encode()
    reply = request("POST", f"{service.url}/v2/events", data, {"Content-Type": "text/plain"})
    assert reply.status == 415
    assert "application/json" in reply.json()["detail"]


def test_content_type_with_charset_is_accepted(service: ReferenceService) -> None:
    reply = post_event(service, valid_body(), {"Content-Type": "application/json; charset=utf-8"})
    assert reply.status == 201


def test_body_over_the_limit_is_413(make_service: Callable[..., ReferenceService]) -> None:
    service = make_service(max_body_bytes=4096)
    assert post_event(service, valid_body()).status == 201
    big = valid_body(images=[{"base64Image": b64(JPEG), "label": "x" * 5000}])
    reply = post_event(service, big)
    assert reply.status == 413
    assert "4096" in reply.json()["detail"]
    # Without Content-Length (chunked) the limit is enforced while reading.
    data = json.dumps(big).encode()
    chunks = [data[index : index + 1000] for index in range(0, len(data), 1000)]
    reply = request("POST", f"{service.url}/v2/events", chunks, {"Content-Type": "application/json"})
    assert reply.status == 413
    assert service.stored_count() == 1


def test_idempotency_key_too_long_is_400(service: ReferenceService) -> None:
    reply = post_event(service, valid_body(), {"Idempotency-Key": "k" * 256})
    assert reply.status == 400
    assert "Idempotency-Key" in reply.json()["detail"]


# --- authentication ------------------------------------------------------------


def test_api_key(make_service: Callable[..., ReferenceService]) -> None:
    service = make_service(api_key="s3cret")
    missing = post_event(service, valid_body())
    assert missing.status == 401 and "X-API-Key" in missing.json()["detail"]
    wrong = post_event(service, valid_body(), {"X-API-Key": "s3cret-not"})
    assert wrong.status == 401 and wrong.json()["detail"]
    assert get(service, "/v2/events").status == 401
    assert service.stored_count() == 0

    right = post_event(service, valid_body(), {"X-API-Key": "s3cret"})
    assert right.status == 201
    assert get(service, "/v2/events", {"X-API-Key": "s3cret"}).json()["total"] == 1
    assert get(service, "/healthz").status == 200


def test_no_api_key_configured_ignores_the_header(service: ReferenceService) -> None:
    assert post_event(service, valid_body(), {"X-API-Key": "anything"}).status == 201


# --- capacity and faults -------------------------------------------------------


def test_capacity_zero_is_always_529(make_service: Callable[..., ReferenceService]) -> None:
    service = make_service(capacity=0)
    reply = post_event(service, valid_body())
    assert reply.status == 529
    assert reply.json()["detail"].startswith("service at capacity")
    assert service.stored_count() == 0


def test_529_while_the_only_write_slot_is_busy(make_service: Callable[..., ReferenceService]) -> None:
    service = make_service(capacity=1, faults=Faults(latency=1.0))
    with ThreadPoolExecutor(max_workers=1) as pool:
        slow = pool.submit(post_event, service, valid_body())
        time.sleep(0.3)
        busy = post_event(service, valid_body())
        assert busy.status == 529
        assert "capacity 1" in busy.json()["detail"]
        assert slow.result(timeout=TIMEOUT).status == 201
    assert service.stored_count() == 1


@pytest.mark.parametrize("status", [503, 529])
def test_injected_errors(make_service: Callable[..., ReferenceService], status: int) -> None:
    service = make_service(faults=Faults(error_rate=1.0, error_status=status, error_detail="down for a test"))
    for _ in range(3):
        reply = post_event(service, valid_body())
        assert (reply.status, reply.json()) == (status, {"detail": "down for a test"})
    assert service.stored_count() == 0


def test_seeded_error_rate_is_repeatable(make_service: Callable[..., ReferenceService]) -> None:
    def statuses(service: ReferenceService) -> list[int]:
        return [post_event(service, valid_body()).status for _ in range(16)]

    faults = Faults(error_rate=0.5, error_status=503, seed=7)
    first = statuses(make_service(faults=faults))
    assert set(first) == {201, 503}
    assert statuses(make_service(faults=faults)) == first


def test_dropped_connection_gets_no_answer_and_stores_nothing(make_service: Callable[..., ReferenceService]) -> None:
    service = make_service(faults=Faults(drop_rate=1.0))
    big = valid_body(images=[{"base64Image": b64(JPEG), "label": "x" * 300_000}])
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        post_event(service, big)
    assert service.stored_count() == 0
    service.set_faults(None)
    assert post_event(service, valid_body()).status == 201


def test_faults_validate_their_settings() -> None:
    for bad in (
        {"latency": -1.0},
        {"error_rate": 1.5},
        {"drop_rate": -0.1},
        {"error_rate": 0.6, "drop_rate": 0.6},
        {"error_status": 200},
    ):
        with pytest.raises(ValueError):
            Faults(**bad)


# --- idempotency ---------------------------------------------------------------


def test_repeated_idempotency_key_returns_the_original_id(make_service: Callable[..., ReferenceService]) -> None:
    service = make_service()
    first = post_event(service, valid_body(), {"Idempotency-Key": "key-1"})
    again = post_event(service, valid_body(event_data={"result": "fail"}), {"Idempotency-Key": "key-1"})
    assert first.status == again.status == 201
    assert again.json()["id"] == first.json()["id"]
    assert service.stored_count() == 1
    event = service.get_event(first.json()["id"])
    assert event is not None
    assert event["event_data"] == {"result": "pass"} and event["idempotency_key"] == "key-1"

    other = post_event(service, valid_body(), {"Idempotency-Key": "key-2"})
    assert other.json()["id"] != first.json()["id"]
    assert service.stored_count() == 2


def test_concurrent_duplicates_store_one_event(make_service: Callable[..., ReferenceService]) -> None:
    service = make_service()
    start = threading.Barrier(8, timeout=TIMEOUT)

    def send(_: int) -> Reply:
        start.wait()
        return post_event(service, valid_body(), {"Idempotency-Key": "same"})

    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(send, range(8), timeout=TIMEOUT))
    assert {reply.status for reply in replies} == {201}
    assert len({reply.json()["id"] for reply in replies}) == 1
    assert service.stored_count() == 1


def test_duplicates_in_one_batch_store_one_event(tmp_path: Any) -> None:
    event = validate_body(valid_body())
    store = EventStore(tmp_path)
    try:
        results = store.add([(event, "k"), (event, None), (event, "k")])
        assert results[0][1] and results[1][1] and not results[2][1]
        assert results[2][0] == results[0][0]
        assert store.add([(event, "k")]) == [(results[0][0], False)]
        assert store.count() == 2
    finally:
        store.close()


# --- reading back --------------------------------------------------------------


def test_listing_order_paging_and_filter(make_service: Callable[..., ReferenceService]) -> None:
    service = make_service()
    schemas = ["quality_check", "custom", "quality_check", "safety_alert", "quality_check"]
    ids = [post_event(service, valid_body(event_schema=schema, event_data={})).json()["id"] for schema in schemas]
    newest_first = ids[::-1]

    page = get(service, "/v2/events").json()
    assert page["total"] == 5
    assert [event["id"] for event in page["events"]] == newest_first
    assert [event["id"] for event in get(service, "/v2/events?limit=2").json()["events"]] == newest_first[:2]
    second = get(service, "/v2/events?limit=2&offset=2").json()
    assert [event["id"] for event in second["events"]] == newest_first[2:4] and second["total"] == 5
    assert get(service, "/v2/events?offset=10").json() == {"events": [], "total": 5}

    filtered = get(service, "/v2/events?event_schema=quality_check").json()
    assert filtered["total"] == 3
    assert [event["id"] for event in filtered["events"]] == [ids[4], ids[2], ids[0]]
    assert get(service, "/v2/events?event_schema=operator_feedback").json() == {"events": [], "total": 0}
    assert [event["id"] for event in service.list_events(event_schema="custom")] == [ids[1]]


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=ten", "offset=-1"])
def test_bad_listing_parameters_are_400(service: ReferenceService, query: str) -> None:
    reply = get(service, f"/v2/events?{query}")
    assert reply.status == 400
    assert query.split("=")[0] in reply.json()["detail"]


def test_get_event_and_images_round_trip(make_service: Callable[..., ReferenceService]) -> None:
    service = make_service()
    entry = {
        "base64Image": b64(JPEG),
        "inputBase64Image": b64(PNG),
        "label": "cam",
        "objectDetections": [DETECTION],
        "keypoints": [{**DETECTION, "keypoints": [KEYPOINT]}],
    }
    body = valid_body(
        event_schema="safety_alert",
        event_data={"alertType": "fall", "severity": "low"},
        images=[entry],
        custom_metadata={"line": "A", "shift": 2},
        solution="yard",
    )
    event_id = post_event(service, body).json()["id"]

    event = get(service, f"/v2/events/{event_id}").json()
    assert event == service.get_event(event_id)
    assert "base64Image" not in json.dumps(event)
    assert {key: event[key] for key in body if key != "images"} == {k: v for k, v in body.items() if k != "images"}
    assert event["id"] == event_id and event["idempotency_key"] is None and event["received_at"]
    image = event["images"][0]
    assert image == {
        "label": "cam",
        "objectDetections": [DETECTION],
        "keypoints": [{**DETECTION, "keypoints": [KEYPOINT]}],
        "outputImageUrl": f"/v2/events/{event_id}/images/output",
        "outputContentType": "image/jpeg",
        "inputImageUrl": f"/v2/events/{event_id}/images/input",
        "inputContentType": "image/png",
    }

    output = get(service, image["outputImageUrl"])
    assert (output.status, output.body, output.headers["Content-Type"]) == (200, JPEG, "image/jpeg")
    original = get(service, image["inputImageUrl"])
    assert (original.status, original.body, original.headers["Content-Type"]) == (200, PNG, "image/png")
    assert service.get_image(event_id, "input") == PNG


def test_absent_things_are_404(make_service: Callable[..., ReferenceService]) -> None:
    service = make_service()
    event_id = post_event(service, valid_body()).json()["id"]
    event = get(service, f"/v2/events/{event_id}").json()
    assert event["images"][0]["inputImageUrl"] is None
    assert "custom_metadata" not in event and "solution" not in event
    for path in (
        "/v2/events/no-such-id",
        "/v2/events/no-such-id/images/output",
        f"/v2/events/{event_id}/images/input",
        "/v2/nothing-here",
    ):
        reply = get(service, path)
        assert reply.status == 404, path
        assert reply.json()["detail"]
    assert service.get_event("no-such-id") is None


def test_wrong_method_is_405_json(service: ReferenceService) -> None:
    reply = request("POST", f"{service.url}/healthz", b"{}")
    assert reply.status == 405
    assert reply.json()["detail"]


def test_healthz_and_default_bind(service: ReferenceService) -> None:
    assert service.url.startswith("http://127.0.0.1:")
    reply = get(service, "/healthz")
    assert (reply.status, reply.json()) == (200, {"status": "ok"})


def test_start_fails_loudly_when_the_port_is_taken(tmp_path: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        service = ReferenceService(tmp_path, port=taken.getsockname()[1])
        with pytest.raises(OSError):
            service.start()
    service.stop()  # harmless after a failed start


def test_concurrent_posts_all_stored_with_distinct_ids(make_service: Callable[..., ReferenceService]) -> None:
    service = make_service()
    with ThreadPoolExecutor(max_workers=8) as pool:
        replies = list(pool.map(lambda _: post_event(service, valid_body()), range(24), timeout=TIMEOUT))
    assert {reply.status for reply in replies} == {201}
    assert len({reply.json()["id"] for reply in replies}) == 24
    assert service.stored_count() == 24
