"""Running the reference service: in the foreground (``run``), as a coroutine
(``serve``), or on a background thread for tests and embedding
(``ReferenceService``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from fastsend.server.app import (
    DEFAULT_BODY_BUDGET_BYTES,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES,
    body_bytes_held,
    create_app,
    event_json,
    set_faults,
)
from fastsend.server.committer import Committer
from fastsend.server.connections import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    ConnectionGuard,
    ConnectionLimits,
    QuietAcceptErrors,
)
from fastsend.server.faults import Faults
from fastsend.server.hosts import HostPolicy
from fastsend.server.store import EventStore
from fastsend.server.validation import (
    DEFAULT_MAX_ANNOTATIONS,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_POINTS,
    DEFAULT_MAX_TOTAL_POINTS,
    BodyLimits,
)

__all__ = ["DEFAULT_PORT", "ReferenceService", "ServiceConfig", "run", "serve"]

logger = logging.getLogger("fastsend.server")

DEFAULT_PORT = 8001
# asyncio retries a paused accept() after 1 s; the quiet handler outlives the server by more.
_ACCEPT_RETRY_GRACE_SECONDS = 2.0
# In-flight requests get this long to finish when the service stops.
_SHUTDOWN_TIMEOUT = 5.0
_STARTUP_TIMEOUT = 30.0
# Descriptors the service needs besides its connections: database, WAL, image files, listening sockets.
_SPARE_DESCRIPTORS = 64


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the service needs to start. ``port=0`` picks a free port.

    Limits: ``max_body_bytes`` per body (413); ``body_budget_bytes`` for all
    bodies held at once (529); ``max_image_pixels`` an image may declare
    (422); ``max_annotations`` per annotation list and ``max_points`` per
    polygon or keypoint list, ``max_total_points`` in all (422; see
    :mod:`.structure`); ``header_timeout`` / ``body_timeout`` seconds for a request's
    headers / body to arrive (408); ``idle_timeout`` seconds between requests
    on a connection; ``max_connections`` open at once (503).
    ``allowed_hosts``: ``Host`` names answered besides the loopback ones (see
    :mod:`fastsend.server.hosts`).
    """

    data_dir: str | os.PathLike[str]
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    api_key: str | None = None
    capacity: int | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_budget_bytes: int = DEFAULT_BODY_BUDGET_BYTES
    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_annotations: int = DEFAULT_MAX_ANNOTATIONS
    max_points: int = DEFAULT_MAX_POINTS
    max_total_points: int = DEFAULT_MAX_TOTAL_POINTS
    allowed_hosts: tuple[str, ...] = ()
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        if self.capacity is not None and self.capacity < 0:
            raise ValueError(f"capacity must be >= 0 or None, not {self.capacity!r}")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be positive, not {self.max_body_bytes!r}")
        self.body_limits()  # checks max_image_pixels, max_annotations, max_points and max_total_points
        if self.body_budget_bytes < self.max_body_bytes:
            raise ValueError(
                f"body_budget_bytes must be at least max_body_bytes ({self.max_body_bytes}),"
                f" not {self.body_budget_bytes!r}"
            )
        if not (math.isfinite(self.body_timeout) and self.body_timeout > 0):
            raise ValueError(f"body_timeout must be a positive number of seconds, not {self.body_timeout!r}")
        self.connection_limits()  # checks the other three
        HostPolicy(self.host, self.allowed_hosts)  # checks the allowed names

    def body_limits(self) -> BodyLimits:
        """The pixel, annotation and point limits on a body, checked."""
        return BodyLimits(
            max_image_pixels=self.max_image_pixels,
            max_annotations=self.max_annotations,
            max_points=self.max_points,
            max_total_points=self.max_total_points,
        )

    def connection_limits(self) -> ConnectionLimits:
        """The header timeout, idle timeout and connection cap, checked."""
        return ConnectionLimits(
            header_timeout=self.header_timeout, idle_timeout=self.idle_timeout, max_connections=self.max_connections
        )


