"""The transport seam: one POST in, one ``Outcome`` out.

``Transport`` is what the dispatcher needs; ``AiohttpTransport`` is the production one (an
aiohttp ``ClientSession`` over a keep-alive ``TCPConnector``, honouring ``HTTP_PROXY`` /
``HTTPS_PROXY`` / ``NO_PROXY``), and tests inject fakes. The transport applies the writer's URL
and API key to each request; requests themselves carry neither.

The proxy is looked up once, through aiohttp's own reading of those variables,
rather than with ``trust_env=True``: that also reads ``~/.netrc`` on every request, on an
executor thread, which cost more CPU than the rest of the request's own work here (and a
netrc password has no business going to an ingestion service). Protocol parsing — framing, TLS,
proxies — is aiohttp's job; this module only classifies what happened.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import get_env_proxy_for_url
from aiohttp.payload import Payload
from yarl import URL

from fastsend.config import events_url_of
from fastsend.results import Cause, Outcome
from fastsend.send.retry import AT_CAPACITY_STATUS, parse_retry_after
from fastsend.send.wire import Endpoint, Request

__all__ = ["KEY_HINT", "AiohttpTransport", "ChunksPayload", "Transport", "TransportOptions"]

_DETAIL_CHARS = 300
# A 201's body is a small JSON object; an answer past this is not read whole (nor trusted).
_MAX_ANSWER_BYTES = 1024 * 1024
#: How a 401/403 message tells a library user to give the key; the command line says it in its own words.
KEY_HINT = "set EVENT_INGESTION_API_KEY or pass api_key= to the writer"


class Transport(Protocol):
    """Sends one request; never raises for what the network or the service did."""

    async def post(self, request: Request, timeout: float) -> Outcome: ...

    async def close(self) -> None: ...


class TransportOptions(Protocol):
    """The settings a transport reads (``fastsend.Settings`` has them all)."""

    @property
    def url(self) -> str: ...
    @property
    def api_key(self) -> str | None: ...
    @property
    def max_connections(self) -> int: ...
    @property
    def connect_timeout(self) -> float: ...
    @property
    def ca_file(self) -> str | None: ...
    @property
    def tls_verify(self) -> bool: ...
    @property
    def request_timeout(self) -> float: ...


class ChunksPayload(Payload):
    """A body written as the wire layer's chunks, one after another, never joined."""

    def __init__(self, chunks: Sequence[bytes], size: int) -> None:
        super().__init__(chunks, content_type="application/json")
        self._chunks = chunks
        self._size = size

    async def write(self, writer: AbstractStreamWriter) -> None:
        for chunk in self._chunks:
            await writer.write(chunk)

    async def write_with_length(self, writer: AbstractStreamWriter, content_length: int | None) -> None:
        await self.write(writer)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._chunks).decode(encoding, errors)


def ssl_context(options: TransportOptions) -> ssl.SSLContext | bool:
    """What the connector verifies TLS with: the system store, a CA bundle, or nothing (``tls_verify=False``)."""
    if not options.tls_verify:
        return False
    return ssl.create_default_context(cafile=options.ca_file)


