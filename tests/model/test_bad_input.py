"""Bad input: hypothesis throws hostile values at every door of the client and the service.

The client's event model, image inputs and annotation converters either accept a
value — and then the body they build carries exactly that value and the
service's validation takes it — or raise ``ValidationError`` naming the field.
The service's ``validate_body`` accepts a body or raises ``ValidationError``
naming a field the body got wrong; over HTTP the service answers 201 or a 4xx
with ``{"detail": ...}``: never a 5xx, never a hang, and never an image file
on disk without its database row.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import functools
import json
import math
import re
import sqlite3
import string
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import requests
import simplejpeg
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fastsend import Event, EventWriter, EventWriterSink, JpegOptions, ValidationError, prepare_event
from fastsend.annotations import (
    classifications_to_wire,
    instance_segmentations_to_wire,
    keypoints_to_wire,
    object_detections_to_wire,
)
from fastsend.imaging.jpeg import EncodedImage, prepare_image
from fastsend.send.encoding import render_body
from fastsend.server import ReferenceService
from fastsend.server.validation import validate_body

pytestmark = [
    pytest.mark.timeout(120),
    # np.float16 of a large float32 is inf, on purpose; numpy says so each time.
    pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
]


def examples(count: int) -> settings:
    """Few enough examples for a shared 2-core machine; hangs are pytest-timeout's job, not a deadline's."""
    return settings(
        max_examples=count,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )


# ---------------------------------------------------------------- images and bodies


def smooth_frame(height: int, width: int, channels: int | None = 3) -> np.ndarray:
    """Gradients, so a JPEG round trip stays close to the pixels."""
    rows = np.linspace(0, 200, height)[:, None, None]
    cols = np.linspace(0, 200, width)[None, :, None]
    planes = np.arange(channels or 1)[None, None, :] * 20
    frame = ((rows + cols) / 2 + planes).astype(np.uint8)
    return frame[:, :, 0] if channels is None else frame


def make_png(width: int = 2, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x7f" * (3 * width) for _ in range(height))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


JPEG = simplejpeg.encode_jpeg(smooth_frame(16, 24), quality=90, colorspace="BGR")
PNG = make_png()
JPEG_EOI = b"\xff\xd9"
# Every cut before the last two bytes must then lose the end-of-image marker.
assert JPEG.find(JPEG_EOI) == len(JPEG) - 2


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


TIMESTAMP = "2026-11-26T04:44:12.123456+00:00"
DETECTION = {"class": "scratch", "x": 10.5, "y": 20.0, "width": 4.0, "height": 6.0, "confidence": 0.9}

FULL_BODY: dict[str, Any] = {
    "inference_timestamp": TIMESTAMP,
    "event_schema": "inventory_count",
    "event_data": {"location": "dock 4", "itemCount": 3, "itemType": "box", "externalId": "e-1"},
    "images": [
        {
            "base64Image": b64(JPEG),
            "inputBase64Image": b64(PNG),
            "label": "camera 1",
            "objectDetections": [DETECTION],
            "classifications": [{"class": "ok", "confidence": 0.5}],
            "instanceSegmentations": [dict(DETECTION, points=[[0.0, 0.0], [4.0, 0.0], [2.0, 3.0]])],
            "keypoints": [dict(DETECTION, keypoints=[{"id": 0, "x": 1.0, "y": 2.0}])],
        }
    ],
    "displayImagePosition": 0,
    "custom_metadata": {"line": "A", "count": 1, "ratio": 0.5, "ok": True},
    "solution": "s-1",
}
validate_body(FULL_BODY)  # the starting point of every mutation is valid


def outcome(call: Callable[[], Any]) -> tuple[Any, ValidationError | None]:
    """``(result, None)`` or ``(None, error)`` for a ValidationError; any other exception fails the test."""
    try:
        return call(), None
    except ValidationError as exc:
        assert isinstance(exc.field, str)
        shown = exc.field if exc.wire_field is None else f"{exc.field} ({exc.wire_field})"
        assert str(exc).startswith(f"{shown}: "), str(exc)
        return None, exc


DEFAULT_OPTIONS = JpegOptions()


def rendered(prepared: Any, options: JpegOptions = DEFAULT_OPTIONS) -> bytes:
    return b"".join(render_body(prepared, options))


def body_of(event: Event, image: Any = JPEG, **kwargs: Any) -> dict[str, Any]:
    """The body the client sends, parsed by stdlib json; the service must accept it too."""
    raw = rendered(prepare_event(event, image, **kwargs))
    validate_body(orjson.loads(raw))
    return json.loads(raw)


# ---------------------------------------------------------------- hostile values

NASTY_CHARS = [
    "\x00", "\x01", "\x1b", "\x1f", "\x7f", "\n", "\r", "\t", "\u2028", "\ufeff", "\ufffe",
    "\ud800", "\udbff", "\udc00", "\udfff", "😀", "\U0010ffff", "é", "ß", "İ", '"', "\\", "/",
    "-", "_", " ", "a", "Z", "9", ".", "[", "'",
]  # fmt: skip
CHARS = st.one_of(st.characters(), st.sampled_from(NASTY_CHARS))
SHORT_TEXT = st.text(CHARS, max_size=30)
NEAR_LIMITS = [1, 99, 100, 101, 999, 1000, 1001, 9_999, 10_000, 10_001, 100_000]
LONG_TEXT = st.builds(
    lambda char, size: char * size,
    st.sampled_from(["a", "é", "😀", "\x00", "-", "\ud800"]),
    st.sampled_from(NEAR_LIMITS),
)
TEXT = st.one_of(SHORT_TEXT, SHORT_TEXT, LONG_TEXT, SHORT_TEXT.map(np.str_))

NUMPY_SCALARS = st.one_of(
    st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]).flatmap(
        lambda kind: st.integers(int(np.iinfo(kind).min), int(np.iinfo(kind).max)).map(kind)
    ),
    st.sampled_from([np.float16, np.float32, np.float64]).flatmap(lambda kind: st.floats(width=32).map(kind)),
    st.booleans().map(np.bool_),
)
NUMBERS = st.one_of(
    st.integers(),
    st.sampled_from([-(2**63) - 1, -(2**63), -1, 0, 2**63, 2**64 - 1, 2**64, 10**30, 10**400]),
    st.floats(),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 3.0, 1e308]),
    st.booleans(),
    NUMPY_SCALARS,
)
OTHER = st.one_of(
    st.none(),
    st.binary(max_size=8),
    st.complex_numbers(max_magnitude=10),
    st.lists(st.integers(), max_size=2),
    st.tuples(st.integers()),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(np.array([1, 2])),
    st.just(object()),
)
ANYTHING = st.one_of(TEXT, NUMBERS, OTHER)


def plain(text: str) -> str:
    """The characters of a str subclass as a str (numpy's ``str(np.str_("a\\x00"))`` drops the NUL)."""
    return str.__str__(text)


def is_encodable(text: str) -> bool:
    return not any(0xD800 <= ord(char) <= 0xDFFF for char in text)


# ---------------------------------------------------------------- the rules, restated from the spec

ALERT_TYPE_CHARS = set(string.ascii_letters + string.digits + "_-")
METADATA_KEY_CHARS = ALERT_TYPE_CHARS | {" "}


def text_rule(max_chars: int | None = None) -> Callable[[Any], bool]:
    return lambda value: (
        isinstance(value, str) and is_encodable(value) and (max_chars is None or len(value) <= max_chars)
    )


def choice_rule(*choices: str) -> Callable[[Any], bool]:
    return lambda value: isinstance(value, str) and value in choices


def count_rule(value: Any) -> bool:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return False
    return 0 <= int(value) <= 2**64 - 1


RULES: dict[str, dict[str, Callable[[Any], bool]]] = {
    "quality_check": {"result": choice_rule("pass", "fail"), "externalId": text_rule(1000)},
    "inventory_count": {
        "location": text_rule(1000),
        "itemCount": count_rule,
        "itemType": text_rule(1000),
        "externalId": text_rule(1000),
    },
    "safety_alert": {
        "alertType": lambda value: text_rule(1000)(value) and bool(value) and set(value) <= ALERT_TYPE_CHARS,
        "severity": choice_rule("low", "medium", "high"),
        "description": text_rule(10_000),
        "externalId": text_rule(1000),
    },
    "custom": {"value": text_rule(10_000), "externalId": text_rule(1000)},
    "operator_feedback": {
        "relatedEventId": text_rule(1000),
        "feedback": choice_rule("correct", "incorrect", "inconclusive"),
    },
}
KEYWORDS = {  # constructor keyword -> wire name
    "external_id": "externalId",
    "item_count": "itemCount",
    "item_type": "itemType",
    "alert_type": "alertType",
    "related_event_id": "relatedEventId",
}
WIRE_TO_KEYWORD = {wire: keyword for keyword, wire in KEYWORDS.items()}
FIELDS = [(schema, wire) for schema, rules in RULES.items() for wire in rules]


def expected_data_error(schema: Any, data: Any) -> str | None:
    """The field a ValidationError must name, or None when ``(schema, data)`` is valid."""
    if not isinstance(schema, str) or schema not in RULES:
        return "event_schema"
    if not isinstance(data, Mapping):
        return "event_data"
    for key, value in data.items():
        rule = RULES[schema].get(key) if isinstance(key, str) else None
        if rule is None or not rule(value):
            return f"event_data.{key}"
    return None


def metadata_value(value: Any) -> tuple[bool, Any]:
    """(valid, the value as it must appear in the body)."""
    if isinstance(value, (bool, np.bool_)):
        return True, bool(value)
    if isinstance(value, (int, np.integer)):
        return -(2**63) <= int(value) <= 2**64 - 1, int(value)
    if isinstance(value, (float, np.floating)):
        return math.isfinite(float(value)), float(value)
    if isinstance(value, str):
        return len(value) <= 1000 and is_encodable(value), plain(value)
    return False, None


def expected_metadata_error(metadata: Any) -> str | None:
    if not isinstance(metadata, Mapping) or len(metadata) > 100:
        return "custom_metadata"
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or len(key) > 100 or not set(key) <= METADATA_KEY_CHARS:
            return "custom_metadata key"
        if not metadata_value(value)[0]:
            return f"custom_metadata[{key!r}]"
    return None


def same_json(got: Any, expected: Any) -> bool:
    """Equal and of the same JSON type (True is not 1, 1.0 is not 1)."""
    return type(got) is type(expected) and got == expected


# ---------------------------------------------------------------- the event model


@examples(200)
@given(
    field=st.sampled_from(FIELDS),
    value=st.one_of(ANYTHING, st.sampled_from(["pass", "fail", "low", "high", "correct", "PASS", "pass "])),
)
@example(field=("custom", "externalId"), value="x" * 1000)
@example(field=("custom", "externalId"), value="x" * 1001)
@example(field=("custom", "value"), value="\x00\ud800")
@example(field=("safety_alert", "alertType"), value="")
@example(field=("safety_alert", "alertType"), value="fire\n")
@example(field=("inventory_count", "itemCount"), value=2**64)
@example(field=("inventory_count", "itemCount"), value=np.uint64(2**64 - 1))
@example(field=("inventory_count", "itemCount"), value=True)
@example(field=("inventory_count", "itemCount"), value=3.0)
@example(field=("inventory_count", "itemCount"), value=-1)
def test_every_event_field_takes_exactly_what_its_rule_allows(field: tuple[str, str], value: Any) -> None:
    schema, wire = field
    constructor = getattr(Event, schema)
    event, error = outcome(lambda: constructor(**{WIRE_TO_KEYWORD.get(wire, wire): value}))
    if value is None:  # the constructors omit a field given as None
        assert error is None and wire not in event.data
        return
    if not RULES[schema][wire](value):
        assert error is not None, f"{value!r} accepted for {schema}.{wire}"
        assert (error.field, error.wire_field) == (WIRE_TO_KEYWORD.get(wire, wire), f"event_data.{wire}")
        return
    assert error is None, f"{value!r} refused for {schema}.{wire}: {error}"
    sent = body_of(event)["event_data"][wire]
    expected = int(value) if wire == "itemCount" else plain(value)
    assert same_json(sent, expected)


@examples(150)
@given(
    schema=st.one_of(st.sampled_from(list(RULES)), ANYTHING),
    data=st.one_of(
        st.dictionaries(
            st.one_of(st.sampled_from([wire for _, wire in FIELDS]), SHORT_TEXT, st.integers(), st.none()),
            ANYTHING,
            max_size=4,
        ),
        ANYTHING,
    ),
)
@example(schema=np.str_("custom"), data={np.str_("value"): np.str_("v\x00")})
def test_event_schema_and_data_are_checked_together(schema: Any, data: Any) -> None:
    expected = expected_data_error(schema, data)
    event, error = outcome(lambda: Event(schema, data))
    if expected is not None:
        assert error is not None and error.field == expected, (expected, error)
        return
    assert error is None, error
    body = body_of(event)
    assert body["event_schema"] == schema
    assert body["event_data"].keys() == data.keys()
    for key, value in data.items():
        assert same_json(body["event_data"][key], int(value) if key == "itemCount" else plain(value))


METADATA_KEYS = st.one_of(
    st.text(st.sampled_from(sorted(METADATA_KEY_CHARS)), min_size=1, max_size=12),
    SHORT_TEXT,
    st.sampled_from(["", "a" * 100, "a" * 101, "key.dot", "ключ", "tab\tkey", "nul\x00", "\ud800"]),
    st.integers(),
    st.none(),
    st.tuples(st.integers()),
    st.booleans(),
)
NESTED = st.recursive(
    st.one_of(NUMBERS, SHORT_TEXT, st.none()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
METADATA_VALUES = st.one_of(TEXT, NUMBERS, OTHER, NESTED)


def many_keys(count: int) -> dict[str, int]:
    return {f"key {index}": index for index in range(count)}


@examples(200)
@given(metadata=st.one_of(st.dictionaries(METADATA_KEYS, METADATA_VALUES, max_size=5), ANYTHING))
@example(metadata=many_keys(100))
@example(metadata=many_keys(101))
@example(metadata={"a": None})
@example(metadata={"a": {"b": 1}})
@example(metadata={"a": [1, 2]})
@example(metadata={"a": math.nan})
@example(metadata={"a": 2**64})
@example(metadata={"a": -(2**63) - 1})
@example(metadata={"a": np.float32(math.inf)})
@example(metadata={"a": "x" * 1001})
@example(metadata={1: "one"})
@example(metadata={np.str_("line"): np.str_("A\x00")})
@example(metadata={})
def test_custom_metadata_is_flat_bounded_and_named_on_failure(metadata: Any) -> None:
    expected = expected_metadata_error(metadata)
    event, error = outcome(lambda: Event.custom(custom_metadata=metadata))
    if metadata is None:
        assert error is None and "custom_metadata" not in body_of(event)
        return
    if expected is not None:
        assert error is not None and error.field == expected, (expected, error)
        return
    assert error is None, error
    sent = body_of(event)["custom_metadata"]
    assert list(sent) == list(metadata)
    for key, value in metadata.items():
        assert same_json(sent[key], metadata_value(value)[1]), (key, value, sent[key])


FIXED_OFFSETS = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59))
)
TIMESTAMPS = st.one_of(
    st.datetimes(timezones=st.one_of(FIXED_OFFSETS, st.just(timezone.utc))),
    st.datetimes(),  # naive
    st.datetimes(timezones=FIXED_OFFSETS).map(lambda moment: moment.isoformat()),
    st.datetimes().map(lambda moment: moment.isoformat()),
    st.sampled_from(
        ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-11-26T04:44:12Z", "2026-13-01T00:00:00+00:00"]
    ),
    TEXT,
    NUMBERS,
    OTHER,
)


