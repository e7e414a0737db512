"""The HTTP layer of the reference service: routes, status codes and JSON shapes.

Endpoints:

- ``POST /v2/events`` → 201 ``{"id"}``; 400 (not JSON / not an object / bad
  ``Idempotency-Key`` / a query parameter), 401, 408 (body not received in
  time), 413, 415, 422 (``ValidationError`` message), 529 with
  ``Retry-After`` (write capacity or body memory budget), or an injected fault.
- ``GET /v2/events?limit=&offset=&event_schema=`` → ``{"events", "total"}``,
  newest first.
- ``GET /v2/events/{id}`` → one event; ``GET /v2/events/{id}/images/output``
  and ``/images/input`` → the raw image bytes.
- ``GET /healthz`` → ``{"status": "ok"}`` (never needs the API key).

Query parameters are strict, like bodies: on every ``/v2`` route an unknown or
repeated parameter, or a value breaking its rule, is a 400 naming it.
Every error body is ``{"detail": "..."}``, a 500 included.
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

from fastsend.events import EVENT_SCHEMAS, ValidationError
from fastsend.server.committer import Committer
from fastsend.server.faults import FaultAction, FaultInjector, Faults
from fastsend.server.store import EventStore, StoredEvent
from fastsend.server.validation import EventBody, validate_body
from fastsend.server.viewer import add_viewer_routes

__all__ = [
    "DEFAULT_BODY_BUDGET_BYTES",
    "DEFAULT_BODY_TIMEOUT",
    "DEFAULT_MAX_BODY_BYTES",
    "body_bytes_held",
    "create_app",
    "event_json",
    "set_faults",
]

logger = logging.getLogger("fastsend.server")

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_BODY_BUDGET_BYTES = 256 * 1024 * 1024
DEFAULT_BODY_TIMEOUT = 60.0
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 1000
MAX_LIST_OFFSET = 2**63 - 1  # SQLite's largest integer
IDEMPOTENCY_KEY_MAX_CHARS = 255
# What a client is told to wait before retrying a 529.
RETRY_AFTER_SECONDS = 1
# How much of the body a dropped request reads before the connection is cut.
_DROP_AFTER_BYTES = 64 * 1024


class BodyBudget:
    """Bytes of request bodies held at once (being received, parsed or stored), across all requests.

    Used from the event loop only, so it needs no lock.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0

    def hold(self) -> _Held:
        """A holding of zero bytes, to grow as a body arrives and release when the request ends."""
        return _Held(self)


class _Held:
    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.amount = 0

    def grow_to(self, amount: int) -> bool:
        """Hold ``amount`` bytes in all; False (holding nothing more) when the budget cannot cover it."""
        extra = amount - self.amount
        if extra <= 0:
            return True
        if self.budget.in_use + extra > self.budget.limit:
            return False
        self.budget.in_use += extra
        self.amount = amount
        return True

    def release(self) -> None:
        self.budget.in_use -= self.amount
        self.amount = 0


@dataclass
class _State:
    store: EventStore
    committer: Committer
    api_key: bytes | None
    capacity: int | None
    max_body_bytes: int
    body_budget: BodyBudget
    body_timeout: float
    faults: FaultInjector
    writes_in_progress: int = 0


_STATE = web.AppKey("state", _State)


