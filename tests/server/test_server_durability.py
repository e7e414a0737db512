"""An event acknowledged with 201 survives SIGKILL of the service right after.

Runs ``python -m fastsend.server`` as a subprocess on a free port, posts one
event, kills the process, restarts it on the same data directory and reads
the event and its images back.
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import sqlite3
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simplejpeg
from support.service_process import TIMEOUT, start_service

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL and select() on pipes")


def call(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def test_acknowledged_event_survives_sigkill(tmp_path: Path) -> None:
    output = simplejpeg.encode_jpeg(np.full((16, 16, 3), 200, np.uint8), quality=95, colorspace="BGR")
    original = simplejpeg.encode_jpeg(np.full((16, 16, 3), 50, np.uint8), quality=95, colorspace="BGR")
    body = {
        "inference_timestamp": "2026-11-26T04:44:12.123456+00:00",
        "event_schema": "inventory_count",
        "event_data": {"location": "dock 4", "itemCount": 12},
        "images": [
            {
                "base64Image": base64.b64encode(output).decode(),
                "inputBase64Image": base64.b64encode(original).decode(),
                "classifications": [{"class": "pallet", "confidence": 0.75}],
            }
        ],
        "displayImagePosition": 0,
        "custom_metadata": {"site": "north"},
    }

    process, url = start_service(tmp_path)
    try:
        status, reply = call("POST", f"{url}/v2/events", body, {"Idempotency-Key": "durable-1"})
        assert status == 201, reply
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(TIMEOUT)
    event_id = json.loads(reply)["id"]

    process, url = start_service(tmp_path)
    try:
        status, stored = call("GET", f"{url}/v2/events/{event_id}")
        assert status == 200, stored
        event = json.loads(stored)
        assert event["event_data"] == body["event_data"]
        assert event["custom_metadata"] == {"site": "north"}
        assert event["images"][0]["classifications"] == [{"class": "pallet", "confidence": 0.75}]
        assert call("GET", f"{url}/v2/events/{event_id}/images/output") == (200, output)
        assert call("GET", f"{url}/v2/events/{event_id}/images/input") == (200, original)
        # The idempotency record is durable too: a retry after the crash is not stored twice.
        status, retried = call("POST", f"{url}/v2/events", body, {"Idempotency-Key": "durable-1"})
        assert (status, json.loads(retried)["id"]) == (201, event_id)
        assert json.loads(call("GET", f"{url}/v2/events")[1])["total"] == 1

        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)

    with contextlib.closing(sqlite3.connect(tmp_path / "events.sqlite3")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
