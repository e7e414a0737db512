"""The v2 request: URL, headers, and the JSON body as chunks with the images spliced in.

orjson serializes everything but the image strings. The base64 images — megabytes
per event — are never joined into one buffer nor scanned by a JSON encoder:
the body is a list of bytes objects, written to the socket one after another.
Base64 needs no JSON escaping, so splicing it between two quotes is exact.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .annotations import (
    classifications_to_wire,
    instance_segmentations_to_wire,
    keypoints_to_wire,
    object_detections_to_wire,
)
from .events import Event, ValidationError, validate_text
from .jpeg import ImageSource, JpegOptions, prepare_image, to_base64
from .urls import check_base_url, events_url_of

__all__ = [
    "ANNOTATION_KEYS",
    "Envelope",
    "PreparedEvent",
    "Request",
    "build_envelope",
    "events_url",
    "prepare_event",
    "render_body",
    "request_headers",
    "splice",
]

DEFAULT_BASE_URL = "http://localhost:8001"
ANNOTATION_KEYS = ("objectDetections", "classifications", "instanceSegmentations", "keypoints")


def events_url(base_url: str | None) -> str:
    """``{base_url}/v2/events`` with trailing slashes on ``base_url`` stripped."""
    try:
        return events_url_of(check_base_url(base_url or DEFAULT_BASE_URL))
    except ValueError as exc:
        raise ValidationError("url", base_url, str(exc)) from None


def request_headers(idempotency_key: str, api_key: str | None = None) -> dict[str, str]:
    """Content type, ``Idempotency-Key``, and ``X-API-Key`` only when a key is set."""
    headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
    if api_key:
        headers["X-API-Key"] = api_key
    return headers


class _RandomBytes:
    """``os.urandom`` read 4 KiB at a time and handed out 16 bytes per key.

    One system call per 256 events instead of one per event: each call lets go of the GIL, and on a
    loaded machine the caller's thread then waits for the encoders to hand it back.
    """

    _BLOCK = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pool = b""
        self._offset = 0

    def take(self, count: int) -> bytes:
        with self._lock:
            if self._offset + count > len(self._pool):
                self._pool, self._offset = os.urandom(self._BLOCK), 0
            start, self._offset = self._offset, self._offset + count
            return self._pool[start : self._offset]

    def forget_in_child(self) -> None:
        # A forked child must not hand out the keys its parent will.
        self._lock = threading.Lock()
        self._reset()


_random_bytes = _RandomBytes()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_random_bytes.forget_in_child)


def new_idempotency_key() -> str:
    """A random (version 4) UUID, as text; a third of ``str(uuid.uuid4())``'s cost."""
    raw = bytearray(_random_bytes.take(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


@dataclass(frozen=True, slots=True)
class Envelope:
    """The serialized JSON around the image strings of one event.

    ``head`` ends inside the opening quote of ``base64Image``; ``tail`` starts right
    after the image entry's last image string and closes the body.
    """

    head: bytes
    tail: bytes


def build_envelope(
    event: Event, *, label: str | None = None, annotations: Mapping[str, Sequence[Any]] | None = None
) -> Envelope:
    """Serialize everything of ``event`` but its images; empty annotation lists are omitted.

    Runs on the caller's thread so an unserializable value fails there, by name.
    """
    entry: dict[str, Any] = {}
    if label is not None:
        entry["label"] = validate_text("image_label", label)
    for key, items in (annotations or {}).items():
        if key not in ANNOTATION_KEYS:
            raise ValidationError("annotations", key, f"must be one of {', '.join(ANNOTATION_KEYS)}")
        if items:
            entry[key] = items
    before = {"inference_timestamp": event.inference_timestamp, "event_schema": event.schema, "event_data": event.data}
    after: dict[str, Any] = {"displayImagePosition": 0}
    if event.custom_metadata is not None:
        after["custom_metadata"] = event.custom_metadata
    if event.solution is not None:
        after["solution"] = event.solution
    try:
        head = orjson.dumps(before)[:-1] + b',"images":[{"base64Image":"'
        rest = orjson.dumps(entry)
    except orjson.JSONEncodeError as exc:
        raise ValidationError(
            "annotations", str(exc), "must be JSON-serializable (str class names, finite numbers)"
        ) from None
    entry_rest = b"}" if rest == b"{}" else b"," + rest[1:]
    return Envelope(head=head, tail=entry_rest + b"]," + orjson.dumps(after)[1:])


def splice(envelope: Envelope, output_b64: bytes, input_b64: bytes | None = None) -> list[bytes]:
    """The body as chunks: envelope head, output image, optional input image, envelope tail."""
    if input_b64 is None:
        return [envelope.head, output_b64, b'"', envelope.tail]
    return [envelope.head, output_b64, b'","inputBase64Image":"', input_b64, b'"', envelope.tail]


@dataclass(frozen=True, slots=True, eq=False)
class Request:
    """A finished POST: where, which headers, and the body chunks with their total size."""

    url: str
    headers: Mapping[str, str]
    chunks: Sequence[bytes]
    size: int

    @classmethod
    def of(cls, url: str, headers: Mapping[str, str], chunks: Sequence[bytes]) -> Request:
        return cls(url, headers, chunks, sum(len(chunk) for chunk in chunks))

    def body(self) -> bytes:
        """The whole body in one buffer, for callers and tests that need it."""
        return b"".join(self.chunks)


@dataclass(frozen=True, slots=True, eq=False)
class PreparedEvent:
    """Everything the caller's thread contributes: validated, detached from its buffers.

    ``input`` is ``output`` itself when the caller passed one image for both, so it
    is encoded once.
    """

    event: Event
    envelope: Envelope
    output: ImageSource
    input: ImageSource | None
    idempotency_key: str

    @property
    def images(self) -> tuple[ImageSource, ...]:
        """The event's images, each once: no input when there is none or it is the output itself."""
        if self.input is None or self.input is self.output:
            return (self.output,)
        return (self.output, self.input)


def prepare_event(
    event: Event,
    image: Any,
    *,
    input_image: Any = None,
    label: str | None = None,
    object_detections: Any = None,
    classifications: Any = None,
    instance_segmentations: Any = None,
    keypoint_detections: Any = None,
    color: str = "bgr",
    copy: bool = True,
) -> PreparedEvent:
    """Validate images and predictions, convert the annotations, serialize the envelope.

    Raises ``ValidationError`` naming the field; nothing here is deferred that could
    fail later for a reason the caller could have been told now.
    """
    if not isinstance(event, Event):
        raise ValidationError("event", event, "must be a fastsend.Event (build it with Event.quality_check(...) etc.)")
    output = prepare_image(image, field="output_image", color=color, copy=copy)
    if input_image is None:
        source = None
    elif input_image is image:
        source = output
    else:
        source = prepare_image(input_image, field="input_image", color=color, copy=copy)
    annotations = {}
    for key, predictions, convert, field in (
        ("objectDetections", object_detections, object_detections_to_wire, "object_detections"),
        ("classifications", classifications, classifications_to_wire, "classifications"),
        ("instanceSegmentations", instance_segmentations, instance_segmentations_to_wire, "instance_segmentations"),
        ("keypoints", keypoint_detections, keypoints_to_wire, "keypoint_detections"),
    ):
        if predictions is not None:
            annotations[key] = convert(predictions, field)
    envelope = build_envelope(event, label=label, annotations=annotations)
    return PreparedEvent(event, envelope, output, source, new_idempotency_key())


def render_body(prepared: PreparedEvent, options: JpegOptions) -> list[bytes]:
    """Encode the images (the expensive part) and splice them into the envelope."""
    output_b64 = to_base64(prepared.output, options)
    if prepared.input is None:
        return splice(prepared.envelope, output_b64)
    input_b64 = output_b64 if prepared.input is prepared.output else to_base64(prepared.input, options)
    return splice(prepared.envelope, output_b64, input_b64)
