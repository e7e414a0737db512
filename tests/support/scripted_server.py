"""A loopback HTTP server whose answers are scripted per request, for testing the sender.

    with ScriptedServer([Reply(529), Reply(201, {"id": 7})]) as server:
        writer = EventWriter(server.base_url)
        ...
        assert len(server.requests) == 2

The script is one ``Reply`` (or status) for every request, a list consumed in
arrival order (its last entry repeats), or a callable ``Received -> Reply``.
A 201 without a body answers ``{"id": <request number, from 1>}``.

Every request is recorded (headers, raw and parsed body, arrival time, peer) as
soon as its body has arrived — before the reply is chosen — so a test can wait
for a request that the server is still holding. The server runs on its own
thread and loop; ``stop()`` (leaving the ``with``) cancels whatever is held or
sleeping, so "never answer" costs nothing at teardown.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import pybase64
import simplejpeg
from aiohttp import web
from multidict import CIMultiDict

__all__ = ["Received", "Reply", "ScriptedServer", "unused_port"]


@dataclass(frozen=True)
class Reply:
    """One scripted answer.

    ``body``: a dict or list is sent as JSON, str/bytes as they are; ``delay`` waits
    before answering (longer than the client's timeout = never answers); ``hold``
    waits until ``ScriptedServer.release()``; ``drop`` closes the connection
    without answering.
    """

    status: int = 201
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0
    hold: bool = False
    drop: bool = False


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    index: int
    method: str
    path: str
    headers: CIMultiDict  # case-insensitive
    raw: bytes
    json: Any  # None when the body is not JSON
    at: float  # time.monotonic() when the body had arrived
    peer: tuple  # (host, port) of the client's connection
    query: str = ""  # the query string as sent, still percent-encoded

    def image_shape(self, key: str = "base64Image") -> tuple[int, int]:
        """(height, width) of the JPEG in ``images[0][key]``."""
        jpeg = pybase64.b64decode(self.json["images"][0][key], validate=True)
        assert jpeg[:3] == b"\xff\xd8\xff", "not a JPEG"
        height, width, _, _ = simplejpeg.decode_jpeg_header(jpeg)
        return height, width


Script = Reply | int | Sequence[Reply | int] | Callable[[Received], Reply | int]


def unused_port() -> int:
    """A port on 127.0.0.1 with nothing listening (the OS just handed it out and it was closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ScriptedServer:
    def __init__(self, script: Script = Reply()) -> None:
        self.script = script  # may be replaced between requests
        self.requests: list[Received] = []
        self._arrived = threading.Condition()
        self._handlers: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> ScriptedServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scripted-server", daemon=True)
        self._thread.start()
        self.port = self._call(self._start())
        self.base_url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._loop is None:
            return
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
        self._loop = None

    def release(self) -> None:
        """Let every held request (and every later one) be answered."""
        self._loop.call_soon_threadsafe(self._gate.set)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Block until ``count`` requests have arrived; fails the test after ``timeout``."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.requests) >= count, timeout=timeout):
                raise AssertionError(f"expected {count} request(s) within {timeout}s, got {len(self.requests)}")
            return list(self.requests)

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _start(self) -> int:
        self._gate = asyncio.Event()
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return self._runner.addresses[0][1]

    async def _stop(self) -> None:
        for task in list(self._handlers):
            task.cancel()
        await self._runner.cleanup()

    # ---------------------------------------------------------------- requests

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        self._handlers.add(task)
        try:
            received = self._record(request, await request.read())
            reply = self._reply_for(received)
            if reply.hold:
                await self._gate.wait()
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if reply.drop:
                request.transport.abort()
                raise asyncio.CancelledError  # nothing more to say on this connection
            body = reply.body if reply.body is not None or reply.status != 201 else {"id": received.index + 1}
            if isinstance(body, (dict, list)):
                body, content_type = orjson.dumps(body), "application/json"
            else:
                body, content_type = (body.encode() if isinstance(body, str) else body or b""), "text/plain"
            return web.Response(status=reply.status, body=body, headers=reply.headers, content_type=content_type)
        finally:
            self._handlers.discard(task)

    def _record(self, request: web.Request, raw: bytes) -> Received:
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        with self._arrived:
            received = Received(
                index=len(self.requests),
                method=request.method,
                path=request.path,
                headers=CIMultiDict(request.headers),
                raw=raw,
                json=parsed,
                at=time.monotonic(),
                peer=request.transport.get_extra_info("peername"),
                query=request.raw_path.partition("?")[2],
            )
            self.requests.append(received)
            self._arrived.notify_all()
        return received

    def _reply_for(self, received: Received) -> Reply:
        script = self.script
        if callable(script) and not isinstance(script, Reply):
            chosen = script(received)
        elif isinstance(script, (Reply, int)):
            chosen = script
        else:
            chosen = script[min(received.index, len(script) - 1)]
        return Reply(chosen) if isinstance(chosen, int) else chosen