@examples(150)
@given(moment=TIMESTAMPS)
@example(moment=datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))))
@example(moment=datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))))
def test_inference_timestamp_is_a_real_utc_moment_or_refused(moment: Any) -> None:
    event, error = outcome(lambda: Event.custom(inference_timestamp=moment))
    if error is not None:
        assert error.field == "inference_timestamp"
        assert moment is not None, "None means now"
        if isinstance(moment, datetime) and moment.tzinfo is not None:
            with pytest.raises(OverflowError):  # the only reason to refuse an aware datetime
                moment.astimezone(timezone.utc)
        return
    assert moment is None or isinstance(moment, (datetime, str)), f"{moment!r} accepted as a timestamp"
    sent = datetime.fromisoformat(body_of(event)["inference_timestamp"])
    assert sent.utcoffset() == timedelta(0)
    if moment is not None:
        # The strings here are isoformat()'s or the samples above, which 3.10's fromisoformat reads once Z is spelt out.
        given_moment = moment if isinstance(moment, datetime) else datetime.fromisoformat(moment.replace("Z", "+00:00"))
        assert given_moment.tzinfo is not None and sent == given_moment


@examples(120)
@given(solution=st.one_of(TEXT, NUMBERS, OTHER), label=st.one_of(TEXT, NUMBERS, OTHER))
def test_solution_and_label_are_text(solution: Any, label: Any) -> None:
    event, error = outcome(lambda: Event.custom(solution=solution))
    if solution is not None and not text_rule(1000)(solution):
        assert error is not None and error.field == "solution"
    else:
        assert error is None, error
        assert same_json(body_of(event).get("solution"), None if solution is None else plain(solution))
    prepared, error = outcome(lambda: prepare_event(Event.custom(), JPEG, label=label))
    if label is not None and not text_rule(1000)(label):
        assert error is not None and error.field == "label"
    else:
        assert error is None, error
        raw = rendered(prepared)
        validate_body(orjson.loads(raw))
        assert same_json(json.loads(raw)["images"][0].get("label"), None if label is None else plain(label))


