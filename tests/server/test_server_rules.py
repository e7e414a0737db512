"""The service and the library apply one set of rules: what ``Event`` accepts, ``validate_body`` accepts
(and stores in the same form), and what one refuses the other refuses, naming the same field.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simplejpeg

from fastsend.events import Event, ValidationError, validate_inference_timestamp
from fastsend.server import ReferenceService
from fastsend.server.validation import validate_body

JPEG = simplejpeg.encode_jpeg(np.full((8, 8, 3), 90, np.uint8), quality=95, colorspace="BGR")


TIMESTAMP = "2026-11-26T04:44:12+00:00"


def body(**overrides: Any) -> dict[str, Any]:
    return {
        "inference_timestamp": TIMESTAMP,
        "event_schema": "custom",
        "event_data": {},
        "images": [{"base64Image": base64.b64encode(JPEG).decode()}],
        "displayImagePosition": 0,
        **overrides,
    }


def library_verdict(**fields: Any) -> tuple[str, Any]:
    try:
        event = Event.custom(**{"inference_timestamp": TIMESTAMP, **fields})
    except ValidationError as error:
        return "refused", error.field
    return "accepted", (event.inference_timestamp, event.solution)


def service_verdict(**fields: Any) -> tuple[str, Any]:
    try:
        event = validate_body(body(**fields))
    except ValidationError as error:
        return "refused", error.field
    return "accepted", (event.inference_timestamp, event.solution)


TIMESTAMPS = [
    "2026-11-26T04:44:12.123456+00:00",
    "2026-11-26T10:14:12+05:30",  # non-UTC offsets become the same moment in UTC
    "2026-11-25T20:44:12.5-08:00",
    "2026-11-26T04:44:12+00:00:30",  # an offset with seconds
    "2026-11-26 04:44:12+00:00",  # space instead of T
    "2026-11-26T04:44:12Z",  # on every Python, 3.10 included
    "2026-11-26T04:44:12.123Z",  # JavaScript's toISOString()
    "2026-11-26T04:44:12.123456789Z",  # Go's RFC3339Nano: truncated to microseconds
    "2026-11-26T04:44:12.1234567890Z",  # 10 digits: refused
    "20261126T044412+0000",  # ISO-8601 basic format
    "2026-W48-4T04:44:12Z",  # a week date: refused
    "2026-11-26T04:44:12",  # no offset
    "2026-11-26",  # a date alone
    "0001-01-01T00:00:00+01:00",  # year 0 in UTC
    "9999-12-31T23:59:59-01:00",  # year 10000 in UTC
    "2026-11-26T04:44:12+24:00",
    "yesterday",
    "",
    "\ud800",
    1_764_132_252,
]


@pytest.mark.parametrize("timestamp", TIMESTAMPS, ids=[repr(value) for value in TIMESTAMPS])
def test_timestamp_rule_agrees(timestamp: Any) -> None:
    library = library_verdict(inference_timestamp=timestamp)
    assert service_verdict(inference_timestamp=timestamp) == library
    if library[0] == "refused":
        assert library[1] == "inference_timestamp"


def test_timestamps_are_stored_in_utc() -> None:
    assert service_verdict(inference_timestamp="2026-11-26T10:14:12+05:30") == (
        "accepted",
        ("2026-11-26T04:44:12+00:00", None),
    )
    moment = datetime(2026, 11, 26, 10, 14, 12, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    assert validate_inference_timestamp(moment) == "2026-11-26T04:44:12+00:00"
    with pytest.raises(ValidationError, match="inference_timestamp"):
        validate_inference_timestamp(None)


SOLUTIONS = ["yard-safety", "", "s" * 1000, "s" * 1001, "\ud800", 5, ["a"]]


@pytest.mark.parametrize(
    "solution", SOLUTIONS, ids=["plain", "empty", "1000 chars", "1001 chars", "surrogate", "int", "list"]
)
def test_solution_rule_agrees(solution: Any) -> None:
    library = library_verdict(solution=solution)
    assert service_verdict(solution=solution) == library
    if library[0] == "refused":
        assert library[1] == "solution"


def test_the_stored_event_carries_the_timestamp_the_library_computes(tmp_path: Path) -> None:
    sent = "2026-11-25T20:44:12.5-08:00"
    data = json.dumps(body(inference_timestamp=sent, solution="yard")).encode()
    with ReferenceService(tmp_path) as service:
        request = urllib.request.Request(
            f"{service.url}/v2/events", data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=20) as reply:
            event_id = json.loads(reply.read())["id"]
        stored = service.get_event(event_id)
    assert stored is not None
    expected = Event.custom(inference_timestamp=sent, solution="yard")
    assert (stored["inference_timestamp"], stored["solution"]) == (expected.inference_timestamp, expected.solution)
    assert stored["inference_timestamp"] == "2026-11-26T04:44:12.500000+00:00"