@dataclass(frozen=True)
class _Running:
    url: str
    store: EventStore
    app: web.Application


@contextlib.asynccontextmanager
async def _running(config: ServiceConfig) -> AsyncIterator[_Running]:
    loop = asyncio.get_running_loop()
    previous_handler = loop.get_exception_handler()
    loop.set_exception_handler(QuietAcceptErrors(loop))
    store = EventStore(config.data_dir)
    committer = Committer(store)
    try:
        app = create_app(
            store,
            committer,
            api_key=config.api_key,
            capacity=config.capacity,
            max_body_bytes=config.max_body_bytes,
            body_budget_bytes=config.body_budget_bytes,
            body_timeout=config.body_timeout,
            limits=config.body_limits(),
            hosts=HostPolicy(config.host, config.allowed_hosts),
            faults=config.faults,
        )
        guard = ConnectionGuard(config.connection_limits())
        app.middlewares.insert(0, guard.middleware)  # first: it marks the end of a request's headers
        runner = web.AppRunner(
            app,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
            keepalive_timeout=config.idle_timeout,
            auto_decompress=False,  # a compressed body is refused (415), never inflated on the loop
        )
        await runner.setup()
        try:
            # Our own listening socket rather than web.TCPSite, to put the guard in front of aiohttp's protocol.
            assert runner.server is not None  # set by setup()
            server = await loop.create_server(guard.protocol_factory(runner.server), config.host, config.port)
            try:
                host, port = server.sockets[0].getsockname()[:2]
                url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
                logger.info("reference event ingestion service listening on %s (data in %s)", url, config.data_dir)
                yield _Running(url, store, app)
            finally:
                server.close()  # stop accepting; runner.cleanup() then closes the open connections
        finally:
            await runner.cleanup()
    finally:
        committer.close()
        store.close()
        # The handler stays while the loop runs: asyncio may still retry a paused accept after the socket closed.
        loop.call_later(_ACCEPT_RETRY_GRACE_SECONDS, loop.set_exception_handler, previous_handler)


async def serve(config: ServiceConfig, *, on_started: Callable[[str], None] | None = None) -> None:
    """Serve until cancelled; ``on_started(url)`` is called once the port is open."""
    async with _running(config) as running:
        if on_started is not None:
            on_started(running.url)
        await asyncio.Event().wait()


def run(config: ServiceConfig, *, on_started: Callable[[str], None] | None = None) -> None:
    """Serve ``config`` in the foreground until Ctrl-C or SIGTERM; the URL is logged at INFO."""

    _raise_descriptor_limit(config.max_connections + _SPARE_DESCRIPTORS)

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows loops
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await serve(config, on_started=on_started)

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass
    logger.info("reference event ingestion service stopped")


def _raise_descriptor_limit(wanted: int) -> None:
    """Raise this process's open-file limit towards ``wanted`` if it is lower (up to the hard limit)."""
    if sys.platform == "win32":
        return
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft < wanted:
        logger.warning(
            "the open-file limit (%d) is below --max-connections plus %d spare; expect accept errors under load",
            soft,
            _SPARE_DESCRIPTORS,
        )