# ---------------------------------------------------------------- images


def accepted_image_is_sendable(image: Any) -> None:
    """An image prepare_image accepted: the service accepts the body it goes out in."""
    raw = rendered(prepare_event(Event.custom(), image))
    validate_body(orjson.loads(raw))


@examples(200)
@given(
    data=st.one_of(
        st.binary(max_size=600),
        st.tuples(
            st.sampled_from([b"\xff\xd8", b"\xff\xd8\xff", JPEG[:40], b"\x89PNG\r\n\x1a\n", PNG[:16]]),
            st.binary(max_size=300),
        ).map(b"".join),
    ),
    wrap=st.sampled_from([bytes, bytearray, memoryview, b64, lambda data: "data:image/jpeg;base64," + b64(data)]),
)
@example(data=b"", wrap=bytes)
@example(data=b"\xff\xd8\xff\xe0", wrap=bytes)
@example(data=PNG[:-1], wrap=bytes)
@example(data=PNG + b"x", wrap=b64)
@example(data=b"GIF89a" + JPEG, wrap=bytes)
def test_bytes_that_are_not_a_whole_image_are_refused(data: bytes, wrap: Callable[[bytes], Any]) -> None:
    _, error = outcome(lambda: prepare_image(wrap(data), field="output_image"))
    if error is not None:
        assert error.field == "output_image"
    else:
        accepted_image_is_sendable(wrap(data))


