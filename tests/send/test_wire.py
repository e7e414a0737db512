"""The v2 request: URL, headers, and a body that stdlib json reads back exactly."""

from __future__ import annotations

import base64
import json
import os
import threading
import uuid
from datetime import datetime

import numpy as np
import pytest
import simplejpeg
import supervision as sv
from hypothesis import given, settings
from hypothesis import strategies as st

import fastsend.events as events
import fastsend.send.encoding as encoding
import fastsend.send.prepare as prepare
from fastsend import Event, JpegOptions, ValidationError, prepare_block_event, prepare_event
from fastsend.imaging.jpeg import encode_jpeg
from fastsend.send.encoding import render_body
from fastsend.send.wire import Endpoint, Request, check_idempotency_key, events_url, request_headers

# Python 3.12 and later warn at every fork of a process that runs threads. Forking while a writer's threads
# run is the case under test: fastsend's at-fork handlers give the child fresh locks, threads and key bytes.
FORK_WITH_THREADS = "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"

# Every kind of character JSON must escape or carry: quote, backslash, controls, non-ASCII, emoji.
NASTY = 'q"uote \\back\\slash \\u0041 \x00\x01\x1f\x7f\n\r\t ünï 日本語 😀👍🏽 \u2028\u2029 </script>'
# Metadata keys are limited to [A-Za-z0-9_ -]: the nastiest a key may be.
NASTY_KEY = "a key-with_ all 09"

TOP_LEVEL_KEYS = {"inference_timestamp", "event_schema", "event_data", "images", "displayImagePosition"}
PROPERTY_JPEG = simplejpeg.encode_jpeg(np.zeros((8, 8, 3), np.uint8), colorspace="BGR")


def body_of(chunks) -> dict:
    return json.loads(b"".join(chunks))  # strict: raw control characters in strings would fail


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture
def jpeg_bytes(make_frame) -> bytes:
    return simplejpeg.encode_jpeg(make_frame(24, 32), quality=80, colorspace="BGR")


def render(prepared, options: JpegOptions = JpegOptions()):
    return render_body(prepared, options)


# ---------------------------------------------------------------- the body


def test_body_with_nasty_text_everywhere_parses_to_the_expected_dict(jpeg_bytes, make_frame):
    event = Event.safety_alert(
        alert_type="no_helmet",
        severity="high",
        description=NASTY,
        external_id=NASTY,
        custom_metadata={NASTY_KEY: NASTY, "n": 3, "f": 0.25, "b": True, "neg": -7, "big": 2**64 - 1},
        solution=NASTY,
    )
    input_frame = make_frame(30, 40, seed=3)
    points = [{"x": 1.0, "y": 2.0}, {"x": 5.5, "y": 2.0}, {"x": 3.0, "y": 7.25}]
    prepared = prepare_event(
        event,
        jpeg_bytes,
        input_image=input_frame,
        label=NASTY,
        object_detections={
            "predictions": [{"x": 10.5, "y": 20, "width": 4, "height": 6, "confidence": 0.9, "class": NASTY}]
        },
        classifications={"class_name": [NASTY, "plain"], "confidence": [0.75, 0.25]},
        instance_segmentations=[
            {"x": 3, "y": 4, "width": 4.5, "height": 5.25, "confidence": 0.5, "class": NASTY, "points": points}
        ],
        keypoint_detections=[
            {
                "x": 8,
                "y": 9,
                "width": 2,
                "height": 2,
                "confidence": 0.125,
                "class": NASTY,
                "keypoints": [{"x": 7.5, "y": 8.5, "class_id": 4}],
            }
        ],
    )
    expected = {
        "inference_timestamp": event.inference_timestamp,
        "event_schema": "safety_alert",
        "event_data": {"alertType": "no_helmet", "severity": "high", "description": NASTY, "externalId": NASTY},
        "images": [
            {
                "base64Image": b64(jpeg_bytes),
                "inputBase64Image": b64(encode_jpeg(input_frame)),
                "label": NASTY,
                "objectDetections": [
                    {"class": NASTY, "x": 10.5, "y": 20.0, "width": 4.0, "height": 6.0, "confidence": 0.9}
                ],
                "classifications": [{"class": NASTY, "confidence": 0.75}, {"class": "plain", "confidence": 0.25}],
                "instanceSegmentations": [
                    {
                        "class": NASTY,
                        "x": 3.0,
                        "y": 4.0,
                        "width": 4.5,
                        "height": 5.25,
                        "confidence": 0.5,
                        "points": [[1.0, 2.0], [5.5, 2.0], [3.0, 7.25]],
                    }
                ],
                "keypoints": [
                    {
                        "class": NASTY,
                        "x": 8.0,
                        "y": 9.0,
                        "width": 2.0,
                        "height": 2.0,
                        "confidence": 0.125,
                        "keypoints": [{"id": 4, "x": 7.5, "y": 8.5}],
                    }
                ],
            }
        ],
        "displayImagePosition": 0,
        "custom_metadata": {NASTY_KEY: NASTY, "n": 3, "f": 0.25, "b": True, "neg": -7, "big": 2**64 - 1},
        "solution": NASTY,
    }
    body = body_of(render(prepared))
    assert body == expected
    assert body["custom_metadata"]["b"] is True  # a JSON true, not 1
    assert type(body["custom_metadata"]["n"]) is int and type(body["displayImagePosition"]) is int


