"""Cloud events: Roboflow's Vision Events API as a second kind of request for the send engine.

A cloud event is one to three HTTP calls: each image uploaded as multipart to
``{base}/vision-events/upload`` (it answers a ``sourceId``), then the event's JSON, naming those ids,
to ``{base}/vision-events``; every call carries ``Authorization: Bearer <key>``.

How it goes through the engine, which stays one-way (caller → admission → encoders → delivery →
settled, or spooled): the event is prepared on the caller's thread like any other, as a
``PreparedEvent`` whose ``Envelope`` is JSON around base64 image strings; only the JSON differs::

    {"event": {"eventId": …, "eventType": …, "images": [{"label": …, annotations}], …},
     "uploads": [{"key": "sourceId", "image": "<base64 JPEG>"}, {"key": "inputSourceId", "image": "…"}]}

The encoders splice the images in as they do for ``/v2/events`` (each image at its own quality:
output 85, input 95), the spool stores the request as it stores any other, and only the last step
differs: ``CloudTransport`` takes the place of the v2 transport for a ``CloudEventWriter``. One
``post()`` of that transport is one attempt at the whole event: it uploads the images it has no
``sourceId`` for yet, then posts the event with the ids filled in. The ``eventId``, drawn when the event
was prepared, is the request's idempotency key: it stays the same over every retry, and a spooled
event sent again after a restart keeps it too. The ids of uploads that succeeded are remembered per
``eventId`` until the event is delivered or refused, so a retry does not upload them again (after a
restart they are uploaded again: an unreferenced upload is harmless, a lost event is not).

``CloudRoutes`` carries what inference's platform client adds to Roboflow's own block's requests: the
headers of ``build_api_headers()`` (inference's version, ``ROBOFLOW_API_EXTRA_HEADERS``) and the two
URLs as ``wrap_url()`` gives them (a ``SECURE_GATEWAY`` proxy). As in Roboflow's block, an
``Authorization`` among those headers wins over the Bearer key, and the event's ``Content-Type``
wins over theirs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pybase64
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from fastsend.results import Cause, Outcome
from fastsend.send.retry import RETRYABLE_STATUSES, parse_retry_after
from fastsend.send.transport import AiohttpTransport, TransportOptions, _describe, _detail, _one_line
from fastsend.send.wire import Envelope, Request
from fastsend.send.writer import EventWriter

__all__ = [
    "CLOUD_SUCCESS",
    "EVENT_PATH",
    "INPUT_QUALITY",
    "OUTPUT_QUALITY",
    "UPLOAD_PATH",
    "CloudEventWriter",
    "CloudRoutes",
    "CloudTransport",
    "cloud_envelope",
    "parse_cloud_request",
]

logger = logging.getLogger("fastsend")

UPLOAD_PATH = "/vision-events/upload"
EVENT_PATH = "/vision-events"
OUTPUT_QUALITY = 85  # the display image, as Roboflow's block uploads it
INPUT_QUALITY = 95  # the original frame
OUTPUT_SOURCE_KEY, INPUT_SOURCE_KEY = "sourceId", "inputSourceId"
CLOUD_SUCCESS = "Vision event sent successfully"
# Upload ids kept for events still being retried; the oldest are forgotten past this many events.
_REMEMBERED_EVENTS = 4096


def cloud_envelope(event: Mapping[str, Any], source_keys: Sequence[str]) -> Envelope:
    """The JSON around a cloud event's image strings; ``source_keys`` name its images in order.

    ``event`` is the Vision Events API's body without the ids of the images (they are known only
    once uploaded); ``source_keys`` is ``("sourceId", "inputSourceId")``, either one alone, or empty.
    """
    head = b'{"event":' + orjson.dumps(event) + b',"uploads":['
    if not source_keys:
        return Envelope(head=head + b"]}", tail=b"")
    first, *rest = (b'{"key":"' + key.encode() + b'","image":"' for key in source_keys)
    between = b'"},' + rest[0] if rest else b""
    return Envelope(head=head + first, tail=b"}]}", between=between)


def parse_cloud_request(body: bytes) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """A cloud request's event (without image ids) and its uploads as ``(source key, JPEG bytes)``."""
    parsed = orjson.loads(body)
    uploads = [(str(item["key"]), pybase64.b64decode(item["image"])) for item in parsed["uploads"]]
    return parsed["event"], uploads


def event_body(event: Mapping[str, Any], source_ids: Mapping[str, str]) -> dict[str, Any]:
    """The event as posted: its image entry starts with the ids, in upload order, as Roboflow's block sends it."""
    body = dict(event)
    if body.get("images"):
        (entry,) = body["images"]
        body["images"] = [{**source_ids, **entry}]
    return body


@dataclass(frozen=True)
class CloudRoutes:
    """Where a cloud event's two calls go and the headers they carry besides the Bearer key.

    ``upload_url`` / ``event_url`` None: the API's base URL and ``/vision-events/upload``,
    ``/vision-events``. ``headers``: sent with both calls (an ``Authorization`` among them replaces
    the Bearer key; a ``Content-Type`` is not sent: each call has its own).
    """

    upload_url: str | None = None
    event_url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