class ReferenceService:
    """The reference service on its own thread and event loop, for tests and embedding.

    ::

        with ReferenceService(tmp_path, faults=Faults(error_rate=0.5, seed=1)) as service:
            post(f"{service.url}/v2/events", ...)
            assert service.stored_count() == 1

    ``port=0`` (the default) picks a free port; ``url`` tells which.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        capacity: int | None = None,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        body_budget_bytes: int = DEFAULT_BODY_BUDGET_BYTES,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        body_timeout: float = DEFAULT_BODY_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_annotations: int = DEFAULT_MAX_ANNOTATIONS,
        max_points: int = DEFAULT_MAX_POINTS,
        max_total_points: int = DEFAULT_MAX_TOTAL_POINTS,
        allowed_hosts: tuple[str, ...] = (),
        faults: Faults | None = None,
    ) -> None:
        self.config = ServiceConfig(
            data_dir=data_dir,
            host=host,
            port=port,
            api_key=api_key,
            capacity=capacity,
            max_body_bytes=max_body_bytes,
            body_budget_bytes=body_budget_bytes,
            header_timeout=header_timeout,
            body_timeout=body_timeout,
            idle_timeout=idle_timeout,
            max_connections=max_connections,
            max_image_pixels=max_image_pixels,
            max_annotations=max_annotations,
            max_points=max_points,
            max_total_points=max_total_points,
            allowed_hosts=allowed_hosts,
            faults=faults or Faults(),
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._running: _Running | None = None
        self._startup_error: BaseException | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (no trailing slash)."""
        return self._require_running().url

    @property
    def data_dir(self) -> Path:
        """Where the database and image files live."""
        return Path(self.config.data_dir)

    def start(self) -> ReferenceService:
        """Start serving; returns once the port is open (raises if it could not start)."""
        if self._thread is not None:
            raise RuntimeError("ReferenceService already started")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(ready,), name="fastsend-reference-service", daemon=True
        )
        self._thread.start()
        if not ready.wait(_STARTUP_TIMEOUT):
            raise RuntimeError(f"ReferenceService did not start within {_STARTUP_TIMEOUT} s")
        error = self._startup_error
        if error is not None:
            self._startup_error = None
            self._thread.join()
            self._thread = None
            raise error
        return self

    def stop(self) -> None:
        """Stop serving and wait for the thread; in-flight writes finish first. Idempotent."""
        thread, loop, stopping = self._thread, self._loop, self._stopping
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join()
        self._thread = None
        self._running = None

    def __enter__(self) -> ReferenceService:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def set_faults(self, faults: Faults | None) -> None:
        """Switch fault injection while running (``None`` turns it off)."""
        running = self._require_running()
        assert self._loop is not None
        done = threading.Event()

        def apply() -> None:
            set_faults(running.app, faults)
            done.set()

        self._loop.call_soon_threadsafe(apply)
        done.wait(_STARTUP_TIMEOUT)

    def body_bytes_held(self) -> int:
        """Bytes of request bodies held now (being received, parsed or stored) against the body budget."""
        return body_bytes_held(self._require_running().app)

    def stored_count(self) -> int:
        """How many events the database holds."""
        return self._require_running().store.count()

    def get_event(self, event_id: str) -> dict[str, Any] | None:
        """One stored event in the ``GET /v2/events/{id}`` shape, or ``None``."""
        event = self._require_running().store.get(event_id)
        return None if event is None else event_json(event)

    def list_events(
        self, *, limit: int = 1000, offset: int = 0, event_schema: str | None = None
    ) -> list[dict[str, Any]]:
        """Stored events, newest first, each whole as ``GET /v2/events/{id}`` shows it (the HTTP list gives
        summaries)."""
        events, _ = self._require_running().store.list_events(limit=limit, offset=offset, event_schema=event_schema)
        return [event_json(event) for event in events]

    def get_image(self, event_id: str, role: str = "output") -> bytes | None:
        """The stored ``"output"`` or ``"input"`` image bytes of an event, or ``None``."""
        image = self._require_running().store.image(event_id, role)
        return None if image is None else image.data

    def _require_running(self) -> _Running:
        if self._running is None:
            raise RuntimeError("ReferenceService is not running; call start() or use it as a context manager")
        return self._running

    def _serve(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._main(ready))
        except BaseException as exc:
            if ready.is_set():
                logger.exception("reference service stopped with an error")
            else:
                self._startup_error = exc
        finally:
            ready.set()

    async def _main(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        async with _running(self.config) as running:
            self._running = running
            ready.set()
            await self._stopping.wait()