@examples(120)
@given(
    cut=st.integers(0, len(JPEG) - 2),
    padding=st.sampled_from([b"", b"\x00", b"\x00" * 7]),
    wrap=st.sampled_from([bytes, bytearray, b64]),
)
def test_truncated_jpeg_is_refused(cut: int, padding: bytes, wrap: Callable[[bytes], Any]) -> None:
    _, error = outcome(lambda: prepare_image(wrap(JPEG[:cut] + padding), field="input_image"))
    assert error is not None and error.field == "input_image"


@examples(120)
@given(
    position=st.integers(0, len(JPEG) - 1),
    byte=st.integers(0, 255),
    trailer=st.sampled_from([b"", b"\x00\x00", b"junk"]),
)
def test_damaged_jpeg_is_refused_or_accepted_by_both_ends(position: int, byte: int, trailer: bytes) -> None:
    data = JPEG[:position] + bytes([byte]) + JPEG[position + 1 :] + trailer
    _, error = outcome(lambda: prepare_image(data))
    if error is None:
        accepted_image_is_sendable(data)


BASE64_BAD_CHARS = ["!", "-", "_", " ", "\n", "\t", ".", "é", "\x00", "\ud800", "😀", "*"]


@examples(120)
@given(
    image=st.sampled_from([JPEG, PNG]),
    position=st.integers(0, 10**6),
    char=st.sampled_from(BASE64_BAD_CHARS),
    prefix=st.sampled_from(["", "data:image/jpeg;base64,", "data:,", "data:image/png;base64;base64,"]),
)
def test_base64_with_a_foreign_character_is_refused(image: bytes, position: int, char: str, prefix: str) -> None:
    text = b64(image)
    position %= len(text)
    damaged = prefix + text[:position] + char + text[position + 1 :]
    _, error = outcome(lambda: prepare_image(damaged, field="output_image"))
    assert error is not None and error.field == "output_image"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("A" * 4_000_000 + "!", id="4 MB then a bang"),
        pytest.param("\ud800" * 1_000_000, id="1 M lone surrogates"),
        pytest.param(b64(bytes(3_000_000)), id="3 MB of valid base64 zeros"),
        pytest.param(b64(JPEG[:-2] + bytes(3_000_000)), id="JPEG cut then 3 MB of NULs"),
        pytest.param("data:image/jpeg;base64," + "=" * 1_000_000, id="1 MB of padding"),
    ],
)
def test_huge_bad_base64_is_refused_promptly(text: str) -> None:
    _, error = outcome(lambda: prepare_image(text, field="output_image"))
    assert error is not None and error.field == "output_image"


DTYPES = [np.uint8, np.float32, np.float64, np.uint16, np.int8, np.int64, np.bool_, np.complex64, object]
SHAPES = st.lists(st.integers(0, 6), min_size=0, max_size=5).map(tuple) | st.tuples(
    st.integers(0, 40), st.integers(0, 40), st.sampled_from([1, 2, 3, 4, 5])
)


