"""The HTTP layer of the reference service: routes, status codes and JSON shapes.

Endpoints:

- ``POST /v2/events`` → 201 ``{"id"}``; 400 (not JSON / not an object / bad
  header), 401, 413, 415, 422 (``ValidationError`` message), 529 (capacity),
  or an injected fault.
- ``GET /v2/events?limit=&offset=&event_schema=`` → ``{"events", "total"}``,
  newest first.
- ``GET /v2/events/{id}`` → one event; ``GET /v2/events/{id}/images/output``
  and ``/images/input`` → the raw image bytes.
- ``GET /healthz`` → ``{"status": "ok"}`` (never needs the API key).

Every error body is ``{"detail": "..."}``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from fastsend.events import ValidationError
from fastsend.server.committer import Committer
from fastsend.server.faults import FaultAction, FaultInjector, Faults
from fastsend.server.store import EventStore, StoredEvent
from fastsend.server.validation import EventBody, validate_body

__all__ = ["DEFAULT_MAX_BODY_BYTES", "create_app", "event_json", "set_faults"]

logger = logging.getLogger("fastsend.server")

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 1000
IDEMPOTENCY_KEY_MAX_CHARS = 255
# How much of the body a dropped request reads before the connection is cut.
_DROP_AFTER_BYTES = 64 * 1024


@dataclass
class _State:
    store: EventStore
    committer: Committer
    api_key: bytes | None
    capacity: int | None
    max_body_bytes: int
    faults: FaultInjector
    writes_in_progress: int = 0


_STATE = web.AppKey("state", _State)


class _HttpError(Exception):
    """Answer with ``status`` and ``{"detail": detail}``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def create_app(
    store: EventStore,
    committer: Committer,
    *,
    api_key: str | None = None,
    capacity: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    faults: Faults | None = None,
) -> web.Application:
    """The aiohttp application serving the v2 events API from ``store``.

    ``api_key`` (``None`` or empty: no authentication) guards every ``/v2``
    route. ``capacity`` is the most writes in progress before a request gets
    529 (``None``: unlimited).
    """
    app = web.Application(middlewares=[_json_errors, _require_api_key])
    app[_STATE] = _State(
        store=store,
        committer=committer,
        api_key=api_key.encode() if api_key else None,
        capacity=capacity,
        max_body_bytes=max_body_bytes,
        faults=FaultInjector(faults),
    )
    app.router.add_post("/v2/events", _post_event)
    app.router.add_get("/v2/events", _list_events)
    app.router.add_get("/v2/events/{id}", _get_event)
    app.router.add_get("/v2/events/{id}/images/{role:output|input}", _get_image)
    app.router.add_get("/healthz", _healthz)
    return app


def set_faults(app: web.Application, faults: Faults | None) -> None:
    """Replace the fault settings (and restart their random sequence); call on the app's loop."""
    app[_STATE].faults = FaultInjector(faults)


def event_json(event: StoredEvent) -> dict[str, Any]:
    """The public JSON shape of a stored event, as the GET endpoints return it.

    It mirrors the POST body (keys the body omitted stay omitted) with the
    base64 images replaced by ``outputImageUrl`` / ``inputImageUrl`` (null
    when there is no input image) and their content types, plus the
    service's ``id``, ``received_at`` and ``idempotency_key``.
    """
    image_url = f"/v2/events/{event.id}/images"
    image = {
        **event.image_details,
        "outputImageUrl": f"{image_url}/output",
        "outputContentType": event.output_content_type,
        "inputImageUrl": f"{image_url}/input" if event.input_content_type else None,
        "inputContentType": event.input_content_type,
    }
    body: dict[str, Any] = {
        "id": event.id,
        "received_at": event.received_at,
        "idempotency_key": event.idempotency_key,
        "inference_timestamp": event.inference_timestamp,
        "event_schema": event.event_schema,
        "event_data": event.event_data,
        "images": [image],
        "displayImagePosition": event.display_image_position,
    }
    if event.custom_metadata is not None:
        body["custom_metadata"] = event.custom_metadata
    if event.solution is not None:
        body["solution"] = event.solution
    return body


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(status: int, detail: str) -> web.Response:
    return _json({"detail": detail}, status)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _json_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _HttpError as exc:
        return _error(exc.status, exc.detail)
    except web.HTTPException as exc:  # routing: unknown path, wrong method
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)


