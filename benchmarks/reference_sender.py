"""The reference-style sender: how the Roboflow Event Writer block sends an event.

Per event, on the caller's thread: ``cv2.imencode(".jpg", frame,
[IMWRITE_JPEG_QUALITY, 95])`` for the output and the input image, stdlib
``base64.b64encode(...).decode()``, the detections converted by a Python loop
over the boxes with a ``float()`` per number and a dict per detection, and the
v2 body as a dict. Then ``requests.post(url + "/v2/events", json=body,
timeout=5)``: requests serializes the dict with the stdlib ``json.dumps`` and
encodes the text to UTF-8 bytes before it sends them.

Two ways to send, as the block has:

- synchronous: ``ReferenceSender.send(...)`` blocks and returns the id;
- fire-and-forget: ``ReferenceSender.submit(...)`` encodes and builds the dict
  on the caller's thread, and only the POST (with its ``json.dumps``) runs in a
  ``ThreadPoolExecutor``; ``drain()`` waits for everything submitted.

By default every POST is a plain ``requests.post`` — a new connection per event,
as the block does; ``session=True`` uses one ``requests.Session`` per thread
instead (keep-alive), for comparison.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime, timezone
from typing import Any

import cv2
import numpy as np
import requests

__all__ = [
    "DEFAULT_MAX_WORKERS",
    "ReferenceSender",
    "reference_body",
    "reference_body_bytes",
    "reference_detections_to_wire",
    "reference_encode_b64",
]

#: Threads of the fire-and-forget pool.
DEFAULT_MAX_WORKERS = 4
DEFAULT_TIMEOUT = 5.0
JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95]


def reference_encode_b64(frame: np.ndarray) -> str:
    """JPEG q95 with OpenCV, then stdlib base64 to ``str``."""
    ok, encoded = cv2.imencode(".jpg", frame, JPEG_PARAMS)
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return base64.b64encode(encoded).decode()


def reference_detections_to_wire(detections: Any) -> list[dict[str, Any]]:
    """The object-detection list, one Python iteration and six ``float()`` calls per box."""
    result = []
    names = detections.data.get("class_name") if detections.data else None
    confidence = detections.confidence
    for i in range(len(detections.xyxy)):
        x1, y1, x2, y2 = detections.xyxy[i]
        x1, y1, x2, y2 = float(x1), float(y1), float(x2), float(y2)
        result.append(
            {
                "class": str(names[i]) if names is not None and i < len(names) else "unknown",
                "x": (x1 + x2) / 2,
                "y": (y1 + y2) / 2,
                "width": x2 - x1,
                "height": y2 - y1,
                "confidence": float(confidence[i]) if confidence is not None else 0.0,
            }
        )
    return result


def reference_body(
    output_b64: str,
    input_b64: str | None,
    object_detections: list[dict[str, Any]],
    event_schema: str = "quality_check",
    event_data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The v2 body as a dict, with the images already base64 text."""
    image: dict[str, Any] = {"base64Image": output_b64}
    if input_b64 is not None:
        image["inputBase64Image"] = input_b64
    if object_detections:
        image["objectDetections"] = object_detections
    return {
        "inference_timestamp": datetime.now(timezone.utc).isoformat(),
        "event_schema": event_schema,
        "event_data": {"result": "fail"} if event_data is None else event_data,
        "images": [image],
        "displayImagePosition": 0,
    }


def reference_body_bytes(body: dict[str, Any]) -> bytes:
    """What ``requests.post(json=body)`` puts on the wire: stdlib ``json.dumps``, then UTF-8."""
    return json.dumps(body, allow_nan=False).encode("utf-8")


class ReferenceSender:
    """The reference block's send path against ``{base_url}/v2/events``.

    ``send(frame, input_frame, detections)`` → the event id (str);
    ``submit(frame, input_frame, detections)`` → a ``Future`` of the id, after
    encoding on the caller's thread; ``drain()`` waits for all submitted events
    and re-raises the first failure; ``close()`` drains and stops the pool.
    A non-201 answer raises ``RuntimeError`` (the block would report it instead;
    a benchmark must not count it as delivered).
    """

    def __init__(
        self,
        base_url: str,
        *,
        session: bool = False,
        max_workers: int = DEFAULT_MAX_WORKERS,
        timeout: float = DEFAULT_TIMEOUT,
        event_schema: str = "quality_check",
        event_data: dict[str, Any] | None = None,
    ) -> None:
        self.url = f"{base_url.rstrip('/')}/v2/events"
        self.timeout = timeout
        self.event_schema = event_schema
        self.event_data = {"result": "fail"} if event_data is None else event_data
        self.headers = {"Content-Type": "application/json"}
        api_key = os.environ.get("EVENT_INGESTION_API_KEY")
        if api_key:
            self.headers["X-API-Key"] = api_key
        self._use_session = session
        self._local = threading.local()
        self.max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None
        self._pending: set[Future] = set()
        self._failed: list[Future] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------ pieces

    def build(self, frame: np.ndarray, input_frame: np.ndarray | None, detections: Any) -> dict[str, Any]:
        """Encode both images and build the body dict (the caller-thread part)."""
        output_b64 = reference_encode_b64(frame)
        input_b64 = reference_encode_b64(input_frame) if input_frame is not None else None
        annotations = reference_detections_to_wire(detections) if detections is not None else []
        return reference_body(output_b64, input_b64, annotations, self.event_schema, self.event_data)

    def post(self, body: dict[str, Any]) -> str:
        """POST the body the way the block does and return the id from the 201."""
        if self._use_session:
            session = getattr(self._local, "session", None)
            if session is None:
                session = self._local.session = requests.Session()
            response = session.post(self.url, headers=self.headers, json=body, timeout=self.timeout)
        else:
            response = requests.post(self.url, headers=self.headers, json=body, timeout=self.timeout)
        if response.status_code != 201:
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
        return str(response.json().get("id", ""))

    # ------------------------------------------------------------ modes

    def send(self, frame: np.ndarray, input_frame: np.ndarray | None, detections: Any) -> str:
        """Synchronous: encode, build, POST, return the event id."""
        return self.post(self.build(frame, input_frame, detections))

    def submit(self, frame: np.ndarray, input_frame: np.ndarray | None, detections: Any) -> Future:
        """Fire-and-forget: encode and build here, POST in the pool; returns at once after encoding."""
        body = self.build(frame, input_frame, detections)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.max_workers, thread_name_prefix="reference-sender")
        future = self._pool.submit(self.post, body)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: Future) -> None:
        with self._lock:
            self._pending.discard(future)
            if future.exception() is not None:
                self._failed.append(future)

    def drain(self, timeout: float | None = None) -> None:
        """Wait until every submitted event is answered; raise the first error, if any."""
        with self._lock:
            pending = list(self._pending)
        _, not_done = wait(pending, timeout=timeout)
        if not_done:
            raise TimeoutError(f"{len(not_done)} reference events still in flight after {timeout}s")
        # ``wait`` can return before a future's done-callback ran: ask the futures too.
        with self._lock:
            failed = set(self._failed)
            self._failed.clear()
        failed.update(future for future in pending if future.exception() is not None)
        if failed:
            raise next(iter(failed)).exception()  # type: ignore[misc]

    def close(self) -> None:
        try:
            self.drain()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def __enter__(self) -> ReferenceSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