def array_of(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    array = np.empty(shape, dtype)
    if array.size:
        array.flat[:] = np.arange(array.size) % 251
    return array


def array_is_valid(array: np.ndarray) -> bool:
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        return False
    if array.ndim == 3 and array.shape[2] not in (1, 3, 4):
        return False
    return array.shape[0] > 0 and array.shape[1] > 0


def check_jpeg_of(array: np.ndarray, color: str, copy: bool) -> None:
    """The array's JPEG decodes to its size and (near enough, at quality 100) its pixels."""
    options = JpegOptions(quality=100, subsampling="444")
    raw = rendered(prepare_event(Event.custom(), array, color=color, copy=copy), options)
    validate_body(orjson.loads(raw))
    jpeg = base64.b64decode(json.loads(raw)["images"][0]["base64Image"], validate=True)
    height, width, _, _ = simplejpeg.decode_jpeg_header(jpeg)
    assert (height, width) == array.shape[:2]
    expected = np.ascontiguousarray(array).reshape(array.shape[0], array.shape[1], -1)
    if expected.shape[2] == 1:
        decoded = simplejpeg.decode_jpeg(jpeg, colorspace="GRAY")
    else:
        decoded = simplejpeg.decode_jpeg(jpeg, colorspace="RGB" if color == "rgb" else "BGR")
        expected = expected[:, :, :3]
    assert np.abs(decoded.astype(int) - expected.astype(int)).mean() < 8


@examples(150)
@given(shape=SHAPES, dtype=st.sampled_from(DTYPES), color=st.sampled_from(["bgr", "rgb"]), copy=st.booleans())
@example(shape=(0, 0), dtype=np.uint8, color="bgr", copy=True)
@example(shape=(0, 5, 3), dtype=np.uint8, color="bgr", copy=True)
@example(shape=(5, 0), dtype=np.uint8, color="bgr", copy=True)
@example(shape=(4, 4, 5), dtype=np.uint8, color="bgr", copy=True)
@example(shape=(4, 4, 2), dtype=np.uint8, color="bgr", copy=True)
@example(shape=(1, 2, 3, 3), dtype=np.uint8, color="bgr", copy=True)
@example(shape=(12,), dtype=np.uint8, color="bgr", copy=True)
@example(shape=(), dtype=np.uint8, color="bgr", copy=True)
@example(shape=(4, 4, 3), dtype=np.float32, color="bgr", copy=True)
@example(shape=(4, 4), dtype=object, color="bgr", copy=True)
@example(shape=(4, 4, 1), dtype=np.uint8, color="rgb", copy=False)
def test_arrays_of_every_dtype_and_shape(shape: tuple[int, ...], dtype: Any, color: str, copy: bool) -> None:
    array = array_of(shape, dtype)
    _, error = outcome(lambda: prepare_image(array, field="output_image", color=color, copy=copy))
    if not array_is_valid(array):
        assert error is not None and error.field in ("output_image.dtype", "output_image.shape"), error
        return
    assert error is None, error
    check_jpeg_of(array, color, copy)


STEPS = st.sampled_from([1, 2, 3, -1, -2, -3])


@examples(100)
@given(
    channels=st.sampled_from([None, 1, 3, 4]),
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    window=st.tuples(st.integers(0, 40), st.integers(0, 40), STEPS, STEPS),
    transpose=st.booleans(),
    channel_step=st.sampled_from([1, -1]),
    copy=st.booleans(),
)
def test_views_with_odd_strides_encode_their_own_pixels(
    channels: int | None,
    size: tuple[int, int],
    window: tuple[int, int, int, int],
    transpose: bool,
    channel_step: int,
    copy: bool,
) -> None:
    base = smooth_frame(*size, channels=channels)
    start_y, start_x, step_y, step_x = window
    view = base[start_y::step_y, start_x::step_x]
    if transpose:
        view = view.swapaxes(0, 1)
    if view.ndim == 3:
        view = view[:, :, ::channel_step]
    _, error = outcome(lambda: prepare_image(view, copy=copy))
    if not array_is_valid(view):
        assert error is not None and error.field == "image.shape"
        return
    assert error is None, error
    check_jpeg_of(view, "bgr", copy)


@pytest.mark.parametrize(
    "shape, valid",
    [
        ((1, 65_500), True),
        ((65_500, 1, 3), True),
        ((1, 65_501), False),
        ((65_501, 1, 4), False),
        ((2, 70_000, 3), False),
    ],
)
def test_a_side_beyond_the_jpeg_limit_is_refused_up_front(shape: tuple[int, ...], valid: bool) -> None:
    array = np.zeros(shape, np.uint8)
    source, error = outcome(lambda: prepare_image(array, field="output_image"))
    if not valid:
        assert error is not None and error.field == "output_image.shape"
        return
    assert error is None
    raw = rendered(prepare_event(Event.custom(), source.array))
    jpeg = base64.b64decode(json.loads(raw)["images"][0]["base64Image"])
    assert simplejpeg.decode_jpeg_header(jpeg)[:2] == shape[:2]


def test_an_encoded_image_is_sent_as_given() -> None:
    source, error = outcome(lambda: prepare_image(JPEG + b"\x00\x00"))
    assert error is None and isinstance(source, EncodedImage)
    assert base64.b64decode(source.base64) == JPEG + b"\x00\x00"


def test_a_missing_image_file_is_refused_by_submit_on_the_callers_thread(tmp_path: Path) -> None:
    missing = tmp_path / "frame.jpg"
    with EventWriter("http://127.0.0.1:9", retries=0) as writer:
        with pytest.raises(ValidationError) as info:
            writer.submit(Event.custom(value="v"), Path(missing), input_image=str(missing))
        # named by submit()'s own keyword, image, as typed
        assert (info.value.field, info.value.value) == ("image", str(missing))
        assert writer.stats()["submitted"] == 0


@pytest.mark.parametrize("relative", [False, True], ids=["absolute", "relative"])
def test_a_missing_file_gets_one_message_given_as_str_or_as_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    missing = "frame.jpg" if relative else str(tmp_path / "frame.jpg")
    errors = [
        outcome(lambda given=given: prepare_image(given, field="output_image"))[1] for given in (missing, Path(missing))
    ]
    assert errors[0] is not None and errors[1] is not None
    assert str(errors[0]) == str(errors[1])
    assert (errors[0].field, errors[0].value) == (errors[1].field, errors[1].value) == ("output_image", missing)
    where = f", relative to {tmp_path}" if relative else ""
    assert errors[0].rule == f"must be the path of a readable image file (No such file or directory{where})"


def test_submit_and_send_name_a_bad_label_label() -> None:
    with EventWriter("http://127.0.0.1:9", retries=0) as writer:
        for call in (writer.submit, writer.send):
            with pytest.raises(ValidationError) as info:
                call(Event.custom(value="v"), JPEG, label=123)
            assert str(info.value) == "label (images[0].label): 123 must be a string, not int"
        assert writer.stats()["submitted"] == 0


def test_block_errors_name_the_blocks_parameters() -> None:
    sink = EventWriterSink()
    try:
        with pytest.raises(ValidationError) as info:
            sink.run(
                event_ingestion_url="http://127.0.0.1:9",
                event_schema="safety_alert",
                output_image=JPEG,
                alert_type="no hardhat!",
                fire_and_forget=False,
            )
    finally:
        sink.close(timeout=1.0)
    assert (info.value.field, info.value.wire_field) == ("alert_type", "event_data.alertType")
    assert str(info.value).startswith("alert_type (event_data.alertType): 'no hardhat!' must match")


# ---------------------------------------------------------------- annotations

CONVERTERS = {
    "object_detections": object_detections_to_wire,
    "classifications": classifications_to_wire,
    "instance_segmentations": instance_segmentations_to_wire,
    "keypoint_detections": keypoints_to_wire,
}
FINITE = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(-(10**6), 10**6))
ANNOTATION_NUMBERS = st.one_of(FINITE, FINITE, NUMBERS, st.sampled_from(["1.5", "nan", "inf", "abc", ""]), st.none())
POINT = st.fixed_dictionaries(
    {"x": ANNOTATION_NUMBERS, "y": ANNOTATION_NUMBERS},
    optional={"class_id": st.one_of(st.integers(-3, 40), ANNOTATION_NUMBERS)},
)
POINT_LISTS = st.one_of(st.lists(POINT, max_size=5), st.lists(st.one_of(POINT, ANYTHING), max_size=4), ANYTHING)
PREDICTION = st.fixed_dictionaries(
    {},
    optional={
        "x": ANNOTATION_NUMBERS,
        "y": ANNOTATION_NUMBERS,
        "width": ANNOTATION_NUMBERS,
        "height": ANNOTATION_NUMBERS,
        "confidence": ANNOTATION_NUMBERS,
        "class": st.one_of(SHORT_TEXT, ANYTHING),
        "class_id": ANYTHING,
        "points": POINT_LISTS,
        "keypoints": POINT_LISTS,
    },
)
WELL_FORMED = st.fixed_dictionaries(
    {"x": FINITE, "y": FINITE, "width": FINITE, "height": FINITE},
    optional={"confidence": FINITE, "class": st.text(st.characters(codec="utf-8"), max_size=10)},
)
PREDICTIONS = st.one_of(
    st.lists(st.one_of(PREDICTION, WELL_FORMED), max_size=4),
    st.lists(st.one_of(PREDICTION, ANYTHING), max_size=3),
    st.fixed_dictionaries({"predictions": st.one_of(st.lists(PREDICTION, max_size=3), ANYTHING)}),
    st.fixed_dictionaries(
        {"class_name": st.one_of(st.lists(ANYTHING, max_size=3), ANYTHING)},
        optional={"confidence": st.one_of(st.lists(ANNOTATION_NUMBERS, max_size=4), ANYTHING)},
    ),
    st.fixed_dictionaries(
        {
            "predictions": st.dictionaries(
                SHORT_TEXT, st.one_of(st.fixed_dictionaries({"confidence": ANNOTATION_NUMBERS}), ANYTHING), max_size=3
            )
        },
        optional={"predicted_classes": st.one_of(st.lists(SHORT_TEXT, max_size=3), ANYTHING)},
    ),
    st.fixed_dictionaries({"top": ANYTHING}, optional={"confidence": ANNOTATION_NUMBERS}),
    ANYTHING,
)


