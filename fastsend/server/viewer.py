"""The event viewer: a page at ``/`` and the read-only JSON it reads.

Routes (added to the service's app by :func:`add_viewer_routes`):

- ``GET /`` → the page; ``GET /viewer/static/…`` → its scripts and styles.
  Neither holds any event data, so neither needs the API key.
- ``GET /viewer/api/events?limit=&offset=&schema=&since=&until=&q=`` →
  ``{"events", "total", "newest", "schemas"}``: a page of event summaries,
  newest first, and the schema names the filter offers.
  ``since`` / ``until`` bound the inference time (ISO-8601 with a UTC
  offset; ``until`` excluded); ``q`` matches text in the external id or in
  the custom metadata's keys and values (case-insensitive for ASCII).
- ``GET /viewer/api/newest`` → ``{"newest"}``: the sequence number of the
  last stored event (0 when none); the page polls it to show new events.
- ``GET /viewer/api/events/{id}/thumbnail`` → a JPEG at most
  256 pixels on its longer side, made once and cached (see :mod:`.thumbnails`).
- ``GET /viewer/api/timeline?schema=&since=&until=&q=`` → the matching
  events counted per schema in up to 60 buckets over the filtered range
  (see :mod:`.timeline`), for the page's chart.

The full event and its images come from the v2 API (``GET /v2/events/{id}``).

API key: when the service has one, the ``/viewer/api`` routes want it in
``X-API-Key`` just like ``/v2``. The page asks for it once, keeps it in the
tab's ``sessionStorage`` and sends it as that header, fetching images too,
so the key never appears in a URL, a log line or the browser history.

Queries run on the viewer's own read-only SQLite connection (WAL lets them
run while the service writes). Paging and the schema filter use the store's
indexes (``seq``, ``(event_schema, seq)``); the time and text filters scan,
which at tens of thousands of events stays in the milliseconds.
"""

from __future__ import annotations

import asyncio
import hmac
import sqlite3
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from fastsend.events import EVENT_SCHEMAS
from fastsend.server.store import EventStore
from fastsend.server.thumbnails import ThumbnailCache
from fastsend.server.timeline import count_over_time

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "EventQuery", "ViewerIndex", "add_viewer_routes", "parse_query"]

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_QUERY_CHARS = 200

_ANNOTATION_LISTS = ("objectDetections", "instanceSegmentations", "keypoints", "classifications")