class AiohttpTransport:
    """POSTs to the writer's endpoint over one pooled aiohttp session; create and use it on the loop thread.

    The one place where a request meets its URL and API key, for live sends and spool drains alike.
    """

    def __init__(self, options: TransportOptions) -> None:
        self.endpoint = Endpoint(events_url_of(options.url), options.api_key)
        self._connect_timeout = options.connect_timeout
        connector = aiohttp.TCPConnector(
            limit=options.max_connections,
            limit_per_host=options.max_connections,
            ssl=ssl_context(options),
            ttl_dns_cache=300,
        )
        self._route: tuple[URL, URL | None, str | None] | None = None
        # The usual attempt's timeout, made once; one cut short by the event's deadline is made each time.
        self._full_timeout = self._timeout(options.request_timeout)
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            raise_for_status=False,
            skip_auto_headers=("Accept-Encoding",),
            timeout=aiohttp.ClientTimeout(total=None),
        )

    async def post(self, request: Request, timeout: float) -> Outcome:
        per_attempt = self._full_timeout if timeout == self._full_timeout.total else self._timeout(timeout)
        target = self.endpoint.url
        try:
            url, proxy, proxy_authorization = self._route or self._find_route()
            headers, proxy_headers = self.endpoint.headers(request.idempotency_key), None
            if proxy_authorization is not None:  # the proxy's credentials, given in HTTP(S)_PROXY
                if url.scheme == "https":  # on the CONNECT; a fresh dict, as aiohttp adds to it
                    proxy_headers = {"Proxy-Authorization": proxy_authorization}
                else:  # on the request itself, which the proxy forwards
                    headers["Proxy-Authorization"] = proxy_authorization
            async with self._session.post(
                url,
                data=ChunksPayload(request.chunks, request.size),
                headers=headers,
                timeout=per_attempt,
                allow_redirects=False,
                proxy=proxy,
                proxy_headers=proxy_headers,
            ) as response:
                return await _answer(target, response, timeout)
        except asyncio.TimeoutError:
            return Outcome(Cause.TIMEOUT, f"timed out after {timeout:.3g}s (the service may have applied it)")
        except aiohttp.ClientConnectorCertificateError as exc:
            return Outcome(Cause.TLS, _tls_message(target, exc.certificate_error))
        except aiohttp.ClientSSLError as exc:
            return Outcome(Cause.TLS, _tls_message(target, exc))
        except aiohttp.InvalidURL as exc:
            return Outcome(Cause.INVALID_URL, f"invalid URL {target!r}: {exc}; check the writer's url")
        except aiohttp.ClientHttpProxyError as exc:
            refusal = _one_line(f"{exc.status} {exc.message}")
            return Outcome(Cause.CONNECTION, f"the proxy refused the connection ({refusal})")
        except aiohttp.ClientResponseError as exc:  # raised by aiohttp's parser: no status was answered
            return Outcome(Cause.CONNECTION, f"malformed answer from the service: {_one_line(exc.message)}")
        except (aiohttp.ClientError, OSError) as exc:
            return Outcome(Cause.CONNECTION, f"connection error: {_describe(exc)}")
        except ValueError as exc:  # aiohttp refused to build the request (a header value it cannot send)
            return Outcome(Cause.INVALID_REQUEST, f"the request could not be sent: {_one_line(str(exc))}")

    def _timeout(self, seconds: float) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=seconds, sock_connect=min(self._connect_timeout, seconds))

    def _find_route(self) -> tuple[URL, URL | None, str | None]:
        """The URL parsed, and its proxy from ``HTTP_PROXY`` / ``HTTPS_PROXY`` / ``NO_PROXY``: read on first use."""
        parsed = URL(self.endpoint.url, encoded=True)  # checked and percent-encoded when the settings were built
        try:
            proxy, auth = get_env_proxy_for_url(parsed)
        except LookupError:  # no proxy set for this scheme, or NO_PROXY names the host
            proxy, auth = None, None
        self._route = (parsed, proxy, auth.encode() if auth is not None else None)
        return self._route

    async def close(self) -> None:
        await self._session.close()


async def _answer(url: str, response: aiohttp.ClientResponse, timeout: float) -> Outcome:
    """The outcome of an answered request, its body read within bounds.

    Once a status has arrived, a body cut off or late is judged by that status: a 201 means the event
    was stored whatever followed it, so it is never retried.
    """
    try:
        body = await _read_bounded(response)
    except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError, OSError) as exc:
        problem = f"timed out after {timeout:.3g}s" if isinstance(exc, asyncio.TimeoutError) else _describe(exc)
        if response.status == 201:
            return Outcome(
                Cause.BAD_RESPONSE,
                f"the service answered 201 but its body was cut off ({_one_line(problem)}; "
                "the event was probably stored)",
                status=201,
            )
        detail = f"(the body was cut off: {_one_line(problem)})".encode()
        return classify(url, response.status, detail, response.headers)
    return classify(url, response.status, body, response.headers)


