"""The cloud protocol of Roboflow's Vision Events block, served beside the v2 API.

The block (``roboflow_core/roboflow_vision_events@v1``, cloud mode) uploads each
image, then posts the event naming the uploads; this module takes both, and
stores the event with the v2 ones (same store, same limits, same viewer).

Routes:

- ``POST /vision-events/upload``: ``multipart/form-data`` with exactly one
  part, named ``file``: a whole JPEG (declared ``image/jpeg`` when the part
  declares a type), within ``--max-body-bytes`` (413) and
  ``--max-image-pixels`` (422). Stored durably, then 201
  ``{"sourceId", "url"}``; ``url`` is where the image can be read back.
- ``GET /vision-events/sources/{sourceId}`` → the uploaded image.
- ``POST /vision-events``: a JSON event (below), stored once per
  ``eventId``: 201 ``{"eventId", "id"}`` (``id``: the event's id in the v2
  API); a repeated ``eventId`` gets the same answer and stores nothing (the
  first event stands, as with ``Idempotency-Key``).

The event: ``eventId`` (1 to 255 printable ASCII characters; the block sends a
uuid4), ``eventType`` (a v2 ``event_schema``), ``useCaseId`` (stored as the
event's ``solution``), ``timestamp`` (ISO-8601 with an offset), ``images``
(``[]`` or one entry: ``sourceId`` (output image) and/or ``inputSourceId``,
optional ``label`` and annotation lists, by the v2 rules), optional
``eventData`` (the v2 ``event_data`` rules; absent means ``{}``), optional
``customMetadata`` (the v2 ``custom_metadata`` rules), and
``displayImagePosition`` (``0``) exactly when there is an image entry. Unknown
keys are refused; a ``sourceId`` that names no upload is a 422 naming it.

Every route here wants the service's API key, when it has one, as
``Authorization: Bearer <key>`` (the app checks it; see :func:`bearer_key`).
Statuses otherwise as ``POST /v2/events``: 400 (bad JSON or query), 408,
413, 415 (wrong ``Content-Type``, or a ``Content-Encoding``), 422, 529; faults
injected by ``--error-rate`` / ``--drop-rate`` / ``--latency`` apply too.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.parser
import email.policy
import functools
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiohttp import web

from fastsend.events import (
    ValidationError,
    validate_custom_metadata,
    validate_event_data,
    validate_inference_timestamp,
    validate_solution,
    validate_text,
)
from fastsend.server.errors import HttpError, json_response
from fastsend.server.queries import check_query
from fastsend.server.store import EventStore
from fastsend.server.structure import parse_object
from fastsend.server.validation import (
    BodyLimits,
    EventBody,
    Image,
    check_image,
    check_keys,
    display_image_position,
    image_entry_details,
    single_image_entry,
)

__all__ = [
    "VISION_EVENTS_PREFIX",
    "Intake",
    "ReceivedBody",
    "VisionEvent",
    "add_vision_events_routes",
    "bearer_key",
    "is_vision_events_path",
    "validate_vision_event",
]

VISION_EVENTS_PREFIX = "/vision-events"
EVENT_ID_MAX_CHARS = 255
UPLOAD_PART = "file"

_REQUIRED_KEYS = ("eventId", "eventType", "useCaseId", "timestamp", "images")
_OPTIONAL_KEYS = ("eventData", "customMetadata", "displayImagePosition")
_SOURCE_KEYS = ("sourceId", "inputSourceId")
# What the shared rules call a field, and what this protocol calls it.
_FIELD_NAMES = {
    "event_schema": "eventType",
    "event_data": "eventData",
    "custom_metadata": "customMetadata",
    "solution": "useCaseId",
    "inference_timestamp": "timestamp",
}

_T = TypeVar("_T")


class ReceivedBody(Protocol):
    """A request body, held against the service's body budget until the request ends."""

    raw: bytearray

    def hold(self, total: int) -> None:
        """Hold ``total`` bytes in all for this request (its body and images it reads); 529 if they do not fit."""


class Intake(Protocol):
    """What these routes borrow from the v2 route: faults, body limits and budget, capacity, the committer."""

    store: EventStore
    limits: BodyLimits

    async def fault(self, request: web.Request) -> web.StreamResponse | None:
        """The answer of an injected fault, or ``None`` to serve the request."""

    def check_encoding(self, request: web.Request, content_type: str) -> None:
        """415 unless the body is ``content_type``, uncompressed."""

    def body(self, request: web.Request) -> AbstractAsyncContextManager[ReceivedBody]:
        """The whole body within the size limit, the budget and the body timeout."""

    async def commit(self, event: EventBody) -> tuple[str, bool]:
        """Store ``event`` durably; ``(id, created)`` (False: its ``vision_event_id`` was stored already)."""

    async def write(self, work: Callable[[], _T]) -> _T:
        """Run a storing ``work`` off the loop, counted against the write capacity (529 past it)."""


