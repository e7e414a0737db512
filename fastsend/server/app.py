"""The HTTP layer of the reference service: routes, status codes and JSON shapes.

Endpoints:

- ``POST /v2/events`` → 201 ``{"id"}``; 400 (not JSON / not an object / bad
  ``Idempotency-Key`` / a query parameter), 401, 408 (body not received in
  time), 413, 415 (not ``application/json``, or a ``Content-Encoding``), 422
  (``ValidationError`` message), 529 with ``Retry-After`` (write capacity or
  body memory budget), or an injected fault. A body holding more JSON values
  than one within the limits can gets 413 before it is parsed, and an
  annotation or point list past its limit a 422 naming it (:mod:`.structure`).
- ``GET /v2/events?limit=&offset=&event_schema=&solution=`` → ``{"events",
  "total"}``: event summaries (see :mod:`.index`), newest first.
- ``GET /v2/events/{id}`` → one event; ``GET /v2/events/{id}/images/output``
  and ``/images/input`` → the raw image bytes, streamed from disk.
- ``GET /healthz`` → ``{"status": "ok"}`` (never needs the API key).
- ``GET /metrics`` → Prometheus text (see :mod:`.metrics`); 501 without the
  ``metrics`` extra.
- ``/vision-events`` routes: the cloud protocol of Roboflow's Vision Events
  block (see :mod:`.vision_events`); its events are stored and listed with
  the v2 ones.

Query parameters are strict, like bodies: on every route an unknown or
repeated parameter, or a value breaking its rule, is a 400 naming it
(:mod:`.queries`). Every error body is ``{"detail": "..."}``, a 500 included.
The API key, when there is one, guards ``/v2``, ``/viewer/api`` and
``/metrics`` (in ``X-API-Key``) and ``/vision-events`` (as
``Authorization: Bearer <key>``). Requests whose ``Host`` the :class:`~.hosts.HostPolicy` refuses
get a 421. Every answer carries ``X-Content-Type-Options: nosniff``.

Request bodies are never inflated: the server runs with aiohttp's
``auto_decompress`` off, and a body with a ``Content-Encoding`` gets 415.

Memory: the body budget holds a body's bytes as they arrive, never what its
``Content-Length`` declares, so a connection that declares much and sends
little holds little. A request holds at most about three times its body
(its bytes and the parser's copy of them, then the base64 text and the
decoded images), plus what its annotations cost once parsed: at most some
50 MB at the default limits (:mod:`.structure`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from fastsend.events import EVENT_SCHEMAS, ValidationError
from fastsend.server.committer import Committer
from fastsend.server.errors import HttpError, json_response
from fastsend.server.faults import FaultAction, FaultInjector, Faults
from fastsend.server.hosts import HostPolicy
from fastsend.server.index import EventIndex, EventQuery
from fastsend.server.metrics import CONTENT_TYPE, MISSING_DETAIL, Metrics, service_metrics
from fastsend.server.queries import (
    MAX_OFFSET,
    BadQuery,
    check_query,
    choice_parameter,
    int_parameter,
    solution_parameter,
)
from fastsend.server.store import EventStore, StoredEvent
from fastsend.server.structure import parse_object
from fastsend.server.thumbnails import ThumbnailCache
from fastsend.server.validation import BodyLimits, EventBody, validate_body
from fastsend.server.viewer import add_viewer_routes
from fastsend.server.vision_events import add_vision_events_routes, bearer_key, is_vision_events_path

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
IDEMPOTENCY_KEY_MAX_CHARS = 255
# Routes that hold event data or say how the service runs; they need the API key when there is one.
_GUARDED_PREFIXES = ("/v2/", "/viewer/api/", "/metrics")
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
    index: EventIndex
    committer: Committer
    api_key: bytes | None
    capacity: int | None
    max_body_bytes: int
    limits: BodyLimits
    body_budget: BodyBudget
    body_timeout: float
    faults: FaultInjector
    hosts: HostPolicy
    metrics: Metrics | None
    writes_in_progress: int = 0


_STATE = web.AppKey("state", _State)
_T = TypeVar("_T")


class _Received:
    def __init__(self, raw: bytearray, held: _Held) -> None:
        self.raw = raw
        self._held = held

    def hold(self, total: int) -> None:
        if not self._held.grow_to(total):
            budget = self._held.budget
            raise _at_capacity(
                f"service at capacity: requests in progress hold {budget.in_use} of {budget.limit} bytes;"
                f" this event's body and images ({total} bytes) do not fit"
            )


class _Intake:
    """The v2 route's machinery lent to the Vision Events routes (see :class:`.vision_events.Intake`)."""

    def __init__(self, state: _State) -> None:
        self._state = state
        self.store = state.store
        self.limits = state.limits

    async def fault(self, request: web.Request) -> web.StreamResponse | None:
        return await _injected_fault(request, self._state)

    def check_encoding(self, request: web.Request, content_type: str) -> None:
        _check_encoding(request, content_type)

    @contextlib.asynccontextmanager
    async def body(self, request: web.Request) -> AsyncIterator[_Received]:
        state = self._state
        held = state.body_budget.hold()
        try:
            raw = await _read_body(request, state, held)
            if state.metrics is not None:
                state.metrics.received(len(raw))
            yield _Received(raw, held)
        finally:
            held.release()

    async def commit(self, event: EventBody) -> tuple[str, bool]:
        event_id, created = await _store(self._state, event, None)
        if created and self._state.metrics is not None:
            self._state.metrics.stored(event.image_bytes)
        return event_id, created

    async def write(self, work: Callable[[], _T]) -> _T:
        async with _writing(self._state):
            try:
                return await asyncio.get_running_loop().run_in_executor(None, work)
            except Exception as exc:  # disk full, I/O or SQLite error
                logger.exception("could not store an upload")
                raise HttpError(500, f"could not store the upload: {exc}") from None