def send_annotations(name: str, predictions: Any) -> None:
    """Through prepare_event: refused naming the field, or a body the service accepts."""
    prepared, error = outcome(lambda: prepare_event(Event.custom(), JPEG, **{name: predictions}))
    if error is not None:
        assert error.field.startswith(name) or error.field == "annotations", error
        return
    validate_body(orjson.loads(rendered(prepared)))


@pytest.mark.filterwarnings(
    "ignore:Generating overly large repr"
)  # a strategy holding long texts: its repr is tens of kB
@examples(200)
@given(name=st.sampled_from(list(CONVERTERS)), predictions=PREDICTIONS)
@example(name="object_detections", predictions=[{"x": math.nan, "y": 1, "width": 1, "height": 1}])
@example(name="object_detections", predictions=[{"x": 10**400, "y": 1, "width": 1, "height": 1}])
@example(name="object_detections", predictions=[{"y": 1, "width": 1, "height": 1}])
@example(name="object_detections", predictions=[{"x": 1, "y": 1, "width": 1, "height": 1, "class": "\ud800"}])
@example(name="object_detections", predictions=[{"x": 1, "y": 1, "width": 1, "height": 1, "class": "c" * 1001}])
@example(name="classifications", predictions={"class_name": ["ok", "c" * 1001]})
@example(
    name="instance_segmentations",
    predictions=[dict(DETECTION, points=[{"x": 1, "y": 2}, {"x": [1, 2], "y": 3}, {"x": 0, "y": 0}])],
)
@example(name="instance_segmentations", predictions=[dict(DETECTION, points=[[1, 2], [3, 4], [5, 6]])])
@example(name="instance_segmentations", predictions=[dict(DETECTION, points=[{"x": 1}])])
@example(name="keypoint_detections", predictions=[dict(DETECTION, keypoints=[{"x": 1, "y": 1, "class_id": "a"}])])
@example(name="keypoint_detections", predictions=[dict(DETECTION, keypoints=[{"x": 1, "y": 1, "class_id": -1}])])
@example(name="keypoint_detections", predictions=[dict(DETECTION, keypoints=[{"x": 1, "y": 1, "class_id": math.inf}])])
@example(name="keypoint_detections", predictions=[dict(DETECTION, keypoints=np.zeros((2, 2)))])
@example(name="classifications", predictions={"class_name": 5})
@example(name="classifications", predictions={"predictions": {"a": 5}})
@example(name="classifications", predictions={"predictions": {"a": {"confidence": 1}}, "predicted_classes": 3})
@example(name="classifications", predictions={"class_name": ["a", "b"], "confidence": [0.5, math.nan]})
def test_prediction_dicts_are_refused_or_sent_as_the_service_wants(name: str, predictions: Any) -> None:
    send_annotations(name, predictions)


@examples(100)
@given(predictions=st.lists(WELL_FORMED, min_size=1, max_size=4))
def test_well_formed_boxes_arrive_exactly(predictions: list[dict[str, Any]]) -> None:
    body = body_of(Event.custom(), object_detections=predictions)
    sent = body["images"][0]["objectDetections"]
    for box, given_box in zip(sent, predictions, strict=True):
        for key in ("x", "y", "width", "height"):
            assert same_json(box[key], float(given_box[key]))
        assert same_json(box["confidence"], float(given_box.get("confidence", 0.0)))
        assert box["class"] == given_box.get("class", "unknown")


class DetectionsLike:
    """Duck-typed ``supervision.Detections``: whatever shapes hypothesis hands it."""

    def __init__(self, xyxy: Any, confidence: Any, data: Any, mask: Any = None) -> None:
        self.xyxy, self.confidence, self.data, self.mask = xyxy, confidence, data, mask

    def __repr__(self) -> str:
        return f"DetectionsLike(xyxy={self.xyxy!r}, confidence={self.confidence!r}, data={self.data!r})"


FLOATS_WITH_HOLES = st.one_of(st.floats(-1e4, 1e4), st.sampled_from([math.nan, math.inf, -math.inf]))


@st.composite
def arrays(draw: st.DrawFn, shapes: st.SearchStrategy[tuple[int, ...]]) -> Any:
    shape = draw(shapes)
    values = draw(st.lists(FLOATS_WITH_HOLES, min_size=math.prod(shape), max_size=math.prod(shape)))
    dtype = draw(st.sampled_from([np.float32, np.float64, object]))
    array = np.array(values, dtype=dtype).reshape(shape)
    return draw(st.sampled_from([array, array.tolist()]))