@pytest.mark.parametrize(
    "event, event_data",
    [
        (Event.quality_check(result="fail", external_id=NASTY), {"result": "fail", "externalId": NASTY}),
        (
            Event.inventory_count(location=NASTY, item_count=np.int64(3), item_type=NASTY),
            {"location": NASTY, "itemCount": 3, "itemType": NASTY},
        ),
        (Event.custom(value=NASTY), {"value": NASTY}),
        (
            Event.operator_feedback(related_event_id=NASTY, feedback="correct"),
            {"relatedEventId": NASTY, "feedback": "correct"},
        ),
        (Event.safety_alert(), {}),
    ],
    ids=["quality_check", "inventory_count", "custom", "operator_feedback", "empty"],
)
def test_minimal_body_per_schema_has_exactly_the_spec_keys(jpeg_bytes, event, event_data):
    body = body_of(render(prepare_event(event, jpeg_bytes)))
    assert body == {
        "inference_timestamp": event.inference_timestamp,
        "event_schema": event.schema,
        "event_data": event_data,
        "images": [{"base64Image": b64(jpeg_bytes)}],
        "displayImagePosition": 0,
    }
    assert set(body) == TOP_LEVEL_KEYS


def test_empty_metadata_is_sent_and_absent_metadata_is_not(jpeg_bytes):
    with_empty = body_of(render(prepare_event(Event.custom(custom_metadata={}), jpeg_bytes)))
    assert with_empty["custom_metadata"] == {}
    assert set(with_empty) == TOP_LEVEL_KEYS | {"custom_metadata"}
    without = body_of(render(prepare_event(Event.custom(custom_metadata=None), jpeg_bytes)))
    assert "custom_metadata" not in without


def test_empty_annotation_lists_are_omitted(jpeg_bytes):
    line_mask = np.zeros((1, 20, 20), bool)
    line_mask[0, 5, 2:9] = True  # its contour has 2 points: dropped, leaving an empty list
    prepared = prepare_event(
        Event.custom(),
        jpeg_bytes,
        label="",
        object_detections=sv.Detections.empty(),
        classifications={"class_name": []},
        instance_segmentations=sv.Detections(xyxy=np.array([[2, 5, 9, 6]], np.float32), mask=line_mask),
        keypoint_detections={"predictions": []},
    )
    assert body_of(render(prepared))["images"] == [{"base64Image": b64(jpeg_bytes), "label": ""}]


def test_the_timestamp_is_the_events_not_the_send_time(jpeg_bytes, monkeypatch):
    event = Event.custom(value="v")

    class Later(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2099, 1, 1, tzinfo=tz)

    monkeypatch.setattr(events, "datetime", Later)  # any re-stamping from here on would say 2099
    assert Event.custom().inference_timestamp.startswith("2099")
    prepared = prepare_event(event, jpeg_bytes)
    for _ in range(2):  # rendering again, as a retry would, changes nothing
        assert body_of(render(prepared))["inference_timestamp"] == event.inference_timestamp


@settings(max_examples=60, deadline=None)
@given(text=st.text(max_size=300), label=st.text(max_size=50), name=st.text(max_size=50))
def test_property_any_text_round_trips(text, label, name):
    event = Event.custom(value=text, external_id=text[:1000], custom_metadata={"v": text})
    prepared = prepare_event(
        event, PROPERTY_JPEG, label=label, classifications={"class_name": [name], "confidence": [1.0]}
    )
    body = body_of(render(prepared))
    assert body["event_data"] == {"value": text, "externalId": text[:1000]}
    assert body["custom_metadata"] == {"v": text}
    assert body["images"][0]["label"] == label
    assert body["images"][0]["classifications"] == [{"class": name, "confidence": 1.0}]


# ---------------------------------------------------------------- images and chunks


def test_raw_frames_are_encoded_with_the_options(make_frame):
    frame = make_frame(40, 56)
    options = JpegOptions(quality=60, subsampling="444")
    body = body_of(render(prepare_event(Event.custom(), frame), options))
    assert body["images"][0]["base64Image"] == b64(encode_jpeg(frame, "BGR", 60, "444"))