class _HttpError(Exception):
    """Answer with ``status``, ``{"detail": detail}`` and ``headers``; ``close``: then close the connection."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None, close: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.close = close


def _at_capacity(detail: str) -> _HttpError:
    return _HttpError(529, detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def create_app(
    store: EventStore,
    committer: Committer,
    *,
    api_key: str | None = None,
    capacity: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_budget_bytes: int = DEFAULT_BODY_BUDGET_BYTES,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    faults: Faults | None = None,
) -> web.Application:
    """The aiohttp application serving the v2 events API from ``store``.

    ``api_key`` (``None`` or empty: no authentication) guards every ``/v2``
    route. ``capacity`` is the most writes in progress before a request gets
    529 (``None``: unlimited). ``body_budget_bytes`` bounds the bodies held
    at once across requests (a body that would pass it gets 529 with
    ``Retry-After``); ``body_timeout`` is how long a body may take to arrive
    once its headers have (then 408 and the connection is closed).
    """
    if body_budget_bytes < max_body_bytes:
        raise ValueError(
            f"body_budget_bytes must be at least max_body_bytes ({max_body_bytes}), not {body_budget_bytes}"
        )
    app = web.Application(middlewares=[_json_errors, _require_api_key])
    app[_STATE] = _State(
        store=store,
        committer=committer,
        api_key=api_key.encode() if api_key else None,
        capacity=capacity,
        max_body_bytes=max_body_bytes,
        body_budget=BodyBudget(body_budget_bytes),
        body_timeout=body_timeout,
        faults=FaultInjector(faults),
    )
    app.router.add_post("/v2/events", _post_event)
    app.router.add_get("/v2/events", _list_events)
    app.router.add_get("/v2/events/{id}", _get_event)
    app.router.add_get("/v2/events/{id}/images/{role:output|input}", _get_image)
    app.router.add_get("/healthz", _healthz)
    add_viewer_routes(app, store, api_key=api_key)
    return app


def set_faults(app: web.Application, faults: Faults | None) -> None:
    """Replace the fault settings (and restart their random sequence); call on the app's loop."""
    app[_STATE].faults = FaultInjector(faults)


def body_bytes_held(app: web.Application) -> int:
    """Bytes of request bodies the app holds now, against its body budget."""
    return app[_STATE].body_budget.in_use


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


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    response = _json({"detail": detail}, status)
    response.headers.update(headers or {})
    return response


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _json_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except _HttpError as exc:
        response = _error(exc.status, exc.detail, exc.headers)
        if exc.close:
            # Send it now and drop the connection, rather than let aiohttp wait for the rest of the body.
            response.force_close()
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()
        return response
    except web.HTTPException as exc:  # routing: unknown path, wrong method
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except Exception:
        logger.exception("error handling %s %s", request.method, request.path)
        return _error(500, "internal error; the service log has the details")


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

    _query(request)
    if request.content_type != "application/json":
        raise _HttpError(415, f"Content-Type must be application/json, not {request.content_type!r}")
    idempotency_key = _idempotency_key(request)
    # The body's bytes stay held until the event is stored: the parsed form lives that long too.
    held = state.body_budget.hold()
    try:
        raw = await _read_body(request, state, held)
        # Parsing and base64-decoding a large body is CPU work; keep it off the loop.
        event = await asyncio.get_running_loop().run_in_executor(None, _parse_event, raw)
        del raw
        event_id, created = await _store(state, event, idempotency_key)
    finally:
        held.release()
    if not created:
        logger.debug("Idempotency-Key %r repeated; answering with event %s", idempotency_key, event_id)
    return _json({"id": event_id}, 201)


async def _store(state: _State, event: EventBody, idempotency_key: str | None) -> tuple[str, bool]:
    if state.capacity is not None and state.writes_in_progress >= state.capacity:
        raise _at_capacity(
            f"service at capacity: {state.writes_in_progress} writes in progress (capacity {state.capacity})"
        )
    state.writes_in_progress += 1
    try:
        if state.faults.faults.latency:
            await asyncio.sleep(state.faults.faults.latency)
        try:
            return await state.committer.submit(event, idempotency_key)
        except Exception as exc:  # noqa: BLE001 - disk full, I/O or SQLite error; the committer logged it
            raise _HttpError(500, f"could not store the event: {exc}") from None
    finally:
        state.writes_in_progress -= 1


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
    # aiohttp decodes header bytes as UTF-8 with surrogateescape: any byte outside 0x21-0x7E,
    # valid UTF-8 or not, shows up here as a character outside that range.
    if not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX_CHARS or not all("\x21" <= char <= "\x7e" for char in key):
        rule = f"must be 1 to {IDEMPOTENCY_KEY_MAX_CHARS} printable ASCII characters (0x21-0x7E)"
        raise _HttpError(400, str(ValidationError("Idempotency-Key", key, rule)))
    return key