def _at_capacity(detail: str) -> HttpError:
    return HttpError(529, detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def create_app(
    store: EventStore,
    committer: Committer,
    *,
    api_key: str | None = None,
    capacity: int | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    body_budget_bytes: int = DEFAULT_BODY_BUDGET_BYTES,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    limits: BodyLimits | None = None,
    hosts: HostPolicy | None = None,
    faults: Faults | None = None,
) -> web.Application:
    """The aiohttp application serving the v2 events API and the viewer from ``store``.

    ``api_key`` (``None`` or empty: no authentication) guards every ``/v2``
    route, the viewer's data and ``/metrics``. ``capacity`` is the most writes
    in progress before a request gets 529 (``None``: unlimited).
    ``body_budget_bytes`` bounds the bodies held at once across requests (a
    body that would pass it gets 529 with ``Retry-After``); ``body_timeout`` is
    how long a body may take to arrive once its headers have (then 408 and the
    connection is closed). ``limits``: the most pixels an image may declare,
    annotations a list may hold and points a polygon may have (default
    :class:`~.validation.BodyLimits`). ``hosts`` says which ``Host`` names are
    answered (default: those of a service bound to 127.0.0.1).
    """
    if body_budget_bytes < max_body_bytes:
        raise ValueError(
            f"body_budget_bytes must be at least max_body_bytes ({max_body_bytes}), not {body_budget_bytes}"
        )
    app = web.Application(middlewares=[_count_answers, _json_errors, _check_host, _require_api_key])
    index = EventIndex(store.data_dir / "events.sqlite3")
    thumbnails = ThumbnailCache(store)
    budget = BodyBudget(body_budget_bytes)
    app[_STATE] = _State(
        store=store,
        index=index,
        committer=committer,
        api_key=api_key.encode() if api_key else None,
        capacity=capacity,
        max_body_bytes=max_body_bytes,
        limits=limits or BodyLimits(),
        body_budget=budget,
        body_timeout=body_timeout,
        faults=FaultInjector(faults),
        hosts=hosts or HostPolicy("127.0.0.1"),
        metrics=service_metrics(store.count, lambda: budget.in_use, body_budget_bytes),
    )
    _add_routes(app, index, thumbnails)
    return app


def _add_routes(app: web.Application, index: EventIndex, thumbnails: ThumbnailCache) -> None:
    async def close(_: web.Application) -> None:
        thumbnails.close()
        index.close()

    app.on_cleanup.append(close)
    app.on_response_prepare.append(_common_headers)
    app.router.add_post("/v2/events", _post_event)
    app.router.add_get("/v2/events", _list_events)
    app.router.add_get("/v2/events/{id}", _get_event)
    app.router.add_get("/v2/events/{id}/images/{role:output|input}", _get_image)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/metrics", _metrics)
    add_viewer_routes(app, index, thumbnails)
    add_vision_events_routes(app, _Intake(app[_STATE]))


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
    when the event has no such image) and their content types, plus the
    service's ``id``, ``received_at`` and ``idempotency_key``. An event
    without images has ``"images": []`` and no ``displayImagePosition``. An
    event that came through the Vision Events API has its ``eventId`` as
    ``vision_event_id`` and its ``useCaseId`` as ``solution``.
    """
    body: dict[str, Any] = {
        "id": event.id,
        "received_at": event.received_at,
        "idempotency_key": event.idempotency_key,
        "inference_timestamp": event.inference_timestamp,
        "event_schema": event.event_schema,
        "event_data": event.event_data,
        "images": [_image_json(event)] if event.has_image else [],
    }
    if event.display_image_position is not None:
        body["displayImagePosition"] = event.display_image_position
    if event.custom_metadata is not None:
        body["custom_metadata"] = event.custom_metadata
    if event.solution is not None:
        body["solution"] = event.solution
    if event.vision_event_id is not None:
        body["vision_event_id"] = event.vision_event_id
    return body


def _image_json(event: StoredEvent) -> dict[str, Any]:
    image_url = f"/v2/events/{event.id}/images"
    return {
        **event.image_details,
        "outputImageUrl": f"{image_url}/output" if event.output_content_type else None,
        "outputContentType": event.output_content_type,
        "inputImageUrl": f"{image_url}/input" if event.input_content_type else None,
        "inputContentType": event.input_content_type,
    }


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_response({"detail": detail}, status, headers)


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def _common_headers(request: web.Request, response: web.StreamResponse) -> None:
    # No browser may read an answer as anything but its declared type (an image as HTML, say).
    response.headers["X-Content-Type-Options"] = "nosniff"


@web.middleware
async def _count_answers(request: web.Request, handler: _Handler) -> web.StreamResponse:
    response = await handler(request)
    metrics = request.app[_STATE].metrics
    if metrics is not None:
        resource = request.match_info.route.resource
        metrics.answered(resource.canonical if resource is not None else "unmatched", response.status)
    return response


@web.middleware
async def _json_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HttpError as exc:
        response = _error(exc.status, exc.detail, exc.headers)
        if exc.close:
            # Send it now and drop the connection, rather than let aiohttp wait for the rest of the body.
            response.force_close()
            await response.prepare(request)
            await response.write_eof()
            request.protocol.force_close()
        return response
    except BadQuery as exc:
        return _error(400, str(exc))
    except web.HTTPException as exc:  # routing: unknown path, wrong method
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason)
    except Exception:
        logger.exception("error handling %s %s", request.method, request.path)
        return _error(500, "internal error; the service log has the details")


@web.middleware
async def _check_host(request: web.Request, handler: _Handler) -> web.StreamResponse:
    hosts = request.app[_STATE].hosts
    host = request.headers.get("Host")
    if not hosts.admits(host):
        assert host is not None  # a request without Host is admitted
        return _error(421, hosts.refusal(host))
    return await handler(request)


@web.middleware
async def _require_api_key(request: web.Request, handler: _Handler) -> web.StreamResponse:
    expected = request.app[_STATE].api_key
    if expected is not None and is_vision_events_path(request.path):
        # The Vision Events API takes the same key as a bearer token.
        given_key, missing = bearer_key(request), "missing Authorization: Bearer header"
        headers = {"WWW-Authenticate": "Bearer"}
    elif expected is not None and request.path.startswith(_GUARDED_PREFIXES):
        given_key, missing, headers = request.headers.get("X-API-Key"), "missing X-API-Key header", None
    else:
        return await handler(request)
    if given_key is None:
        return _error(401, missing, headers)
    if not hmac.compare_digest(given_key.encode("utf-8", "surrogateescape"), expected):
        return _error(401, "invalid API key" if headers else "invalid X-API-Key", headers)
    return await handler(request)


async def _post_event(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    fault = await _injected_fault(request, state)
    if fault is not None:
        return fault

    check_query(request.query)
    _check_encoding(request)
    idempotency_key = _idempotency_key(request)
    # The body's bytes stay held until the event is stored: the parsed form lives that long too.
    held = state.body_budget.hold()
    try:
        raw = await _read_body(request, state, held)
        if state.metrics is not None:
            state.metrics.received(len(raw))
        # Parsing and base64-decoding a large body is CPU work; keep it off the loop.
        parse = functools.partial(_parse_event, raw, state.limits)
        event = await asyncio.get_running_loop().run_in_executor(None, parse)
        del raw, parse
        event_id, created = await _store(state, event, idempotency_key)
    finally:
        held.release()
    if not created:
        logger.debug("Idempotency-Key %r repeated; answering with event %s", idempotency_key, event_id)
    elif state.metrics is not None:
        state.metrics.stored(event.image_bytes)
    return json_response({"id": event_id}, 201)


async def _injected_fault(request: web.Request, state: _State) -> web.StreamResponse | None:
    """The answer of an injected fault (a dropped connection, an error), or ``None`` to serve the request."""
    action = state.faults.draw()
    if action is FaultAction.DROP:
        return await _drop_connection(request)
    if action is FaultAction.ERROR:
        await request.release()
        return _error(state.faults.faults.error_status, state.faults.faults.error_detail)
    return None


def _check_encoding(request: web.Request, content_type: str = "application/json") -> None:
    """415 unless the body is ``content_type`` as it is: the API compresses nothing, and inflating is a bomb's
    way in."""
    if request.content_type != content_type:
        raise HttpError(415, f"Content-Type must be {content_type}, not {request.content_type!r}")
    encoding = request.headers.get("Content-Encoding", "identity")
    if encoding.strip().lower() != "identity":
        # Closed rather than drained: what follows is a compressed body nobody will read.
        raise HttpError(
            415,
            f"Content-Encoding must be absent (identity), not {encoding[:100]!r}: send the body uncompressed",
            close=True,
        )


async def _store(state: _State, event: EventBody, idempotency_key: str | None) -> tuple[str, bool]:
    async with _writing(state):
        try:
            return await state.committer.submit(event, idempotency_key)
        except Exception as exc:  # noqa: BLE001 - disk full, I/O or SQLite error; the committer logged it
            raise HttpError(500, f"could not store the event: {exc}") from None


@contextlib.asynccontextmanager
async def _writing(state: _State) -> AsyncIterator[None]:
    """One write in progress, within the capacity (else 529), after the injected latency."""
    if state.capacity is not None and state.writes_in_progress >= state.capacity:
        raise _at_capacity(
            f"service at capacity: {state.writes_in_progress} writes in progress (capacity {state.capacity})"
        )
    state.writes_in_progress += 1
    try:
        if state.faults.faults.latency:
            await asyncio.sleep(state.faults.faults.latency)
        yield
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
        raise HttpError(400, str(ValidationError("Idempotency-Key", key, rule)))
    return key


async def _read_body(request: web.Request, state: _State, held: _Held) -> bytearray:
    """The whole body, within ``max_body_bytes`` (413), the body budget (529) and the body timeout (408)."""
    limit = state.max_body_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        raise HttpError(413, f"request body exceeds {limit} bytes")
    try:
        return await asyncio.wait_for(_receive_body(request, limit, held), state.body_timeout)
    except asyncio.TimeoutError:
        raise HttpError(
            408, f"request body not received within {state.body_timeout:g} s of its headers", close=True
        ) from None


async def _receive_body(request: web.Request, limit: int, held: _Held) -> bytearray:
    # Held as it arrives, not as declared: a client declaring 64 MiB and sending a byte holds a byte.
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > limit:
            raise HttpError(413, f"request body exceeds {limit} bytes")
        if not held.grow_to(len(body)):
            del body
            raise await _over_budget(request, held)
    return body


async def _over_budget(request: web.Request, held: _Held) -> HttpError:
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


def _parse_event(raw: bytearray, limits: BodyLimits) -> EventBody:
    """The validated event in ``raw``, which is emptied once parsed (its memory then serves the decoding)."""
    try:
        body = parse_object(raw, limits)  # held to the limits first: what parsing may cost is bounded by them
    finally:
        raw.clear()
    try:
        return validate_body(body, limits=limits)
    except ValidationError as exc:
        raise HttpError(422, str(exc)) from None


async def _list_events(request: web.Request) -> web.Response:
    query = check_query(request.query, "limit", "offset", "event_schema", "solution")
    page = EventQuery(
        limit=int_parameter(query, "limit", DEFAULT_LIST_LIMIT, 1, MAX_LIST_LIMIT),
        offset=int_parameter(query, "offset", 0, 0, MAX_OFFSET),
        schema=choice_parameter(query, "event_schema", EVENT_SCHEMAS),
        solution=solution_parameter(query, "solution"),
    )
    found = await asyncio.get_running_loop().run_in_executor(None, request.app[_STATE].index.page, page)
    return json_response({"events": found["events"], "total": found["total"]})


async def _get_event(request: web.Request) -> web.Response:
    check_query(request.query)
    event_id = request.match_info["id"]
    event = await asyncio.get_running_loop().run_in_executor(None, request.app[_STATE].store.get, event_id)
    if event is None:
        raise HttpError(404, f"event {event_id!r} not found")
    return json_response(event_json(event))


async def _get_image(request: web.Request) -> web.StreamResponse:
    check_query(request.query)
    event_id, role = request.match_info["id"], request.match_info["role"]
    store = request.app[_STATE].store
    found = await asyncio.get_running_loop().run_in_executor(None, _image_file, store, event_id, role)
    if found is None:
        raise HttpError(404, f"event {event_id!r} has no {role} image")
    path, content_type = found
    # Streamed from disk (sendfile): a client that never reads its answer holds no copy of the file.
    return web.FileResponse(path, headers={"Content-Type": content_type})


def _image_file(store: EventStore, event_id: str, role: str) -> tuple[Path, str] | None:
    found = store.image_file(event_id, role)
    if found is not None:
        # Checked here: a file found missing once the answer has started could no longer be a JSON 500.
        os.stat(found[0])
    return found


async def _healthz(request: web.Request) -> web.Response:
    # Its query is ignored: probes add cache-busting parameters.
    return json_response({"status": "ok"})


async def _metrics(request: web.Request) -> web.Response:
    check_query(request.query)
    metrics = request.app[_STATE].metrics
    if metrics is None:
        raise HttpError(501, MISSING_DETAIL)
    text = await asyncio.get_running_loop().run_in_executor(None, metrics.exposition)
    return web.Response(body=text, headers={"Content-Type": CONTENT_TYPE})
