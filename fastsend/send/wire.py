"""The v2 request: the JSON body as chunks with the images spliced in, and where it goes.

orjson serializes everything but the image strings. The base64 images — megabytes
per event — are never joined into one buffer nor scanned by a JSON encoder:
the body is a list of bytes objects, written to the socket one after another.
Base64 needs no JSON escaping, so splicing it between two quotes is exact.

A ``Request`` is the body and its ``Idempotency-Key``, nothing else: no URL and no API
key. The ``Endpoint`` (the writer's URL and key) is applied when the request is sent,
live or from the spool, so the spool never holds either.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from fastsend.config import DEFAULT_URL, check_base_url, events_url_of
from fastsend.events import Event, ValidationError, validate_text

__all__ = [
    "ANNOTATION_KEYS",
    "INPUT_IMAGE_KEY",
    "OUTPUT_IMAGE_KEY",
    "Endpoint",
    "Envelope",
    "Post",
    "Request",
    "build_envelope",
    "check_idempotency_key",
    "events_url",
    "request_headers",
    "splice",
]

ANNOTATION_KEYS = ("objectDetections", "classifications", "instanceSegmentations", "keypoints")
# What a service that honours Idempotency-Key accepts (the wire contract): 1–255 printable ASCII characters.
_IDEMPOTENCY_KEY_CHARACTERS = frozenset(range(0x21, 0x7F))
_IDEMPOTENCY_KEY_MAX = 255


def events_url(base_url: str | None) -> str:
    """``{base_url}/v2/events`` with trailing slashes on ``base_url`` stripped."""
    try:
        return events_url_of(check_base_url(base_url or DEFAULT_URL))
    except ValueError as exc:
        raise ValidationError("url", base_url, str(exc)) from None


def request_headers(idempotency_key: str, api_key: str | None = None) -> dict[str, str]:
    """Content type, ``Idempotency-Key``, and ``X-API-Key`` only when a key is set."""
    headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
    if api_key:
        headers["X-API-Key"] = api_key
    return headers


def check_idempotency_key(key: object) -> str:
    """``key`` if it can go in an ``Idempotency-Key`` header as the contract allows; else ``ValueError`` saying why."""
    if not isinstance(key, str) or not key:
        raise ValueError(f"Idempotency-Key {key!r} must be a non-empty string")
    if len(key) > _IDEMPOTENCY_KEY_MAX:
        raise ValueError(f"Idempotency-Key of {len(key)} characters is longer than {_IDEMPOTENCY_KEY_MAX}")
    if not all(ord(character) in _IDEMPOTENCY_KEY_CHARACTERS for character in key):
        raise ValueError(f"Idempotency-Key {key[:40]!r} must be printable ASCII without spaces (0x21-0x7E)")
    return key


@dataclass(frozen=True, slots=True)
class Envelope:
    """The serialized JSON around the image strings of one event.

    ``head`` ends inside the opening quote of the first image string (``base64Image``, or
    ``inputBase64Image`` for an event with only its input image); ``tail`` starts right after
    the image entry's last image string and closes the body. A body without images is
    ``head`` followed by ``tail``, with nothing spliced between them.
    """

    head: bytes
    tail: bytes
    between: bytes = b'","inputBase64Image":"'  # closes the first image string and opens the input's


OUTPUT_IMAGE_KEY = "base64Image"
INPUT_IMAGE_KEY = "inputBase64Image"


def build_envelope(
    event: Event,
    *,
    label: str | None = None,
    annotations: Mapping[str, Sequence[Any]] | None = None,
    first_image: str | None = OUTPUT_IMAGE_KEY,
) -> Envelope:
    """Serialize everything of ``event`` but its images; empty annotation lists are omitted.

    ``first_image`` names the first image string of the entry: ``base64Image`` (the output
    image, which an input image may follow), ``inputBase64Image`` (an event with only its
    input image), or None for an event without images, sent as ``"images": []`` without
    ``displayImagePosition`` (its label and annotations have no entry to go in).
    Runs on the caller's thread so an unserializable value fails there, by name.
    """
    if first_image not in (OUTPUT_IMAGE_KEY, INPUT_IMAGE_KEY, None):
        raise ValueError(f"first_image {first_image!r} must be {OUTPUT_IMAGE_KEY}, {INPUT_IMAGE_KEY} or None")
    entry: dict[str, Any] = {}
    if label is not None:
        entry["label"] = _label(label)
    for key, items in (annotations or {}).items():
        if key not in ANNOTATION_KEYS:
            raise ValidationError("annotations", key, f"must be one of {', '.join(ANNOTATION_KEYS)}")
        if items:
            entry[key] = items
    before = {"inference_timestamp": event.inference_timestamp, "event_schema": event.schema, "event_data": event.data}
    after: dict[str, Any] = {} if first_image is None else {"displayImagePosition": 0}
    if event.custom_metadata is not None:
        after["custom_metadata"] = event.custom_metadata
    if event.solution is not None:
        after["solution"] = event.solution
    try:
        if first_image is None:
            return Envelope(head=orjson.dumps(before)[:-1] + b',"images":[]', tail=_closing(after))
        head = orjson.dumps(before)[:-1] + b',"images":[{"' + first_image.encode() + b'":"'
        rest = orjson.dumps(entry)
    except orjson.JSONEncodeError as exc:
        raise ValidationError(
            "annotations", str(exc), "must be JSON-serializable (str class names, finite numbers)"
        ) from None
    entry_rest = b"}" if rest == b"{}" else b"," + rest[1:]
    return Envelope(head=head, tail=entry_rest + b"]" + _closing(after))


def _closing(after: dict[str, Any]) -> bytes:
    """The body's last keys and its closing brace, after the images list."""
    return b"," + orjson.dumps(after)[1:] if after else b"}"