def rows(count: int, width: int) -> st.SearchStrategy[tuple[int, ...]]:
    return st.sampled_from(
        [(count, width), (count,), (count, width + 1), (count, 2, width // 2), (max(count - 1, 0), width), ()]
    )


def object_array(items: list[Any]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        array[index] = item
    return array


@st.composite
def detections_like(draw: st.DrawFn) -> DetectionsLike:
    count = draw(st.integers(0, 4))
    xyxy = draw(st.one_of(arrays(rows(count, 4)), st.none(), ANYTHING))
    confidence = draw(st.one_of(st.none(), arrays(rows(count, 1)), ANYTHING))
    names = st.one_of(st.lists(st.one_of(SHORT_TEXT, ANYTHING), max_size=count + 1).map(object_array), ANYTHING)
    data = draw(
        st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {},
                optional={
                    "class_name": names,
                    "keypoints_xy": arrays(
                        st.sampled_from([(count, 3, 2), (count, 3), (count, 5), (count + 1, 2, 2), ()])
                    ),
                    "keypoints_class_name": st.one_of(
                        st.lists(st.lists(st.sampled_from(["nose", "eye", ""]), max_size=3), max_size=count + 1),
                        ANYTHING,
                    ),
                    "polygon": st.one_of(
                        st.lists(arrays(st.sampled_from([(3, 2), (4, 2), (3,), (2, 3), (0,)])), max_size=count + 1),
                        ANYTHING,
                    ),
                },
            ),
        )
    )
    return DetectionsLike(xyxy, confidence, data)


@examples(200)
@given(name=st.sampled_from(list(CONVERTERS)), detections=detections_like())
def test_detections_of_any_shape_are_refused_or_sent_as_the_service_wants(
    name: str, detections: DetectionsLike
) -> None:
    send_annotations(name, detections)


def test_supervision_detections_with_nan_or_inf_are_refused() -> None:
    sv = pytest.importorskip("supervision")

    def detections() -> Any:
        return sv.Detections(
            xyxy=np.array([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 5.0, 5.0]]),
            confidence=np.array([0.5, 0.75]),
            data={"class_name": np.array(["a", "b"])},
        )

    # supervision's constructor refuses NaN boxes now, but its arrays stay writable.
    for hole in (math.nan, math.inf, -math.inf):
        bad_box, bad_confidence = detections(), detections()
        bad_box.xyxy[1, 2] = hole
        bad_confidence.confidence[1] = hole
        for bad, field in ((bad_box, "xyxy"), (bad_confidence, "confidence")):
            for name in ("object_detections", "instance_segmentations", "keypoint_detections"):
                _, error = outcome(functools.partial(prepare_event, Event.custom(), JPEG, **{name: bad}))
                assert error is not None and error.field == f"{name}.{field}", error
        _, error = outcome(functools.partial(prepare_event, Event.custom(), JPEG, classifications=bad_confidence))
        assert error is not None and error.field == "classifications.confidence"


def test_boxes_given_as_segmentations_or_keypoints_without_them_are_refused_not_sent_bare() -> None:
    sv = pytest.importorskip("supervision")
    boxes = sv.Detections(xyxy=np.array([[0.0, 0.0, 10.0, 10.0]]), confidence=np.array([0.5]))
    for name, missing in (("instance_segmentations", "mask"), ("keypoint_detections", "keypoints_xy")):
        with EventWriter("http://127.0.0.1:9", retries=0) as writer:
            with pytest.raises(ValidationError) as info:
                writer.submit(Event.custom(value="v"), JPEG, **{name: boxes})
            assert writer.stats()["submitted"] == 0
        assert info.value.field == f"{name}.{missing}"
        assert "the detections carry" in info.value.rule and "object_detections" in info.value.rule


# ---------------------------------------------------------------- the service's validation

FIELD_ROOT = re.compile(r"[.\[ ]")


def root_of(field: str) -> str:
    return FIELD_ROOT.split(field, maxsplit=1)[0]


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every place in ``value`` down to the depth of FULL_BODY's deepest field."""
    yield prefix
    if len(prefix) >= 7:
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


def nested(depth: int, kind: str) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value] if kind == "list" else {"a": value}
    return value


BODY_KEYS = sorted(
    {key for path in paths(FULL_BODY) for key in path if isinstance(key, str)} | {"id", "x", "y", "points"}
)
JSON_KEYS = st.one_of(st.sampled_from(BODY_KEYS), SHORT_TEXT)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, 2**64, -(2**63) - 1, 10**400, 0, -1]),
    st.floats(),
    SHORT_TEXT,
    st.sampled_from(
        [
            "",
            "pass",
            "custom",
            "0",
            TIMESTAMP,
            "2026-11-26T04:44:12",
            b64(JPEG),
            b64(JPEG)[:-4],
            "data:image/jpeg;base64," + b64(JPEG),
            b64(PNG[:-1]),
        ]
    ),
    LONG_TEXT,
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(JSON_KEYS, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def mutated_bodies(draw: st.DrawFn) -> tuple[Any, set[str]]:
    """FULL_BODY with 1–3 mutations; returns it and the field roots an error may name."""
    body: Any = copy.deepcopy(FULL_BODY)
    roots: set[str] = set()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(list(paths(body))))
        operation = draw(st.sampled_from(["delete", "replace", "replace", "extra key", "nest"]))
        if path:
            roots.add(path[0] if isinstance(path[0], str) else "body")
            if path[0] == "event_schema":  # another schema makes the data wrong
                roots.add("event_data")
        if operation == "extra key":
            target = body
            for step in path:
                target = target[step]
            if isinstance(target, dict):
                new_key = draw(JSON_KEYS)  # may be a key the target already has
                target[new_key] = draw(JSON_VALUES)
                if not path:
                    roots.add(root_of(new_key))
            elif isinstance(target, list):
                target.append(draw(JSON_VALUES))
            continue
        if not path:  # the whole body: any field may be wrong now
            if operation == "replace":
                body = draw(JSON_VALUES)
                roots.update(["body", *FULL_BODY])
            continue
        parent = body
        for step in path[:-1]:
            parent = parent[step]
        if operation == "delete":
            del parent[path[-1]]
        elif operation == "replace":
            parent[path[-1]] = draw(JSON_VALUES)
        else:
            parent[path[-1]] = nested(draw(st.sampled_from([2, 50, 500])), draw(st.sampled_from(["list", "dict"])))
    if isinstance(body, dict):
        roots.update(root_of(key) for key in body if key not in FULL_BODY)
    else:
        roots.add("body")
    return body, roots


@examples(300)
@given(mutated=mutated_bodies())
def test_validate_body_accepts_or_names_a_field_it_was_given_wrong(mutated: tuple[Any, set[str]]) -> None:
    body, roots = mutated
    _, error = outcome(lambda: validate_body(body))
    if error is not None:
        assert root_of(error.field) in roots, (error.field, roots)


@examples(150)
@given(body=st.one_of(JSON_VALUES, st.dictionaries(JSON_KEYS, JSON_VALUES, max_size=8)))
@example(body={key: None for key in FULL_BODY})
def test_validate_body_survives_any_json_like_value(body: Any) -> None:
    outcome(lambda: validate_body(body))


@pytest.mark.parametrize("where", ["body", "event_data", "images", "images[0].objectDetections", "custom_metadata.key"])
@pytest.mark.parametrize("kind", ["list", "dict"])
def test_validate_body_refuses_deep_nesting_by_name(where: str, kind: str) -> None:
    """Too deep for repr, so outside hypothesis, which would print it."""
    deep = nested(5000, kind)
    body = copy.deepcopy(FULL_BODY)
    if where == "body":
        body = deep
    elif where == "images[0].objectDetections":
        body["images"][0]["objectDetections"] = deep
    elif where == "custom_metadata.key":
        body["custom_metadata"]["key"] = deep
    else:
        body[where] = deep
    _, error = outcome(lambda: validate_body(body))
    named = {"body", "a"} if where == "body" else {root_of(where)}  # {"a": {"a": ...}} has a key "a" too many
    assert error is not None and root_of(error.field) in named, error