@dataclass(frozen=True, slots=True)
class VisionEvent:
    """A ``POST /vision-events`` body that passed every rule; its images are still upload ids."""

    event_id: str
    event_type: str
    use_case_id: str
    timestamp: str
    event_data: dict[str, Any]
    custom_metadata: dict[str, Any] | None
    display_image_position: int | None
    source_id: str | None
    input_source_id: str | None
    image_details: dict[str, Any]


def is_vision_events_path(path: str) -> bool:
    """Whether ``path`` is one of this protocol's (they take the key as a bearer token)."""
    return path == VISION_EVENTS_PREFIX or path.startswith(f"{VISION_EVENTS_PREFIX}/")


def bearer_key(request: web.Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive), else ``None``."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def add_vision_events_routes(app: web.Application, intake: Intake) -> None:
    """Serve the Vision Events cloud routes on ``app``, storing through ``intake``."""

    async def upload(request: web.Request) -> web.StreamResponse:
        return await _upload(request, intake)

    async def source(request: web.Request) -> web.StreamResponse:
        return await _source(request, intake.store)

    async def post_event(request: web.Request) -> web.StreamResponse:
        return await _post_event(request, intake)

    app.router.add_post(f"{VISION_EVENTS_PREFIX}/upload", upload)
    app.router.add_get(f"{VISION_EVENTS_PREFIX}/sources/{{id}}", source)
    app.router.add_post(VISION_EVENTS_PREFIX, post_event)


async def _upload(request: web.Request, intake: Intake) -> web.StreamResponse:
    fault = await intake.fault(request)
    if fault is not None:
        return fault
    check_query(request.query)
    intake.check_encoding(request, "multipart/form-data")
    loop = asyncio.get_running_loop()
    async with intake.body(request) as body:
        read = functools.partial(
            _uploaded_image, request.headers["Content-Type"], body.raw, intake.limits.max_image_pixels
        )
        image = await loop.run_in_executor(None, read)
        source_id = await intake.write(functools.partial(intake.store.add_source, image))
    url = f"{request.url.origin()}{VISION_EVENTS_PREFIX}/sources/{source_id}"
    return json_response({"sourceId": source_id, "url": url}, 201)