class CloudTransport(AiohttpTransport):
    """One attempt at a cloud event per ``post()``: the uploads still missing, then the event.

    The writer's ``url`` is the API's base URL (``API_BASE_URL``) and its ``api_key`` the Bearer token.
    """

    def __init__(self, options: TransportOptions, routes: CloudRoutes = CloudRoutes()) -> None:
        super().__init__(options)
        base = options.url.rstrip("/")
        self._urls = {
            UPLOAD_PATH: URL(routes.upload_url or base + UPLOAD_PATH, encoded=True),
            EVENT_PATH: URL(routes.event_url or base + EVENT_PATH, encoded=True),
        }
        headers = {name: value for name, value in routes.headers.items() if name.lower() != "content-type"}
        if options.api_key and not any(name.lower() == "authorization" for name in headers):
            headers["Authorization"] = f"Bearer {options.api_key}"
        self._headers = headers
        self._uploaded: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._proxies: dict[str, tuple[URL | None, str | None]] = {}

    async def post(self, request: Request, timeout: float) -> Outcome:
        try:
            event, uploads = parse_cloud_request(request.body())
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            return Outcome(Cause.INVALID_REQUEST, f"not a cloud event request: {_describe(exc)}")
        try:
            outcome = await asyncio.wait_for(self._attempt(request.idempotency_key, event, uploads), timeout)
        except asyncio.TimeoutError:
            outcome = Outcome(Cause.TIMEOUT, f"timed out after {timeout:.3g}s (the service may have applied it)")
        except (aiohttp.ClientError, OSError) as exc:
            outcome = Outcome(Cause.CONNECTION, f"connection error: {_describe(exc)}")
        except ValueError as exc:
            outcome = Outcome(Cause.INVALID_REQUEST, f"the request could not be sent: {_one_line(str(exc))}")
        if outcome.delivered or not _retryable(outcome):
            self._uploaded.pop(request.idempotency_key, None)
        return outcome

    async def _attempt(self, event_id: str, event: dict[str, Any], uploads: list[tuple[str, bytes]]) -> Outcome:
        source_ids = self._remembered(event_id)
        for key, jpeg in uploads:
            if key in source_ids:
                continue
            form = aiohttp.FormData()
            form.add_field("file", jpeg, filename="image.jpg", content_type="image/jpeg")
            status, body, headers = await self._call(UPLOAD_PATH, data=form)
            if not 200 <= status < 300:
                return _refused("image upload", status, body, headers)
            source_id = _source_id(body)
            if source_id is None:
                return Outcome(Cause.BAD_RESPONSE, f"the upload answered {status} without a sourceId: {_detail(body)}")
            source_ids[key] = source_id
        posted = orjson.dumps(event_body(event, {key: source_ids[key] for key, _ in uploads}))
        status, body, headers = await self._call(EVENT_PATH, data=posted, content_type="application/json")
        if not 200 <= status < 300:
            return _refused("event", status, body, headers)
        return Outcome(None, CLOUD_SUCCESS, event_id=str(event["eventId"]), status=status)

    def _remembered(self, event_id: str) -> dict[str, str]:
        source_ids = self._uploaded.get(event_id)
        if source_ids is None:
            source_ids = self._uploaded[event_id] = {}
            while len(self._uploaded) > _REMEMBERED_EVENTS:
                self._uploaded.popitem(last=False)
        return source_ids

    async def _call(
        self, path: str, *, data: Any, content_type: str | None = None
    ) -> tuple[int, bytes, Mapping[str, str]]:
        url = self._urls[path]
        proxy, proxy_authorization = self._proxy_for(url)
        headers = dict(self._headers)
        if content_type is not None:
            headers["Content-Type"] = content_type
        if proxy_authorization is not None and url.scheme != "https":
            headers["Proxy-Authorization"] = proxy_authorization
        proxy_headers = (
            {"Proxy-Authorization": proxy_authorization} if proxy_authorization and url.scheme == "https" else None
        )
        async with self._session.post(
            url, data=data, headers=headers, allow_redirects=False, proxy=proxy, proxy_headers=proxy_headers
        ) as response:
            return response.status, await response.read(), response.headers

    def _proxy_for(self, url: URL) -> tuple[URL | None, str | None]:
        """The proxy from ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY`` (looked up once per URL)."""
        found = self._proxies.get(str(url))
        if found is None:
            try:
                proxy, auth = get_env_proxy_for_url(url)
            except LookupError:
                proxy, auth = None, None
            found = self._proxies[str(url)] = (proxy, auth.encode() if auth is not None else None)
        return found


def _source_id(body: bytes) -> str | None:
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    source_id = parsed.get("sourceId") if isinstance(parsed, dict) else None
    return str(source_id) if isinstance(source_id, (str, int)) and not isinstance(source_id, bool) else None


def _refused(what: str, status: int, body: bytes, headers: Mapping[str, str]) -> Outcome:
    retry_after = parse_retry_after(headers.get("Retry-After"))
    message = f"Failed to send vision event ({what}). Status: {status}. Details: {_detail(body)}"
    return Outcome(Cause.HTTP_STATUS, message, status=status, retry_after=retry_after)


def _retryable(outcome: Outcome) -> bool:
    if outcome.cause is Cause.HTTP_STATUS:
        return outcome.status in RETRYABLE_STATUSES
    return outcome.cause in (Cause.TIMEOUT, Cause.CONNECTION)


class CloudEventWriter(EventWriter):
    """An ``EventWriter`` for prepared cloud events: ``url`` is the API's base URL, ``api_key`` its Bearer key.

    ``routes``: other URLs for the two calls, and headers to add (see ``CloudRoutes``).
    """

    transport_factory = staticmethod(CloudTransport)

    def __init__(self, url: str | None = None, *, routes: CloudRoutes = CloudRoutes(), **settings: Any) -> None:
        self.routes = routes
        self.transport_factory = functools.partial(CloudTransport, routes=routes)
        super().__init__(url, **settings)