async def _read_bounded(response: aiohttp.ClientResponse) -> bytes:
    parts: list[bytes] = []
    size = 0
    while size < _MAX_ANSWER_BYTES:
        part = await response.content.read(_MAX_ANSWER_BYTES - size)
        if not part:
            return b"".join(parts)
        parts.append(part)
        size += len(part)
        if response.content.at_eof():  # the whole answer is in: no read just to learn that
            return b"".join(parts)
    response.close()  # the rest is never read: this connection cannot be reused
    return b"".join(parts)


def classify(url: str, status: int, body: bytes, headers: Mapping[str, str]) -> Outcome:
    """The ``Outcome`` of an answer: an id from a 201, or why not, with the service's ``detail``."""
    if status == 201:
        event_id = _event_id(body)
        if event_id is None:
            return Outcome(
                Cause.BAD_RESPONSE,
                f"the service answered 201 without a usable id (the event was probably stored): {_detail(body)}",
                status=status,
            )
        return Outcome(None, "event created", event_id=event_id, status=status)
    retry_after = parse_retry_after(headers.get("Retry-After"))
    detail = _detail(body)
    if status == AT_CAPACITY_STATUS:
        message = f"service at capacity (529, backpressure): {detail}"
    elif status == 401:
        message = f"HTTP 401: {detail} ({KEY_HINT})"
    elif status == 403:
        message = f"HTTP 403: {detail} (the API key was refused; {KEY_HINT})"
    elif status == 407:
        message = (
            f"HTTP 407 from the proxy: {detail} (give the proxy's credentials in HTTP_PROXY / HTTPS_PROXY, "
            "as http://user:password@proxy:port)"
        )
    elif status == 404:
        message = f"HTTP 404: {detail} (posted to {url}; is the writer's url the service's base URL?)"
    elif 300 <= status < 400:
        message = f"HTTP {status} redirect to {headers.get('Location', '?')} (not followed: set the writer's url to it)"
    else:
        message = f"HTTP {status}: {detail}"
    return Outcome(Cause.HTTP_STATUS, message, status=status, retry_after=retry_after)


def _event_id(body: bytes) -> str | None:
    try:
        parsed: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    identifier = parsed.get("id") if isinstance(parsed, dict) else None
    if isinstance(identifier, bool) or not isinstance(identifier, (str, int)):
        return None
    text = str(identifier)
    return text if text.strip() else None


def _detail(body: bytes) -> str:
    try:
        parsed: Any = orjson.loads(body)
        text = parsed.get("detail") if isinstance(parsed, dict) else None
        text = str(text) if text is not None else body.decode("utf-8", "replace")
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace")
    return _bounded(text.strip() or "(empty body)")


def _one_line(text: str) -> str:
    """The first line of a library's message, bounded: parser errors quote the offending bytes at length."""
    return _bounded(text.strip().split("\n", 1)[0].strip())


def _bounded(text: str) -> str:
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS] + "…"


# What OpenSSL says when the other end answers a TLS handshake in plain text (an http:// service).
_PLAIN_TEXT_PEER = ("wrong_version_number", "wrong version number", "record layer failure", "packet length too long")


def _tls_message(url: str, error: BaseException) -> str:
    if any(sign in str(error).lower() for sign in _PLAIN_TEXT_PEER):
        plain = URL(url).with_scheme("http").origin()
        return (
            f"TLS handshake failed for {url}: the port does not speak TLS ({_one_line(str(error))}); "
            f"is the service plain HTTP? then use {plain}"
        )
    return (
        f"TLS certificate verification failed for {url}: {error}; pass ca_file= (FASTSEND_CA_FILE) with the "
        "service's CA bundle, or tls_verify=False (FASTSEND_TLS_VERIFY=0) only for testing"
    )


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
