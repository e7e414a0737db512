"""The event viewer: a page at ``/`` and the read-only JSON it reads.

Routes (added to the service's app by :func:`add_viewer_routes`):

- ``GET /`` → the page; ``GET /viewer/static/…`` → its scripts and styles.
  Neither holds any event data, so neither needs the API key.
- ``GET /viewer/api/events?limit=&offset=&schema=&solution=&since=&until=&q=``
  → ``{"events", "total", "newest", "schemas", "solutions"}``: a page of
  event summaries (see :mod:`.index`), newest first, and the schema and
  solution names the filters offer. ``solution`` is the use case (a v2
  body's ``solution``, a Vision Events ``useCaseId``), matched exactly.
  ``since`` / ``until`` bound the inference time (ISO-8601 with a UTC
  offset; ``until`` excluded); ``q`` matches text in the external id or in
  the custom metadata's keys and values (case-insensitive for ASCII). The
  page sends its empty filters, so an empty parameter counts as absent;
  otherwise the rules are those of every route (:mod:`.queries`).
- ``GET /viewer/api/newest`` → ``{"newest"}``: the sequence number of the
  last stored event (0 when none); the page polls it to show new events.
- ``GET /viewer/api/events/{id}/thumbnail`` → a JPEG at most
  256 pixels on its longer side, made once and cached (see :mod:`.thumbnails`).
- ``GET /viewer/api/timeline?schema=&solution=&since=&until=&q=`` → the matching
  events counted per schema in up to 60 buckets over the filtered range
  (see :mod:`.timeline`), for the page's chart.

The full event and its images come from the v2 API (``GET /v2/events/{id}``).

API key: when the service has one, the ``/viewer/api`` routes want it in
``X-API-Key`` just like ``/v2`` (the app checks it). The page asks for it once,
keeps it in the tab's ``sessionStorage`` and sends it as that header, fetching
images too, so the key never appears in a URL, a log line or the browser history.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from aiohttp import web

from fastsend.events import EVENT_SCHEMAS
from fastsend.server.errors import json_response
from fastsend.server.index import EventIndex, EventQuery
from fastsend.server.queries import (
    MAX_OFFSET,
    check_query,
    choice_parameter,
    instant_parameter,
    int_parameter,
    solution_parameter,
    text_parameter,
)
from fastsend.server.thumbnails import ThumbnailCache

__all__ = ["DEFAULT_PAGE_SIZE", "MAX_PAGE_SIZE", "STATIC_DIR", "add_viewer_routes", "parse_query"]

STATIC_DIR = Path(__file__).with_name("static")
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
MAX_QUERY_CHARS = 200
_LIST_PARAMETERS = ("limit", "offset", "schema", "solution", "since", "until", "q")
_TIMELINE_PARAMETERS = ("schema", "solution", "since", "until", "q")

# The page runs only its own scripts and loads nothing from elsewhere; images arrive as blob: URLs.
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self';"
        " base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
# An event never changes, so neither does its thumbnail.
_THUMBNAIL_HEADERS = {"Cache-Control": "private, max-age=86400, immutable"}


def add_viewer_routes(app: web.Application, index: EventIndex, thumbnails: ThumbnailCache) -> None:
    """Serve the viewer page at ``/`` and its read-only API under ``/viewer`` from ``index`` and ``thumbnails``."""

    async def events(request: web.Request) -> web.StreamResponse:
        return await _list(request, index)

    async def newest(request: web.Request) -> web.StreamResponse:
        return await _newest(request, index)

    async def thumbnail(request: web.Request) -> web.StreamResponse:
        return await _thumbnail(request, thumbnails)

    async def timeline(request: web.Request) -> web.StreamResponse:
        return await _timeline(request, index)

    app.router.add_get("/", _page)
    app.router.add_static("/viewer/static/", STATIC_DIR)
    app.router.add_get("/viewer/api/events", events)
    app.router.add_get("/viewer/api/newest", newest)
    app.router.add_get("/viewer/api/events/{id}/thumbnail", thumbnail)
    app.router.add_get("/viewer/api/timeline", timeline)


async def _page(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)


async def _list(request: web.Request, index: EventIndex) -> web.Response:
    query = parse_query(check_query(request.query, *_LIST_PARAMETERS, blank_is_absent=True))
    loop = asyncio.get_running_loop()
    page = await loop.run_in_executor(None, index.page, query)
    solutions = await loop.run_in_executor(None, index.solutions)
    return json_response({**page, "schemas": list(EVENT_SCHEMAS), "solutions": solutions})


def parse_query(params: dict[str, str]) -> EventQuery:
    """An :class:`EventQuery` from the list route's checked parameters; raises ``BadQuery`` naming a bad one."""
    return EventQuery(
        limit=int_parameter(params, "limit", DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE),
        offset=int_parameter(params, "offset", 0, 0, MAX_OFFSET),
        schema=choice_parameter(params, "schema", EVENT_SCHEMAS),
        solution=solution_parameter(params, "solution"),
        since=instant_parameter(params, "since"),
        until=instant_parameter(params, "until"),
        text=text_parameter(params, "q", MAX_QUERY_CHARS),
    )


async def _timeline(request: web.Request, index: EventIndex) -> web.Response:
    query = parse_query(check_query(request.query, *_TIMELINE_PARAMETERS, blank_is_absent=True))
    return json_response(await asyncio.get_running_loop().run_in_executor(None, index.timeline, query))


async def _newest(request: web.Request, index: EventIndex) -> web.Response:
    check_query(request.query)
    newest = await asyncio.get_running_loop().run_in_executor(None, index.newest)
    return json_response({"newest": newest})


async def _thumbnail(request: web.Request, thumbnails: ThumbnailCache) -> web.StreamResponse:
    check_query(request.query)
    thumbnail, content_type = await thumbnails.get(request.match_info["id"])
    headers = {**_THUMBNAIL_HEADERS, "Content-Type": content_type}
    if isinstance(thumbnail, bytes):
        return web.Response(body=thumbnail, headers=headers)
    return web.FileResponse(thumbnail, headers=headers)