async def _read_body(request: web.Request, state: _State, held: _Held) -> bytearray:
    """The whole body, within ``max_body_bytes`` (413), the body budget (529) and the body timeout (408)."""
    limit = state.max_body_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _HttpError(413, f"request body exceeds {limit} bytes")
    try:
        return await asyncio.wait_for(_receive_body(request, limit, held), state.body_timeout)
    except asyncio.TimeoutError:
        raise _HttpError(
            408, f"request body not received within {state.body_timeout:g} s of its headers", close=True
        ) from None


async def _receive_body(request: web.Request, limit: int, held: _Held) -> bytearray:
    # A declared length is held before reading; a chunked body is held as it arrives.
    if request.content_length is not None and not held.grow_to(request.content_length):
        raise await _over_budget(request, held)
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > limit:
            raise _HttpError(413, f"request body exceeds {limit} bytes")
        if not held.grow_to(len(body)):
            del body
            raise await _over_budget(request, held)
    return body


async def _over_budget(request: web.Request, held: _Held) -> _HttpError:
    budget = held.budget
    held.release()
    # Read the rest and drop it (memory stays flat) so the client is able to read the answer.
    while await request.content.readany():
        pass
    size = f"of {request.content_length} bytes" if request.content_length is not None else "(chunked)"
    return _at_capacity(
        f"service at capacity: request bodies in progress hold {budget.in_use} of {budget.limit} bytes;"
        f" this body {size} does not fit"
    )


def _parse_event(raw: bytes | bytearray) -> EventBody:
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
    query = _query(request, "limit", "offset", "event_schema")
    limit = _int_parameter(query, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT)
    offset = _int_parameter(query, "offset", 0, 0, MAX_LIST_OFFSET)
    schema = query.get("event_schema")
    if schema is not None and schema not in EVENT_SCHEMAS:
        raise _bad_parameter("event_schema", schema, f"must be one of {', '.join(EVENT_SCHEMAS)}")
    store = request.app[_STATE].store
    events, total = await asyncio.get_running_loop().run_in_executor(
        None, lambda: store.list_events(limit=limit, offset=offset, event_schema=schema)
    )
    return _json({"events": [event_json(event) for event in events], "total": total})


def _query(request: web.Request, *allowed: str) -> dict[str, str]:
    """The query of a ``/v2`` route as a dict; an unknown or repeated parameter is a 400."""
    query: dict[str, str] = {}
    for name, value in request.query.items():
        if name not in allowed:
            takes = f"takes only {', '.join(allowed)}" if allowed else "takes no query parameters"
            raise _bad_parameter(name, value, f"is not a parameter of this endpoint ({takes})")
        if name in query:
            raise _bad_parameter(name, value, "is given more than once")
        query[name] = value
    return query


def _int_parameter(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    # ASCII digits only: int() would also take "+5", " 5", "5_0" and non-ASCII digits.
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise _bad_parameter(name, text, f"must be an integer from {low} to {high}")
    return int(text)


def _bad_parameter(name: str, value: str, rule: str) -> _HttpError:
    return _HttpError(400, str(ValidationError(f"query parameter {name}", value, rule)))


async def _get_event(request: web.Request) -> web.Response:
    _query(request)
    event_id = request.match_info["id"]
    event = await asyncio.get_running_loop().run_in_executor(None, request.app[_STATE].store.get, event_id)
    if event is None:
        raise _HttpError(404, f"event {event_id!r} not found")
    return _json(event_json(event))


async def _get_image(request: web.Request) -> web.Response:
    _query(request)
    event_id, role = request.match_info["id"], request.match_info["role"]
    image = await asyncio.get_running_loop().run_in_executor(None, request.app[_STATE].store.image, event_id, role)
    if image is None:
        raise _HttpError(404, f"event {event_id!r} has no {role} image")
    return web.Response(body=image.data, content_type=image.content_type)


async def _healthz(request: web.Request) -> web.Response:
    # Its query is ignored: probes add cache-busting parameters.
    return _json({"status": "ok"})