@web.middleware
async def _require_api_key(request: web.Request, handler: _Handler) -> web.StreamResponse:
    expected = request.app[_STATE].api_key
    if expected is not None and request.path.startswith("/v2/"):
        given = request.headers.get("X-API-Key")
        if given is None:
            return _error(401, "missing X-API-Key header")
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
            return _error(401, "invalid X-API-Key")
    return await handler(request)


async def _post_event(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    action = state.faults.draw()
    if action is FaultAction.DROP:
        return await _drop_connection(request)
    if action is FaultAction.ERROR:
        await request.release()
        return _error(state.faults.faults.error_status, state.faults.faults.error_detail)

    if request.content_type != "application/json":
        raise _HttpError(415, f"Content-Type must be application/json, not {request.content_type!r}")
    idempotency_key = _idempotency_key(request)
    raw = await _read_body(request, state.max_body_bytes)
    # Parsing and base64-decoding a large body is CPU work; keep it off the loop.
    event = await asyncio.get_running_loop().run_in_executor(None, _parse_event, raw)

    if state.capacity is not None and state.writes_in_progress >= state.capacity:
        return _error(
            529, f"service at capacity: {state.writes_in_progress} writes in progress (capacity {state.capacity})"
        )
    state.writes_in_progress += 1
    try:
        if state.faults.faults.latency:
            await asyncio.sleep(state.faults.faults.latency)
        try:
            event_id, created = await state.committer.submit(event, idempotency_key)
        except Exception as exc:  # noqa: BLE001 - disk full, I/O or SQLite error; the committer logged it
            return _error(500, f"could not store the event: {exc}")
    finally:
        state.writes_in_progress -= 1
    if not created:
        logger.debug("Idempotency-Key %r repeated; answering with event %s", idempotency_key, event_id)
    return _json({"id": event_id}, 201)


async def _drop_connection(request: web.Request) -> web.StreamResponse:
    declared = request.content_length or 0
    await request.content.read(max(1, min(declared // 2, _DROP_AFTER_BYTES)))
    if request.transport is not None:
        request.transport.abort()
    logger.debug("fault injection: dropped the connection of %s %s", request.method, request.path)
    # Nothing reaches the client; 444 (nginx's "closed without response") only shows in the access log.
    return web.Response(status=444)


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not key or len(key) > IDEMPOTENCY_KEY_MAX_CHARS:
        raise _HttpError(400, f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX_CHARS} characters (got {len(key)})")
    return key


async def _read_body(request: web.Request, limit: int) -> bytes:
    too_large = _HttpError(413, f"request body exceeds {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


def _parse_event(raw: bytes) -> EventBody:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _HttpError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise _HttpError(400, f"body must be a JSON object, not {type(body).__name__}")
    try:
        return validate_body(body)
    except ValidationError as exc:
        raise _HttpError(422, str(exc)) from None


async def _list_events(request: web.Request) -> web.Response:
    limit = _int_query(request, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
    offset = _int_query(request, "offset", 0, 0, None)
    schema = request.query.get("event_schema")
    store = request.app[_STATE].store
    events, total = await asyncio.get_running_loop().run_in_executor(
        None, lambda: store.list_events(limit=limit, offset=offset, event_schema=schema)
    )
    return _json({"events": [event_json(event) for event in events], "total": total})


def _int_query(request: web.Request, name: str, default: int, low: int, high: int | None) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise _HttpError(400, f"{name} must be an integer, not {text!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _HttpError(400, f"{name} must be {bounds}, not {value}")
    return value


async def _get_event(request: web.Request) -> web.Response:
    event_id = request.match_info["id"]
    event = await asyncio.get_running_loop().run_in_executor(None, request.app[_STATE].store.get, event_id)
    if event is None:
        raise _HttpError(404, f"event {event_id!r} not found")
    return _json(event_json(event))


async def _get_image(request: web.Request) -> web.Response:
    event_id, role = request.match_info["id"], request.match_info["role"]
    image = await asyncio.get_running_loop().run_in_executor(None, request.app[_STATE].store.image, event_id, role)
    if image is None:
        raise _HttpError(404, f"event {event_id!r} has no {role} image")
    return web.Response(body=image.data, content_type=image.content_type)


async def _healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})
