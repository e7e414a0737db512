"""A small HTTP/1.1 client for the one exchange fastsend makes: POST a body given as
chunks, read a short answer.

Why not aiohttp's client here: its general machinery (request and response objects,
header multidicts, stream readers, payload writers) more than doubles the CPU of each
request: 0.32 against 0.13 ms for a 640×480 event's body, kernel time included, both
on uvloop over loopback (``benchmarks/test_bench_bounds.py::test_http_client_cpu``).
At hundreds of events a second that is GIL time the JPEG encoders wait for. Left out on
purpose: redirects (a 3xx is reported as such), proxies, compression, cookies.

Connections are kept alive and pooled per origin, at most ``limit`` in use at once. A
request that meets a pooled connection the service had already closed — nothing
answered, the connection gone — is sent once more on a fresh connection; the
Idempotency-Key makes that safe.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence
from urllib.parse import urlsplit

__all__ = ["ConnectionPool", "HttpError", "Response", "Target", "parse_url"]

MAX_HEAD_BYTES = 64 * 1024
# Answers are short JSON; a megabyte means something other than the service is answering.
MAX_BODY_BYTES = 1024 * 1024
KEEPALIVE_SECONDS = 30.0


class HttpError(Exception):
    """The exchange failed below HTTP semantics: no connection, cut off, or not HTTP/1.x."""


class _ClosedUnanswered(HttpError):
    """The connection ended before any byte of an answer arrived."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    headers: Mapping[str, str]  # names lower-cased; a repeated header keeps its last value
    body: bytes


@dataclass(frozen=True, slots=True)
class Target:
    """Where a URL points: the origin to connect to and what goes on the request line."""

    scheme: str
    host: str
    port: int
    path: str
    host_header: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port


@lru_cache(maxsize=256)
def parse_url(url: str) -> Target:
    """The ``Target`` of an http:// or https:// URL; ``ValueError`` saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError("must not carry credentials (set api_key instead)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if not parts.hostname:
        raise ValueError("has no host")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    default_port = 443 if parts.scheme == "https" else 80
    return Target(parts.scheme, parts.hostname, port or default_port, path, parts.netloc)


def request_head(target: Target, headers: Mapping[str, str], size: int) -> bytes:
    lines = [f"POST {target.path} HTTP/1.1", f"Host: {target.host_header}", f"Content-Length: {size}"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} contains a line break")
        lines.append(f"{name}: {value}")
    lines.append("\r\n")
    return "\r\n".join(lines).encode("latin-1")


class _Connection(asyncio.Protocol):
    """One keep-alive connection, carrying one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._buffer = bytearray()
        self._eof = False
        self._answer: asyncio.Future[tuple[Response, bool]] | None = None

    # --- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._answer is None or self._answer.done():
            self.close()  # bytes nobody asked for: this connection cannot be trusted with another request
            return
        self._buffer += data
        self._parse()

    def eof_received(self) -> bool:
        self._eof = True
        if self._answer is not None:
            self._parse()
        else:
            self.closed = True  # an idle connection the service closed: never hand it out again
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._answer is not None and not self._answer.done():
            reason = f": {exc}" if exc else ""
            if self._buffer:
                self._answer.set_exception(HttpError(f"connection closed in the middle of the answer{reason}"))
            else:
                self._answer.set_exception(_ClosedUnanswered(f"connection closed before any answer{reason}"))

    # --- the exchange

    async def exchange(self, head: bytes, chunks: Sequence[bytes], deadline: float) -> tuple[Response, bool]:
        """Write the request, wait for the answer until ``deadline`` (loop time); (response, reusable)."""
        loop = asyncio.get_running_loop()
        self._answer = answer = loop.create_future()
        self._buffer.clear()
        self._eof = False
        timer = loop.call_at(deadline, self._time_out)
        try:
            self.transport.writelines([head, *chunks])
            return await answer
        finally:
            timer.cancel()
            self._answer = None

    def _time_out(self) -> None:
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(asyncio.TimeoutError())
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _parse(self) -> None:
        if self._answer.done():
            return
        if self._eof and not self._buffer:
            self._answer.set_exception(_ClosedUnanswered("connection closed before any answer"))
            return
        try:
            parsed = _parse_answer(self._buffer, self._eof)
        except HttpError as exc:
            self._answer.set_exception(exc)
            self.close()
            return
        if parsed is not None:
            response, consumed, keep_alive = parsed
            # Not reusable with bytes past the answer (never asked for), or with part of the request
            # still unsent (the service answered early, say 413): the next request would follow it.
            reusable = (
                keep_alive
                and consumed == len(self._buffer)
                and not self._eof
                and self.transport.get_write_buffer_size() == 0
            )
            self._answer.set_result((response, reusable))