def test_rgb_frames_are_encoded_as_rgb(make_frame):
    rgb = make_frame(40, 56)
    body = body_of(render(prepare_event(Event.custom(), rgb, color="rgb")))
    assert body["images"][0]["base64Image"] == b64(encode_jpeg(np.ascontiguousarray(rgb[:, :, ::-1])))


@pytest.fixture
def count_encodes(monkeypatch):
    calls = []
    real = encoding.to_base64

    def counting(source, options):
        calls.append(source)
        return real(source, options)

    monkeypatch.setattr(encoding, "to_base64", counting)
    return calls


def test_one_image_as_output_and_input_is_encoded_once(make_frame, count_encodes):
    frame = make_frame(40, 56)
    prepared = prepare_event(Event.custom(), frame, input_image=frame)
    assert prepared.input is prepared.output
    image = body_of(render(prepared))["images"][0]
    assert len(count_encodes) == 1
    assert image["base64Image"] == image["inputBase64Image"] == b64(encode_jpeg(frame))


def test_two_images_are_encoded_separately(make_frame, count_encodes):
    output, original = make_frame(40, 56, seed=1), make_frame(40, 56, seed=2)
    image = body_of(render(prepare_event(Event.custom(), output, input_image=original)))["images"][0]
    assert len(count_encodes) == 2
    assert image["base64Image"] == b64(encode_jpeg(output))
    assert image["inputBase64Image"] == b64(encode_jpeg(original))


def test_image_base64_is_its_own_chunk(make_frame, jpeg_bytes):
    original = make_frame(40, 56)
    prepared = prepare_event(Event.custom(value=NASTY), jpeg_bytes, input_image=original)
    chunks = render(prepared)
    assert all(type(chunk) is bytes for chunk in chunks)
    assert any(chunk is prepared.output.base64 for chunk in chunks)  # spliced as is, not copied
    input_b64 = base64.b64encode(encode_jpeg(original))
    assert input_b64 in chunks
    others = [chunk for chunk in chunks if chunk is not prepared.output.base64 and chunk != input_b64]
    assert len(others) == len(chunks) - 2
    assert not any(b64(jpeg_bytes).encode() in chunk or input_b64 in chunk for chunk in others)


def test_the_envelope_is_serialized_once_and_reused(jpeg_bytes):
    prepared = prepare_event(Event.custom(value="v"), jpeg_bytes)
    assert render(prepared) == render(prepared)
    assert render(prepared)[0] is prepared.envelope.head


# ---------------------------------------------------------------- what prepare_event refuses


def test_only_events_are_accepted(jpeg_bytes):
    with pytest.raises(ValidationError) as info:
        prepare_event({"event_schema": "custom"}, jpeg_bytes)
    assert info.value.field == "event"


@pytest.mark.parametrize("label", [5, b"bytes", "lone \ud800"])
def test_the_label_must_be_text_and_its_error_names_the_keyword_label(jpeg_bytes, label):
    with pytest.raises(ValidationError) as info:
        prepare_event(Event.custom(), jpeg_bytes, label=label)
    assert (info.value.field, info.value.wire_field, info.value.value) == ("label", "images[0].label", label)
    assert str(info.value).startswith("label (images[0].label): ")


def test_through_the_block_a_bad_label_is_named_image_label(jpeg_bytes):
    with pytest.raises(ValidationError) as info:
        prepare_block_event(event_schema="custom", output_image=jpeg_bytes, image_label=123)
    assert (info.value.field, info.value.wire_field) == ("image_label", "images[0].label")
    assert str(info.value) == "image_label (images[0].label): 123 must be a string, not int"


def test_bad_images_are_named(jpeg_bytes):
    with pytest.raises(ValidationError) as info:
        prepare_event(Event.custom(), np.zeros((4, 4), np.float32))
    assert info.value.field.startswith("image")  # prepare_event's own keyword
    with pytest.raises(ValidationError) as info:  # the block's keyword is output_image: its errors say so
        prepare_block_event(event_schema="custom", output_image=np.zeros((4, 4), np.float32))
    assert (info.value.field, info.value.wire_field) == ("output_image.dtype", None)
    with pytest.raises(ValidationError) as info:
        prepare_event(Event.custom(), jpeg_bytes, input_image=b"not an image")
    assert info.value.field == "input_image"


def test_a_class_name_json_cannot_carry_is_refused_at_prepare_time(jpeg_bytes):
    with pytest.raises(ValidationError) as info:
        prepare_event(Event.custom(), jpeg_bytes, classifications={"class_name": ["ok", "lone \ud800"]})
    assert info.value.field == "classifications[1].class"
    assert "must be valid Unicode" in str(info.value)