def _label(label: Any) -> str:
    try:
        return validate_text("label", label)
    except ValidationError as error:  # the caller's keyword first, then where it goes in the body
        raise ValidationError("label", label, error.rule, wire_field="images[0].label") from None


def splice(envelope: Envelope, output_b64: bytes | None, input_b64: bytes | None = None) -> list[bytes]:
    """The body as chunks: envelope head, the first image, optional input image, envelope tail.

    ``output_b64`` is the first image string (None for a body without images).
    """
    if output_b64 is None:
        return [envelope.head, envelope.tail]
    if input_b64 is None:
        return [envelope.head, output_b64, b'"', envelope.tail]
    return [envelope.head, output_b64, envelope.between, input_b64, b'"', envelope.tail]


@dataclass(frozen=True, slots=True, eq=False)
class Request:
    """A finished body and its ``Idempotency-Key``: what is sent, live or from the spool, wherever it goes."""

    idempotency_key: str
    chunks: Sequence[bytes]
    size: int

    @classmethod
    def of(cls, idempotency_key: str, chunks: Sequence[bytes]) -> Request:
        return cls(idempotency_key, chunks, sum(len(chunk) for chunk in chunks))

    def body(self) -> bytes:
        """The whole body in one buffer, for callers and tests that need it."""
        return b"".join(self.chunks)


@dataclass(frozen=True, slots=True, eq=False)
class Post:
    """A request addressed: the URL, every header, and the body chunks."""

    url: str
    headers: Mapping[str, str] = field(repr=False)  # X-API-Key among them: kept out of logs and errors
    chunks: Sequence[bytes] = field(repr=False)
    size: int

    def body(self) -> bytes:
        return b"".join(self.chunks)


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where requests go and with which key: the writer's, applied when each request is sent."""

    url: str
    api_key: str | None = field(default=None, repr=False)  # a logged Endpoint never shows the key

    def headers(self, idempotency_key: str) -> dict[str, str]:
        return request_headers(idempotency_key, self.api_key)

    def address(self, request: Request) -> Post:
        return Post(self.url, self.headers(request.idempotency_key), request.chunks, request.size)