# ---------------------------------------------------------------- over HTTP

HTTP_TIMEOUT = (5, 30)
CREATED: list[str] = []  # ids of the events this module's posts stored


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReferenceService]:
    with ReferenceService(tmp_path_factory.mktemp("bad-input-service")) as running:
        yield running


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


def post(
    service: ReferenceService, http: requests.Session, data: bytes, headers: dict[str, str] | None = None
) -> requests.Response:
    reply = http.post(
        f"{service.url}/v2/events",
        data=data,
        headers={"Content-Type": "application/json", **(headers or {})},
        timeout=HTTP_TIMEOUT,
    )
    assert reply.status_code < 500, (reply.status_code, reply.text[:300])
    assert reply.headers["Content-Type"].startswith("application/json")
    answer = reply.json()
    if reply.status_code == 201:
        assert isinstance(answer["id"], str)
        CREATED.append(answer["id"])
    else:
        assert 400 <= reply.status_code < 500
        assert isinstance(answer, dict) and isinstance(answer.get("detail"), str) and answer["detail"], answer
    return reply


def expected_status(raw: bytes) -> tuple[int, str | None]:
    """What the service must answer for ``raw``, worked out in-process: status and, for 422, the detail."""
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return 400, None
    if not isinstance(parsed, dict):
        return 400, None
    _, error = outcome(lambda: validate_body(parsed))
    return (201, None) if error is None else (422, str(error))


def assert_healthy(service: ReferenceService, http: requests.Session) -> None:
    reply = http.get(f"{service.url}/healthz", timeout=HTTP_TIMEOUT)
    assert reply.status_code == 200 and reply.json() == {"status": "ok"}


@examples(60)
@given(mutated=mutated_bodies())
@example(mutated=(FULL_BODY, set()))
def test_the_service_answers_mutated_bodies_as_validate_body_does(
    service: ReferenceService, http: requests.Session, mutated: tuple[Any, set[str]]
) -> None:
    raw = json.dumps(mutated[0]).encode()  # NaN, ±Infinity and lone surrogates go out as written
    status, detail = expected_status(raw)
    reply = post(service, http, raw)
    assert reply.status_code == status, (reply.status_code, reply.text[:300])
    if detail is not None:
        assert reply.json()["detail"] == detail


VALID_RAW = json.dumps(FULL_BODY).encode()
GARBAGE = [
    b"",
    b"null",
    b"[]",
    b'"a string"',
    b"1e400",
    b"\xef\xbb\xbf" + VALID_RAW,  # a UTF-8 byte order mark
    VALID_RAW.replace(b"dock 4", b"dock \xff\xfe"),  # not UTF-8
    VALID_RAW.replace(b"dock 4", b"dock \xed\xa0\x80"),  # an encoded surrogate
    VALID_RAW.replace(b"dock 4", b"dock \x00"),  # a raw control character
    VALID_RAW.replace(b'"itemCount": 3', b'"itemCount": 18446744073709551616'),
    VALID_RAW.replace(b'"itemCount": 3', b'"itemCount": 3.0'),
    VALID_RAW.replace(b'"itemCount": 3', b'"itemCount": NaN'),
    VALID_RAW[:-1],
    VALID_RAW + b"}",
    VALID_RAW + b" trailing",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 5_000 + b"0" + b"}" * 5_000,
    VALID_RAW.replace(b'"s-1"', b'"' + b"x" * 3_000_000 + b'"'),
]


@examples(60)
@given(
    raw=st.one_of(
        st.binary(max_size=400),
        st.integers(0, len(VALID_RAW) - 1).map(lambda cut: VALID_RAW[:cut]),
        st.tuples(st.integers(0, len(VALID_RAW) - 1), st.binary(min_size=1, max_size=4)).map(
            lambda cut: VALID_RAW[: cut[0]] + cut[1] + VALID_RAW[cut[0] + len(cut[1]) :]
        ),
        st.sampled_from(GARBAGE),
    )
)
def test_garbage_bytes_get_a_4xx_with_a_detail(service: ReferenceService, http: requests.Session, raw: bytes) -> None:
    status, detail = expected_status(raw)
    reply = post(service, http, raw)
    assert reply.status_code == status, (reply.status_code, reply.text[:300])
    if detail is not None:
        assert reply.json()["detail"] == detail


@pytest.mark.parametrize(
    "headers, status",
    [
        ({"Content-Type": "text/plain"}, 415),
        ({"Content-Type": "application/x-www-form-urlencoded"}, 415),
        ({"Idempotency-Key": ""}, 400),
        ({"Idempotency-Key": "k" * 256}, 400),
    ],
)
def test_bad_headers_get_a_4xx_with_a_detail(
    service: ReferenceService, http: requests.Session, headers: dict[str, str], status: int
) -> None:
    assert post(service, http, VALID_RAW, headers).status_code == status
    assert_healthy(service, http)


def test_nothing_half_written_stays_on_disk(service: ReferenceService, http: requests.Session) -> None:
    """After every post above: one row per 201, and every image file belongs to a row."""
    for _ in range(2):  # at least a couple of stored events, so there is something to compare
        assert post(service, http, VALID_RAW).status_code == 201
    assert_healthy(service, http)
    assert service.stored_count() == len(CREATED)
    with contextlib.closing(
        sqlite3.connect(f"file:{service.data_dir / 'events.sqlite3'}?mode=ro", uri=True)
    ) as database:
        rows = database.execute("SELECT id, output_file, input_file FROM events").fetchall()
    assert sorted(row[0] for row in rows) == sorted(CREATED)
    referenced = {name for row in rows for name in row[1:] if name is not None}
    images = Path(service.data_dir, "images")
    assert {path.name for path in images.iterdir()} == referenced
    leftovers = {path.name for path in Path(service.data_dir).iterdir()} - {
        "images",
        "sources",  # uploads of the Vision Events API
        "events.sqlite3",
        "events.sqlite3-wal",
        "events.sqlite3-shm",
    }
    assert not leftovers
