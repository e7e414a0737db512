"""Raw loopback servers for testing the sender against answers no well-behaved service gives.

    with RawServer(answer(b"HTTP/1.1 201 Created\\r\\nContent-Length: 1_1\\r\\n\\r\\n")) as server:
        EventWriter(server.base_url).send(...)
        assert len(server.requests) == 1

``RawServer`` runs an asyncio loop on its own thread; each connection goes to a
``Handler(server, reader, writer)``. It counts connections, records each request it
reads (head and body), and can speak TLS: ``connections`` counts TCP accepts (so
handshake attempts) and ``handshakes`` the ones that succeeded. ``ForwardProxy`` is a
small HTTP forward proxy that resolves the host names it is given itself. ``stop()``
cancels every handler, so an endless answer costs nothing at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

__all__ = ["ENDLESS_SECONDS", "ForwardProxy", "Handler", "RawRequest", "RawServer", "answer", "read_request", "trickle"]

T = TypeVar("T")
S = TypeVar("S", bound="RawServer")
Handler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
# No hostile answer in these tests needs to last longer than this; it bounds every endless sender.
ENDLESS_SECONDS = 30.0
_HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class RawRequest:
    """One request as it arrived: the request line, the headers (names lower-cased) and the body."""

    line: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def method(self) -> str:
        return self.line.split(" ")[0]

    @property
    def target(self) -> str:
        """The request target exactly as sent (origin-form ``/v2/events`` or absolute-form for a proxy)."""
        return self.line.split(" ")[1]


async def read_request(reader: asyncio.StreamReader) -> RawRequest:
    """Read one HTTP/1.1 request (a Content-Length or chunked body); raises IncompleteReadError at EOF."""
    head = await reader.readuntil(b"\r\n\r\n")
    line, *fields = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for field in fields:
        if field:
            name, _, value = field.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(part[:-2] for part in parts)
    else:
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return RawRequest(line, headers, body)


class RawServer:
    """A loopback TCP server (127.0.0.1, or ``host``) whose connections a handler serves."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self.tls = tls
        self.host = host
        self.connections = 0
        self.handshakes = 0
        self.requests: list[RawRequest] = []
        self._changed = threading.Condition()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self: S) -> S:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="raw-server", daemon=True)
        self._thread.start()
        self._server = self._call(self._listen())
        self.port: int = self._server.sockets[0].getsockname()[1]

    async def _listen(self) -> asyncio.Server:
        loop = asyncio.get_running_loop()

        def accepted() -> asyncio.StreamReaderProtocol:
            # Called at the TCP accept, before any TLS handshake: every attempt is counted.
            with self._changed:
                self.connections += 1
                self._changed.notify_all()
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(_HEAD_LIMIT, loop), self._serve)

        return await loop.create_server(accepted, self.host, 0, ssl=self.tls)

    def stop(self) -> None:
        if self._loop is None:
            return
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
        self._loop = None

    async def _stop(self) -> None:
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        if self.tls is not None:  # streams are made once the handshake has succeeded
            with self._changed:
                self.handshakes += 1
        try:
            await self.handler(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ssl.SSLError, OSError):
            pass
        except asyncio.CancelledError:
            pass  # stop(): this task is the server's own, and the server is going away
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    def record(self, request: RawRequest) -> None:
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Wait (bounded) until ``predicate()`` holds, as seen under the server's lock."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout=timeout)


def answer(*answers: bytes, then: Callable[[asyncio.StreamWriter], Awaitable[None]] | None = None) -> Handler:
    """Read a request, write the next answer; after the last one run ``then`` (default: wait for the client)."""

    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for reply in answers:
            server.record(await read_request(reader))
            writer.write(reply)
            await writer.drain()
        if then is not None:
            await then(writer)
        await reader.read()  # hold the connection until the client gives it up

    return handler


def trickle(piece: bytes, interval: float = 0.01) -> Callable[[asyncio.StreamWriter], Awaitable[None]]:
    """``then=`` for ``answer``: keep writing ``piece`` for ever (bounded by ``ENDLESS_SECONDS``)."""

    async def send(writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        stop = loop.time() + ENDLESS_SECONDS
        while loop.time() < stop:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(interval)

    return send


class ForwardProxy(RawServer):
    """An HTTP forward proxy: takes absolute-form requests (and ``CONNECT`` tunnels), resolves hosts
    through ``hosts``, relays answers.

    ``hosts`` maps a host name to the ``(address, port)`` to connect to instead of
    resolving it; every request it forwarded is in ``requests`` (absolute-form target).
    """

    def __init__(self, hosts: Mapping[str, tuple[str, int]]) -> None:
        super().__init__(self._relay)
        self.hosts = dict(hosts)

    @staticmethod
    async def _relay(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert isinstance(server, ForwardProxy)
        while True:
            request = await read_request(reader)
            server.record(request)
            if request.method == "CONNECT":
                await server.tunnel(request.target, reader, writer)
                return
            target = urlsplit(request.target)
            if not target.hostname:
                writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                return
            address, port = server.hosts.get(target.hostname, (target.hostname, target.port or 80))
            upstream_reader, upstream_writer = await asyncio.open_connection(address, port)
            try:
                path = target.path + (f"?{target.query}" if target.query else "")
                kept = {
                    k: v for k, v in request.headers.items() if not k.startswith("proxy-") and k != "transfer-encoding"
                }
                kept["content-length"] = str(len(request.body))
                kept["connection"] = "close"
                head = f"{request.method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in kept.items())
                upstream_writer.write(head.encode("latin-1") + b"\r\n" + request.body)
                await upstream_writer.drain()
                reply = await upstream_reader.read()  # the upstream closes: Connection: close
            finally:
                upstream_writer.close()
                with contextlib.suppress(ConnectionError):
                    await upstream_writer.wait_closed()
            # Relayed as it came except that this connection ends with it: the client reads to the close.
            writer.write(reply)
            await writer.drain()
            return

    async def tunnel(self, authority: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """``CONNECT host:port``: connect, say so, then pipe bytes both ways until either side closes."""
        host, _, port = authority.rpartition(":")
        address, upstream_port = self.hosts.get(host, (host, int(port)))
        upstream_reader, upstream_writer = await asyncio.open_connection(address, upstream_port)
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        try:
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        finally:
            upstream_writer.transport.abort()
