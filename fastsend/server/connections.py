"""Keeping stalled clients from holding the service: a header deadline, a connection cap, quiet accept errors.

aiohttp closes a connection idle between requests (``keepalive_timeout``) and
the app bounds how long a body may take, but nothing bounds how long a
client may take to send a request's headers, nor how many connections are
open. :class:`ConnectionGuard` wraps aiohttp's protocol factory:

- a connection that has not delivered a request's headers within
  ``header_timeout`` (counted from the connection's opening, or from the
  first byte of a later request on it) gets a 408 and is closed;
- past ``max_connections`` open ones, a new connection gets a 503 with
  ``Retry-After`` and is closed at once, before aiohttp sees it;
- ``QuietAcceptErrors`` reports an accept error (``EMFILE``: out of file
  descriptors) once per interval with a count, instead of once per attempt.

The guard learns that a request's headers are complete from its middleware,
which must run first, before anything that may answer without the handler.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

__all__ = [
    "DEFAULT_HEADER_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "ConnectionGuard",
    "ConnectionLimits",
    "QuietAcceptErrors",
]

logger = logging.getLogger("fastsend.server")

DEFAULT_HEADER_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 75.0
DEFAULT_MAX_CONNECTIONS = 1000
# At most one report of refused connections or accept errors per this many seconds.
_REPORT_INTERVAL = 10.0
_RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may stall, and how many connections may be open at once.

    - ``header_timeout``: seconds for a request's headers to arrive.
    - ``idle_timeout``: seconds a connection may sit between requests
      (aiohttp's ``keepalive_timeout``).
    - ``max_connections``: open connections beyond which new ones are refused.
    """

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS

    def __post_init__(self) -> None:
        for name in ("header_timeout", "idle_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")
        if isinstance(self.max_connections, bool) or not isinstance(self.max_connections, int):
            raise ValueError(f"max_connections must be an integer, not {self.max_connections!r}")
        if self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, not {self.max_connections!r}")


_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConnectionGuard:
    """Wraps aiohttp's protocol factory with the :class:`ConnectionLimits`; used on the event loop only.

    ::

        guard = ConnectionGuard(limits)
        app.middlewares.insert(0, guard.middleware)  # before the app is frozen
        await runner.setup()
        server = await loop.create_server(guard.protocol_factory(runner.server), host, port)
    """

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._open: dict[asyncio.BaseTransport, _GuardedConnection] = {}
        self._refused = _RateLimitedReport()
        self.middleware: Middleware = self._make_middleware()

    @property
    def open_connections(self) -> int:
        """How many admitted connections are open now."""
        return len(self._open)

    def protocol_factory(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` guarding the protocols ``factory`` makes."""
        return lambda: _GuardedConnection(self, factory)

    def _admit(self, transport: asyncio.BaseTransport, connection: _GuardedConnection) -> bool:
        if len(self._open) >= self.limits.max_connections:
            self._refused.count(
                "refusing new connections: %d open (max %d)", len(self._open), self.limits.max_connections
            )
            return False
        self._open[transport] = connection
        return True

    def _forget(self, transport: asyncio.BaseTransport) -> None:
        self._open.pop(transport, None)

    def _make_middleware(self) -> Middleware:
        @web.middleware
        async def track_requests(request: web.Request, handler: _Handler) -> web.StreamResponse:
            connection = self._open.get(request.transport) if request.transport is not None else None
            if connection is not None:
                connection.request_started()
            try:
                return await handler(request)
            finally:
                if connection is not None:
                    connection.request_finished()

        return track_requests


class _GuardedConnection(asyncio.Protocol):
    """One connection: forwards to aiohttp's protocol and closes it when its headers are late."""

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._handling = False
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if not self._guard._admit(transport, self):
            _answer_and_close(transport, 503, "too many open connections; retry shortly", retry_after=1)
            return
        self._inner = self._factory()
        self._start_header_clock()  # a new connection owes its first request's headers from now
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return
        if not self._handling and self._header_deadline is None:
            self._start_header_clock()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_clock()
        if self._inner is None:
            return
        assert self._transport is not None
        self._guard._forget(self._transport)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def request_started(self) -> None:
        """The headers are in and a handler runs: the body and the answer have their own limits."""
        self._handling = True
        self._stop_header_clock()

    def request_finished(self) -> None:
        """Back to idle; the next request's first byte starts its header clock."""
        self._handling = False

    def _start_header_clock(self) -> None:
        loop = asyncio.get_running_loop()
        self._header_deadline = loop.call_later(self._guard.limits.header_timeout, self._headers_late)

    def _stop_header_clock(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_late(self) -> None:
        self._header_deadline = None
        if self._transport is None or self._transport.is_closing():
            return
        timeout = self._guard.limits.header_timeout
        logger.debug("closing %s: no complete request headers within %g s", _peer(self._transport), timeout)
        _answer_and_close(self._transport, 408, f"request headers not received within {timeout:g} s")


def _answer_and_close(transport: asyncio.Transport, status: int, detail: str, retry_after: int | None = None) -> None:
    reasons = {408: "Request Timeout", 503: "Service Unavailable"}
    body = orjson.dumps({"detail": detail})
    head = [
        f"HTTP/1.1 {status} {reasons[status]}",
        "Content-Type: application/json",
        "X-Content-Type-Options: nosniff",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if retry_after is not None:
        head.append(f"Retry-After: {retry_after}")
    transport.write("\r\n".join(head).encode() + b"\r\n\r\n" + body)
    transport.close()


def _peer(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "a client"


class _RateLimitedReport:
    """Logs a warning at most once per interval, with how many times it happened since the last one."""

    def __init__(self, interval: float = _REPORT_INTERVAL) -> None:
        self._interval = interval
        self._last = -math.inf
        self._since = 0

    def count(self, message: str, *args: Any) -> None:
        self._since += 1
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        logger.warning(message + " (%d times in the last %g s)", *args, self._since, self._interval)
        self._last = now
        self._since = 0


class QuietAcceptErrors:
    """An event-loop exception handler reporting accept errors like ``EMFILE`` once per interval.

    asyncio reports each failed ``accept()`` with a traceback; under a flood
    of connections that buries the log. Every other error goes to the
    previous handler (or the loop's default one).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, interval: float = _REPORT_INTERVAL) -> None:
        self._previous = loop.get_exception_handler()
        self._report = _RateLimitedReport(interval)

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        if isinstance(error, OSError) and error.errno in _RESOURCE_ERRNOS and "accept" in context.get("message", ""):
            self._report.count("cannot accept connections: %s", error)
            return
        if isinstance(error, (ValueError, OSError)) and "_start_serving" in repr(context.get("handle")):
            # After an accept error asyncio retries accepting a second later, even if the server has
            # closed its socket meanwhile (the service stopping): nothing is wrong then.
            logger.debug("accept retry after the listening socket closed: %s", error)
            return
        if self._previous is not None:
            self._previous(loop, context)
        else:
            loop.default_exception_handler(context)