def _parse_answer(buffer: bytearray, eof: bool) -> tuple[Response, int, bool] | None:
    """(response, bytes consumed, keep-alive) once ``buffer`` holds a whole answer, else None."""
    start = 0
    while True:
        end = buffer.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buffer) - start > MAX_HEAD_BYTES:
                raise HttpError(f"answer headers longer than {MAX_HEAD_BYTES} bytes")
            if eof:
                raise HttpError("connection closed in the middle of the answer's headers")
            return None
        version, status, headers = _parse_head(bytes(buffer[start:end]))
        if 100 <= status < 200:  # informational: the real answer follows
            start = end + 4
            continue
        break
    body_start = end + 4
    keep_alive = version == "HTTP/1.1" and "close" not in headers.get("connection", "").lower()
    if status in (204, 304):
        return Response(status, headers, b""), body_start, keep_alive
    if "chunked" in headers.get("transfer-encoding", "").lower():
        dechunked = _dechunk(buffer, body_start)
        if dechunked is None:
            if eof:
                raise HttpError("connection closed in the middle of a chunked answer")
            return None
        body, consumed = dechunked
        return Response(status, headers, body), consumed, keep_alive
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise HttpError(f"answer has a bad Content-Length: {headers['content-length']!r}") from None
        if not 0 <= length <= MAX_BODY_BYTES:
            raise HttpError(f"answer body of {length} bytes; at most {MAX_BODY_BYTES} expected")
        if len(buffer) - body_start < length:
            if eof:
                raise HttpError("connection closed in the middle of the answer's body")
            return None
        body = bytes(buffer[body_start : body_start + length])
        return Response(status, headers, body), body_start + length, keep_alive
    # Neither length nor chunks: the body runs to the end of the connection.
    if len(buffer) - body_start > MAX_BODY_BYTES:
        raise HttpError(f"answer body over {MAX_BODY_BYTES} bytes")
    if not eof:
        return None
    return Response(status, headers, bytes(buffer[body_start:])), len(buffer), False


def _parse_head(head: bytes) -> tuple[str, int, dict[str, str]]:
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if version not in ("HTTP/1.1", "HTTP/1.0") or not code.isdigit() or rest[3:4] not in ("", " "):
        raise HttpError(f"not an HTTP/1.x answer: {status_line[:80]!r}")
    headers = {}
    for line in header_lines:
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip():
            raise HttpError(f"malformed answer header: {line[:80]!r}")
        headers[name.lower()] = value.strip()
    return version, int(code), headers


def _dechunk(buffer: bytearray, position: int) -> tuple[bytes, int] | None:
    """The body of a chunked answer and the bytes consumed, or None if not all there yet."""
    body = bytearray()
    while True:
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        size_text = bytes(buffer[position:line_end]).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise HttpError(f"bad chunk size in the answer: {size_text[:20]!r}") from None
        position = line_end + 2
        if size == 0:
            break
        if len(body) + size > MAX_BODY_BYTES:
            raise HttpError(f"answer body over {MAX_BODY_BYTES} bytes")
        if len(buffer) < position + size + 2:
            return None
        body += buffer[position : position + size]
        position += size + 2
    while True:  # trailers, up to the empty line
        line_end = buffer.find(b"\r\n", position)
        if line_end < 0:
            return None
        empty = line_end == position
        position = line_end + 2
        if empty:
            return bytes(body), position


def _abandon(connecting: asyncio.Future) -> None:
    """Stop a connect nobody waits for any more; close the connection should it open anyway."""
    connecting.cancel()
    connecting.add_done_callback(_close_opened)


def _close_opened(connecting: asyncio.Future) -> None:
    if not connecting.cancelled() and connecting.exception() is None:
        connecting.result()[1].close()


class ConnectionPool:
    """Keep-alive connections per origin; at most ``limit`` in use at once. Use on one loop."""

    def __init__(self, limit: int, connect_timeout: float, keepalive: float = KEEPALIVE_SECONDS) -> None:
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self._slots = asyncio.Semaphore(limit)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._tls: ssl.SSLContext | None = None

    async def post(self, url: str, headers: Mapping[str, str], chunks: Sequence[bytes], size: int, timeout: float) -> Response:
        """POST ``chunks`` (``size`` bytes in all) within ``timeout`` seconds, connecting included.

        Raises ``asyncio.TimeoutError`` past the timeout and ``HttpError`` when no
        complete answer came back.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        target = parse_url(url)
        head = request_head(target, headers, size)
        async with self._slots:
            while True:
                connection = self._take_idle(target.origin, loop.time()) or await self._connect(target, deadline)
                try:
                    response, reusable = await connection.exchange(head, chunks, deadline)
                except _ClosedUnanswered:
                    self._open.discard(connection)
                    if connection.reused:  # the service had closed it while it sat idle: once more, fresh
                        continue
                    raise
                except BaseException:
                    connection.close()
                    self._open.discard(connection)
                    raise
                self._put_idle(target.origin, connection, reusable, loop.time())
                return response

    def close(self) -> None:
        for connection in self._open:
            connection.close()
        self._open.clear()
        self._idle.clear()

    def _take_idle(self, origin: tuple[str, str, int], now: float) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            usable = not connection.closed and not connection.transport.is_closing()
            if usable and now - connection.idle_since < self.keepalive:
                connection.reused = True
                return connection
            connection.close()
            self._open.discard(connection)
        return None

    def _put_idle(self, origin: tuple[str, str, int], connection: _Connection, reusable: bool, now: float) -> None:
        if not reusable or connection.closed:
            connection.close()
            self._open.discard(connection)
            return
        connection.idle_since = now
        self._idle.setdefault(origin, []).append(connection)

    async def _connect(self, target: Target, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        limit = min(self.connect_timeout, deadline - loop.time())
        tls = None
        if target.scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        # Not asyncio.wait_for: before Python 3.12 it can swallow a cancellation that meets a finished connect.
        connecting = asyncio.ensure_future(
            loop.create_connection(_Connection, target.host, target.port, ssl=tls, server_hostname=target.host if tls else None)
        )
        try:
            done, _ = await asyncio.wait({connecting}, timeout=max(limit, 0.0))
        except BaseException:
            _abandon(connecting)
            raise
        if not done:
            _abandon(connecting)
            if loop.time() >= deadline:
                raise asyncio.TimeoutError
            raise HttpError(f"cannot connect to {target.host}:{target.port}: no answer within {limit:g}s")
        try:
            _, connection = connecting.result()
        except OSError as exc:
            raise HttpError(f"cannot connect to {target.host}:{target.port}: {exc.strerror or exc}") from None
        self._open.add(connection)
        return connection