# The page runs only its own scripts and loads nothing from elsewhere; images arrive as blob: URLs.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self';"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class EventQuery:
    """One page of the event list: filters plus paging. ``None`` filters match everything."""

    limit: int = DEFAULT_PAGE_SIZE
    offset: int = 0
    schema: str | None = None
    since: str | None = None
    until: str | None = None
    text: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        """The SQL ``WHERE`` clause (empty when unfiltered) and its parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        if self.schema is not None:
            clauses.append("event_schema = ?")
            params.append(self.schema)
        if self.since is not None:
            clauses.append("julianday(inference_timestamp) >= julianday(?)")
            params.append(self.since)
        if self.until is not None:
            clauses.append("julianday(inference_timestamp) < julianday(?)")
            params.append(self.until)
        if self.text:
            clause, count = _text_clause(self.text)
            clauses.append(clause)
            params += [_like_pattern(self.text)] * count
        return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


_IN_EXTERNAL_ID = "json_extract(event_data, '$.externalId') LIKE ? ESCAPE '\\'"
# json_each reads the metadata's keys and values as text, not as JSON with its quoting and escapes;
# true and false read as words, not as SQLite's 1 and 0.
_IN_METADATA = (
    "EXISTS (SELECT 1 FROM json_each(custom_metadata) WHERE key LIKE ? ESCAPE '\\'"
    " OR (CASE type WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' ELSE value END) LIKE ? ESCAPE '\\')"
)
_IN_TEXT = "event_data LIKE ? ESCAPE '\\'", "custom_metadata LIKE ? ESCAPE '\\'"


def _text_clause(text: str) -> tuple[str, int]:
    """The SQL matching ``text`` in the external id or the metadata, and how many LIKE patterns it takes."""
    if any(char in '"\\' or char < " " for char in text):
        return f"({_IN_EXTERNAL_ID} OR {_IN_METADATA})", 3
    # Text that JSON writes as it is: first look for it in the stored JSON text, which is cheap,
    # and parse only the rows that have it.
    in_data, in_metadata = _IN_TEXT
    return f"(({in_data} AND {_IN_EXTERNAL_ID}) OR ({in_metadata} AND {_IN_METADATA}))", 5


_SUMMARY_COLUMNS = ", ".join(
    [
        "seq",
        "id",
        "received_at",
        "inference_timestamp",
        "event_schema",
        "event_data",
        "json_extract(image_details, '$.label')",
        "input_content_type IS NOT NULL",
        *(f"json_array_length(image_details, '$.{name}')" for name in _ANNOTATION_LISTS),
    ]
)


class ViewerIndex:
    """Read-only queries over the store's database, on a connection of its own."""

    def __init__(self, database: Path) -> None:
        self._connection = sqlite3.connect(
            f"{database.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )
        self._connection.execute("PRAGMA busy_timeout=5000")
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._connection.close()

    def page(self, query: EventQuery) -> dict[str, Any]:
        """``{"events": [summary, …], "total": matching, "newest": seq}``, newest first."""
        where, params = query.where()
        with self._lock:
            # One read transaction, so the page, its total and "newest" agree with each other.
            self._connection.execute("BEGIN")
            try:
                rows = self._connection.execute(
                    f"SELECT {_SUMMARY_COLUMNS} FROM events {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                    [*params, query.limit, query.offset],
                ).fetchall()
                (total,) = self._connection.execute(f"SELECT COUNT(*) FROM events {where}", params).fetchone()
                newest = self._newest()
            finally:
                self._connection.execute("COMMIT")
        return {"events": [_summary(row) for row in rows], "total": total, "newest": newest}

    def timeline(self, query: EventQuery) -> dict[str, Any]:
        """The events matching ``query``'s filters counted over time (see :func:`.timeline.count_over_time`)."""
        where, params = query.where()
        with self._lock:
            return count_over_time(self._connection, where, params, query.since, query.until)

    def newest(self) -> int:
        """The sequence number of the last stored event, 0 when there is none."""
        with self._lock:
            return self._newest()

    def _newest(self) -> int:
        (seq,) = self._connection.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        return int(seq)


def _summary(row: tuple[Any, ...]) -> dict[str, Any]:
    seq, event_id, received_at, timestamp, schema, data, label, has_input, *counts = row
    return {
        "seq": seq,
        "id": event_id,
        "received_at": received_at,
        "inference_timestamp": timestamp,
        "event_schema": schema,
        "event_data": orjson.loads(data),
        "label": label,
        "has_input_image": bool(has_input),
        "annotations": {name: count for name, count in zip(_ANNOTATION_LISTS, counts, strict=True) if count},
    }


def add_viewer_routes(app: web.Application, store: EventStore, *, api_key: str | None = None) -> None:
    """Serve the viewer page at ``/`` and its read-only API under ``/viewer`` from ``store``.

    ``api_key`` (``None`` or empty: none) guards the ``/viewer/api`` routes as it guards ``/v2``.
    """
    index = ViewerIndex(store.data_dir / "events.sqlite3")
    thumbnails = ThumbnailCache(store)
    guard = _key_guard(api_key.encode() if api_key else None)

    async def close_index(_: web.Application) -> None:
        index.close()

    app.on_cleanup.append(close_index)
    app.router.add_get("/", _page)
    app.router.add_static("/viewer/static/", STATIC_DIR)
    app.router.add_get("/viewer/api/events", guard(lambda request: _list(request, index)))
    app.router.add_get("/viewer/api/newest", guard(lambda request: _newest(index)))
    app.router.add_get("/viewer/api/events/{id}/thumbnail", guard(lambda request: _thumbnail(request, thumbnails)))
    app.router.add_get("/viewer/api/timeline", guard(lambda request: _timeline(request, index)))


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _key_guard(expected: bytes | None) -> Callable[[_Handler], _Handler]:
    def guard(handler: _Handler) -> _Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if expected is not None:
                given = request.headers.get("X-API-Key")
                if given is None:
                    return _json({"detail": "missing X-API-Key header"}, 401)
                if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected):
                    return _json({"detail": "invalid X-API-Key"}, 401)
            return await handler(request)

        return guarded

    return guard


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def _page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)