def _uploaded_image(content_type: str, raw: bytearray, max_pixels: int) -> Image:
    """The one JPEG of a ``multipart/form-data`` body, read by the standard library's MIME parser."""
    parser = email.parser.BytesFeedParser(policy=email.policy.HTTP)
    parser.feed(f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace"))
    parser.feed(bytes(raw))
    message = parser.close()
    payload = message.get_payload() if message.is_multipart() else None
    parts = [part for part in payload if isinstance(part, Message)] if isinstance(payload, list) else []
    if not parts or message.defects:
        raise HttpError(400, f"body is not valid multipart/form-data ({_defects(message) or 'no parts'})")
    names = [part.get_param("name", header="content-disposition") for part in parts]
    if names != [UPLOAD_PART]:
        raise HttpError(
            422, str(ValidationError("parts", names, f"must be exactly one form-data part, named {UPLOAD_PART!r}"))
        )
    part = parts[0]
    declared = part.get("Content-Type")
    if declared is not None and part.get_content_type() != "image/jpeg":
        raise HttpError(422, str(ValidationError(f"{UPLOAD_PART} Content-Type", declared, "must be image/jpeg")))
    data = part.get_payload(decode=True)
    assert isinstance(data, bytes)  # a non-multipart part decodes to bytes
    try:
        image = check_image(UPLOAD_PART, data, max_pixels, shown=f"<{len(data)} bytes>")
    except ValidationError as exc:
        raise HttpError(422, str(exc)) from None
    if image.content_type != "image/jpeg":
        raise HttpError(422, str(ValidationError(UPLOAD_PART, f"<{len(data)} bytes>", "must be a JPEG, not a PNG")))
    return image


def _defects(message: Message) -> str:
    found = [*message.defects, *(defect for part in message.walk() for defect in part.defects)]
    return "; ".join(type(defect).__name__ for defect in found)


async def _source(request: web.Request, store: EventStore) -> web.StreamResponse:
    check_query(request.query)
    source_id = request.match_info["id"]
    found = await asyncio.get_running_loop().run_in_executor(None, store.source_file, source_id)
    if found is None:
        raise HttpError(404, f"no upload has the sourceId {source_id!r}")
    path, content_type = found
    return web.FileResponse(path, headers={"Content-Type": content_type})


async def _post_event(request: web.Request, intake: Intake) -> web.StreamResponse:
    fault = await intake.fault(request)
    if fault is not None:
        return fault
    check_query(request.query)
    intake.check_encoding(request, "application/json")
    loop = asyncio.get_running_loop()
    async with intake.body(request) as body:
        parsed = await loop.run_in_executor(None, _parse, body.raw, intake.limits)
        files = await loop.run_in_executor(None, _source_files, intake.store, parsed)
        # The images are read into memory to be stored with the event: they count against the budget too.
        body.hold(len(body.raw) + sum(size for _, _, size in files.values()))
        event = await loop.run_in_executor(None, _event_body, parsed, files)
        stored_id, _ = await intake.commit(event)
    return json_response({"eventId": parsed.event_id, "id": stored_id}, 201)


def _parse(raw: bytearray, limits: BodyLimits) -> VisionEvent:
    body = parse_object(raw, limits)
    try:
        return validate_vision_event(body, limits)
    except ValidationError as exc:
        raise HttpError(422, str(exc)) from None


def validate_vision_event(body: Any, limits: BodyLimits | None = None) -> VisionEvent:
    """Check a parsed ``POST /vision-events`` body; raises ``ValidationError`` naming the field (as sent)."""
    check_keys("", body, _REQUIRED_KEYS, _OPTIONAL_KEYS)
    event_id = body["eventId"]
    if not (
        isinstance(event_id, str)
        and 1 <= len(event_id) <= EVENT_ID_MAX_CHARS
        and all("\x21" <= char <= "\x7e" for char in event_id)
    ):
        rule = f"must be a string of 1 to {EVENT_ID_MAX_CHARS} printable ASCII characters (0x21-0x7E)"
        raise ValidationError("eventId", event_id, rule)
    timestamp = body["timestamp"]
    if not isinstance(timestamp, str):
        raise ValidationError("timestamp", timestamp, f"must be an ISO-8601 string, not {type(timestamp).__name__}")
    entry = single_image_entry(body["images"])
    details = {} if entry is None else image_entry_details("images[0]", entry, _SOURCE_KEYS, limits)
    source_ids = [None if entry is None else _source_id(entry, key) for key in _SOURCE_KEYS]
    with _named_as_sent():
        return VisionEvent(
            event_id=event_id,
            event_type=body["eventType"],
            use_case_id=validate_solution(body["useCaseId"]),
            timestamp=validate_inference_timestamp(timestamp),
            event_data=validate_event_data(body["eventType"], body.get("eventData", {})),
            custom_metadata=validate_custom_metadata(body["customMetadata"]) if "customMetadata" in body else None,
            display_image_position=display_image_position(body, has_image=entry is not None),
            source_id=source_ids[0],
            input_source_id=source_ids[1],
            image_details=details,
        )


@contextlib.contextmanager
def _named_as_sent() -> Iterator[None]:
    """Re-raise a shared rule's ``ValidationError`` under this protocol's name for the field."""
    try:
        yield
    except ValidationError as error:
        for shared, own in _FIELD_NAMES.items():
            if error.field.startswith(shared):
                raise ValidationError(own + error.field[len(shared) :], error.value, error.rule) from None
        raise


def _source_id(entry: dict[str, Any], key: str) -> str | None:
    if key not in entry:
        return None
    return validate_text(f"images[0].{key}", entry[key], max_chars=EVENT_ID_MAX_CHARS)


# sourceId -> (the upload's file, its content type, its size)
_SourceFiles = dict[str, tuple[Path, str, int]]


def _source_files(store: EventStore, event: VisionEvent) -> _SourceFiles:
    """The uploads the event names; 422 naming a ``sourceId`` no upload has."""
    files: _SourceFiles = {}
    for key, source_id in zip(_SOURCE_KEYS, (event.source_id, event.input_source_id), strict=True):
        if source_id is None or source_id in files:
            continue
        found = store.source_file(source_id) if _is_uuid(source_id) else None
        if found is None:
            rule = f"must name an image uploaded to {VISION_EVENTS_PREFIX}/upload (no upload has this id)"
            raise HttpError(422, str(ValidationError(f"images[0].{key}", source_id, rule)))
        path, content_type = found
        files[source_id] = (path, content_type, path.stat().st_size)
    return files


def _is_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def _event_body(event: VisionEvent, files: _SourceFiles) -> EventBody:
    def image(source_id: str | None) -> Image | None:
        if source_id is None:
            return None
        path, content_type, _ = files[source_id]
        return Image(path.read_bytes(), content_type)

    return EventBody(
        inference_timestamp=event.timestamp,
        event_schema=event.event_type,
        event_data=event.event_data,
        display_image_position=event.display_image_position,
        output_image=image(event.source_id),
        input_image=image(event.input_source_id),
        image_details=event.image_details,
        custom_metadata=event.custom_metadata,
        solution=event.use_case_id,
        vision_event_id=event.event_id,
    )