def test_every_event_gets_its_own_idempotency_key(jpeg_bytes):
    keys = {prepare_event(Event.custom(), jpeg_bytes).idempotency_key for _ in range(20)}
    assert len(keys) == 20
    assert all(str(uuid.UUID(key)) == key and uuid.UUID(key).version == 4 for key in keys)
    assert all(uuid.UUID(key).variant == uuid.RFC_4122 for key in keys)


def test_idempotency_keys_stay_unique_across_pool_refills_and_threads():
    # 16 bytes a key from 4 KiB blocks: 2,000 keys on 4 threads cross a refill several times each.
    keys: list[str] = []
    lock = threading.Lock()

    def make(count: int) -> None:
        made = [prepare.new_idempotency_key() for _ in range(count)]
        with lock:
            keys.extend(made)

    workers = [threading.Thread(target=make, args=(500,)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    assert len(keys) == len(set(keys)) == 2000


@pytest.mark.filterwarnings(FORK_WITH_THREADS)
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_never_repeats_its_parents_next_keys():
    prepare.new_idempotency_key()  # the parent's pool now holds the next 255 keys' bytes
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next keys, to the parent, then out at once
        os.close(read)
        os.write(write, ",".join(prepare.new_idempotency_key() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split(","))
    os.waitpid(pid, 0)
    parent = {prepare.new_idempotency_key() for _ in range(10)}
    assert len(child) == 10 and not child & parent


# ---------------------------------------------------------------- URL, headers, Request


@pytest.mark.parametrize(
    "base, url",
    [
        ("http://h:8001///", "http://h:8001/v2/events"),
        ("http://h:8001/", "http://h:8001/v2/events"),
        ("http://h:8001", "http://h:8001/v2/events"),
        ("https://events.example.com/prefix/", "https://events.example.com/prefix/v2/events"),
        (None, "http://localhost:8001/v2/events"),
        ("", "http://localhost:8001/v2/events"),
    ],
)
def test_events_url(base, url):
    assert events_url(base) == url


@pytest.mark.parametrize("base", ["localhost:8001", "ftp://h", "/v2", "h:8001///"])
def test_events_url_needs_http(base):
    with pytest.raises(ValidationError) as info:
        events_url(base)
    assert info.value.field == "url"


def test_headers_with_an_api_key():
    assert request_headers("k-1", "secret") == {
        "Content-Type": "application/json",
        "Idempotency-Key": "k-1",
        "X-API-Key": "secret",
    }


@pytest.mark.parametrize("api_key", [None, ""])
def test_headers_without_an_api_key_have_no_x_api_key(api_key):
    assert request_headers("k-2", api_key) == {"Content-Type": "application/json", "Idempotency-Key": "k-2"}


def test_request_size_is_the_body_length(jpeg_bytes, make_frame):
    prepared = prepare_event(Event.custom(value=NASTY), jpeg_bytes, input_image=make_frame())
    chunks = render(prepared)
    request = Request.of(prepared.idempotency_key, chunks)
    assert request.body() == b"".join(chunks)
    assert request.size == len(request.body()) == sum(map(len, chunks))
    assert request.chunks is chunks


def test_a_request_carries_no_url_and_no_key_the_endpoint_applies_both():
    request = Request.of("key-1", [b"{}"])
    assert {name for name in Request.__slots__} == {"idempotency_key", "chunks", "size"}
    post = Endpoint("http://h/v2/events", "secret").address(request)
    assert (post.url, post.body(), post.size) == ("http://h/v2/events", b"{}", 2)
    assert post.headers == {"Content-Type": "application/json", "Idempotency-Key": "key-1", "X-API-Key": "secret"}
    assert "X-API-Key" not in Endpoint("http://h/v2/events").address(request).headers


@pytest.mark.parametrize("key", ["a", "x" * 255, "!~", "3f2b-uuid-like"])
def test_idempotency_keys_the_contract_allows(key):
    assert check_idempotency_key(key) == key


@pytest.mark.parametrize(
    "key, rule",
    [("", "non-empty"), (None, "non-empty"), ("x" * 256, "longer than 255"), ("a\r\nX-Evil: 1", "printable ASCII"),
     ("with space", "printable ASCII"), ("caf\u00e9", "printable ASCII")],
)  # fmt: skip
def test_idempotency_keys_the_contract_refuses(key, rule):
    with pytest.raises(ValueError, match=rule):
        check_idempotency_key(key)


def test_the_api_key_never_shows_in_a_logged_endpoint_or_post():
    from fastsend.send.wire import Endpoint, Request

    endpoint = Endpoint("http://ingest:8001/v2/events", "s3cret-key")
    post = endpoint.address(Request.of("k", [b"{}"]))
    assert post.headers["X-API-Key"] == "s3cret-key"  # sent, but not shown
    assert "s3cret" not in repr(endpoint) and "s3cret" not in repr(post)