class _BadQuery(ValueError):
    pass


async def _list(request: web.Request, index: ViewerIndex) -> web.Response:
    try:
        query = parse_query(request.query)
    except _BadQuery as exc:
        return _json({"detail": str(exc)}, 400)
    page = await asyncio.get_running_loop().run_in_executor(None, index.page, query)
    return _json({**page, "schemas": list(EVENT_SCHEMAS)})


def parse_query(params: Any) -> EventQuery:
    """An :class:`EventQuery` from the list route's query parameters; raises ``ValueError`` naming the bad one."""
    schema = params.get("schema") or None
    if schema is not None and schema not in EVENT_SCHEMAS:
        raise _BadQuery(f"schema must be one of {', '.join(EVENT_SCHEMAS)}, not {schema!r}")
    text = params.get("q") or None
    if text is not None and len(text) > MAX_QUERY_CHARS:
        raise _BadQuery(f"q must be at most {MAX_QUERY_CHARS} characters, not {len(text)}")
    return EventQuery(
        limit=_int(params, "limit", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE),
        offset=_int(params, "offset", 0, 0, None),
        schema=schema,
        since=_instant(params, "since"),
        until=_instant(params, "until"),
        text=text,
    )


def _int(params: Any, name: str, default: int, low: int, high: int | None) -> int:
    text = params.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise _BadQuery(f"{name} must be an integer, not {text!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _BadQuery(f"{name} must be {bounds}, not {value}")
    return value


def _instant(params: Any, name: str) -> str | None:
    """The parameter as a UTC ISO-8601 string SQLite's ``julianday`` reads, or ``None`` when absent."""
    text = params.get(name)
    if not text:
        return None
    try:
        # Python 3.10's fromisoformat does not know the "Z" suffix.
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
    except ValueError:
        raise _BadQuery(f"{name} must be an ISO-8601 timestamp, not {text!r}") from None
    if parsed.tzinfo is None:
        raise _BadQuery(f"{name} must carry a UTC offset, e.g. +00:00, not {text!r}")
    return parsed.astimezone(timezone.utc).isoformat()


async def _newest(index: ViewerIndex) -> web.Response:
    newest = await asyncio.get_running_loop().run_in_executor(None, index.newest)
    return _json({"newest": newest})


_TIMELINE_PARAMETERS = ("schema", "since", "until", "q")


async def _timeline(request: web.Request, index: ViewerIndex) -> web.Response:
    try:
        query = _parse_timeline_query(request.query)
    except _BadQuery as exc:
        return _json({"detail": str(exc)}, 400)
    return _json(await asyncio.get_running_loop().run_in_executor(None, index.timeline, query))


def _parse_timeline_query(params: Any) -> EventQuery:
    """The list's filters from the timeline route's query; an unknown or repeated parameter is refused too."""
    for name in params:
        values = params.getall(name)
        if name not in _TIMELINE_PARAMETERS:
            raise _BadQuery(
                f"query parameter {name!r} (value {values[0]!r}) is not one the timeline takes:"
                f" it takes {', '.join(_TIMELINE_PARAMETERS)}"
            )
        if len(values) > 1:
            raise _BadQuery(f"query parameter {name!r} must be given once, not {len(values)} times ({values!r})")
    return parse_query(params)


async def _thumbnail(request: web.Request, thumbnails: ThumbnailCache) -> web.StreamResponse:
    event_id = request.match_info["id"]
    try:
        uuid.UUID(event_id)
    except ValueError:
        return _json({"detail": f"event {event_id!r} not found"}, 404)
    thumbnail = await asyncio.get_running_loop().run_in_executor(None, thumbnails.get, event_id)
    if thumbnail is None:
        return _json({"detail": f"event {event_id!r} not found"}, 404)
    data, content_type = thumbnail
    # An event never changes, so neither does its thumbnail.
    return web.Response(
        body=data, content_type=content_type, headers={"Cache-Control": "private, max-age=86400, immutable"}
    )
