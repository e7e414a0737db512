"""The public faces of the sender: ``EventWriter``, ``AsyncEventWriter`` and ``EventWriterSink``."""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from .block import prepare_block_event
from .config import Settings
from .dispatch import Dispatcher
from .events import Event, ValidationError
from .results import QueueFullError, Result
from .spool import Spool
from .urls import EVENTS_PATH
from .wire import PreparedEvent, events_url, prepare_event

logger = logging.getLogger("fastsend")

__all__ = ["AsyncEventWriter", "EventWriter", "EventWriterSink", "QueueFullError", "Result"]

# A synchronous send waits this much past its deadline before reporting the wait itself as failed.
_SYNC_GRACE_SECONDS = 5.0

_open_writers: weakref.WeakSet[EventWriter] = weakref.WeakSet()


class EventWriter:
    """Send events from any thread; a context manager that flushes and closes on exit.

    ``submit()`` returns at once with a ``Future[Result]``; ``send()`` waits for the
    ``event_id``. Settings are keyword arguments or ``FASTSEND_*`` variables
    (see ``fastsend.Settings``). Threads and the connection pool start on first use.
    """

    def __init__(self, url: str | None = None, **settings: Any) -> None:
        self.settings = Settings.resolve(url=url, **settings)
        self.url = events_url(self.settings.url)
        if self.settings.url.endswith(EVENTS_PATH):
            logger.warning(
                "the writer's url %s already ends in %s; requests go to %s. Give the service's base URL instead",
                self.settings.url,
                EVENTS_PATH,
                self.url,
            )
        outbox = Spool(self.settings.spool_dir, self.settings.spool_max_bytes) if self.settings.spool_dir else None
        try:
            self._dispatcher = Dispatcher(self.settings, outbox)
        except BaseException:
            if outbox is not None:
                outbox.close()
            raise
        _open_writers.add(self)

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def submit(
        self,
        event: Event,
        image: Any,
        *,
        input_image: Any = None,
        label: str | None = None,
        object_detections: Any = None,
        classifications: Any = None,
        instance_segmentations: Any = None,
        keypoint_detections: Any = None,
        color: str = "bgr",
        copy: bool = True,
        deadline: float | None = None,
    ) -> Future[Result]:
        """Validate on this thread, queue, and return the Future of the event's ``Result``.

        ``image`` is the output/visualisation image, ``input_image`` the original frame.
        With ``copy=True`` (default) the caller may reuse its arrays as soon as this
        returns; ``copy=False`` hands them over. Raises ``ValidationError`` for bad input,
        and ``QueueFullError`` only under the ``raise`` overflow policy.
        """
        prepared = prepare_event(
            event,
            image,
            input_image=input_image,
            label=label,
            object_detections=object_detections,
            classifications=classifications,
            instance_segmentations=instance_segmentations,
            keypoint_detections=keypoint_detections,
            color=color,
            copy=copy,
        )
        return self.submit_prepared(prepared, deadline=deadline)

    def submit_prepared(self, prepared: PreparedEvent, *, deadline: float | None = None) -> Future[Result]:
        """Queue an event already validated by ``fastsend.prepare_event`` (or a block); its Future."""
        return self._dispatcher.submit(prepared, self.url, deadline=deadline)

    def send(self, event: Event, image: Any, **options: Any) -> Result:
        """Send and wait: the ``Result`` carries the ``event_id`` from the service's 201.

        Returns within ``deadline`` seconds (default ``Settings.deadline``) plus the time
        to encode the images; the two images are encoded in parallel, before ``send``
        queues the event, so your arrays are not copied (``copy`` defaults to False here).
        """
        _refuse_inside_event_loop("send")
        deadline = options.pop("deadline", None)
        options.setdefault("copy", False)
        prepared = prepare_event(event, image, **options)
        return self.send_prepared(prepared, deadline=deadline)

    def send_prepared(self, prepared: PreparedEvent, *, deadline: float | None = None) -> Result:
        """Send an already prepared event and wait for its ``Result`` (images encoded before queueing)."""
        deadline = self.settings.deadline if deadline is None else deadline
        future = self._dispatcher.submit(prepared, self.url, deadline=deadline, encode_first=True)
        try:
            return future.result(timeout=deadline + _SYNC_GRACE_SECONDS)
        except FutureTimeout:
            return Result(True, "", f"no outcome within {deadline + _SYNC_GRACE_SECONDS:g}s")

    def send_batch(self, items: Iterable[Mapping[str, Any]]) -> list[Result]:
        """Send many events concurrently; their Results in input order.

        Each item is a mapping of ``submit()`` keyword arguments (``event``, ``image``,
        …). An invalid item gets an error Result naming the problem; the others go.
        """
        _refuse_inside_event_loop("send_batch")
        return [f if isinstance(f, Result) else f.result() for f in _submit_each(self.submit, items)]

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every submitted event has its Result; returns how many are still pending."""
        return self._dispatcher.flush(timeout)

    def drain(self, timeout: float | None = None) -> int:
        """``flush``, then wait until the spool has been sent too; returns the events still pending or spooled."""
        return self._dispatcher.drain(timeout)

    def close(self, timeout: float | None = None) -> int:
        """Flush for up to ``timeout`` seconds, then stop. Returns how many events were left unsent."""
        _open_writers.discard(self)
        return self._dispatcher.close(timeout)

    def stats(self) -> dict[str, Any]:
        """Counters (submitted, sent, failed, dropped by reason, retried, …), queue state and latencies."""
        return self._dispatcher.snapshot()


class AsyncEventWriter:
    """``EventWriter`` for code already inside an event loop: the same operations as coroutines."""

    def __init__(self, url: str | None = None, **settings: Any) -> None:
        self._writer = EventWriter(url, **settings)
        self.settings = self._writer.settings
        self.url = self._writer.url

    async def __aenter__(self) -> AsyncEventWriter:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def submit(self, event: Event, image: Any, **options: Any) -> asyncio.Future[Result]:
        """Validate now and return an awaitable of the ``Result``; awaiting it is optional."""
        return asyncio.wrap_future(self._writer.submit(event, image, **options))

    async def send(self, event: Event, image: Any, **options: Any) -> Result:
        return await self.submit(event, image, **options)

    async def send_batch(self, items: Iterable[Mapping[str, Any]]) -> list[Result]:
        return [p if isinstance(p, Result) else await p for p in _submit_each(self.submit, items)]

    async def flush(self, timeout: float | None = None) -> int:
        return await asyncio.to_thread(self._writer.flush, timeout)

    async def drain(self, timeout: float | None = None) -> int:
        return await asyncio.to_thread(self._writer.drain, timeout)

    async def close(self, timeout: float | None = None) -> int:
        return await asyncio.to_thread(self._writer.close, timeout)

    def stats(self) -> dict[str, Any]:
        return self._writer.stats()


class EventWriterSink:
    """Drop-in for the Event Writer workflow block: ``run(**block parameters)`` → its output dict.

    One writer (and one connection pool) is kept per URL, so
    calling ``run()`` once per frame reuses connections.
    """

    def __init__(self, **settings: Any) -> None:
        self._settings = settings
        self._writers: dict[str, EventWriter] = {}
        self._lock = threading.Lock()

    def run(
        self,
        *,
        fire_and_forget: bool = True,
        disable_sink: bool = False,
        request_timeout: float = 5.0,
        event_ingestion_url: str | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        if disable_sink:
            return Result(False, "", "Sink was disabled by the disable_sink parameter").as_dict()
        writer = self.writer_for(event_ingestion_url, Settings.one("api_key"), request_timeout)
        # A synchronous call encodes before it returns: the images need no snapshot.
        block_event = prepare_block_event(event_ingestion_url=writer.settings.url, copy=fire_and_forget, **params)
        if fire_and_forget:
            writer.submit_prepared(block_event.prepared)
            return Result(False, "", "Event sent in the background").as_dict()
        return writer.send_prepared(block_event.prepared).as_dict()

    def writer_for(self, url: str | None, api_key: str | None, request_timeout: float) -> EventWriter:
        """The writer for ``url``; a new API key or timeout replaces it (the old one flushes first, and
        what it spools the new one drains: a spool directory is named by its URL alone)."""
        target = writer_base_url(url)
        with self._lock:
            current = self._writers.get(target)
            if current is not None and current.settings.api_key == api_key:
                if current.settings.request_timeout == float(request_timeout):
                    return current
            if current is not None:
                current.close(current.settings.exit_flush_timeout)
            settings = dict(self._settings, api_key=api_key, request_timeout=request_timeout)
            spool_dir = Settings.one("spool_dir", settings.get("spool_dir"))
            if spool_dir:  # one spool directory per URL: a directory has one owner at a time
                settings["spool_dir"] = os.path.join(spool_dir, _writer_spool_name(target))
            writer = self._writers[target] = EventWriter(url.rstrip("/") if url else None, **settings)
            return writer

    def flush(self, timeout: float | None = None) -> int:
        """Wait for every writer's queued events; returns how many are still pending."""
        with self._lock:
            writers = list(self._writers.values())
        return sum(writer.flush(timeout) for writer in writers)

    def close(self, timeout: float | None = None) -> int:
        with self._lock:
            writers, self._writers = list(self._writers.values()), {}
        return sum(writer.close(timeout) for writer in writers)


def _submit_each(submit: Callable[..., Any], items: Iterable[Mapping[str, Any]]) -> list[Any]:
    """``submit(**item)`` for every item; an invalid item gets an error Result in its place."""
    submitted: list[Any] = []
    for index, item in enumerate(items):
        try:
            submitted.append(submit(**item))
        except (ValidationError, TypeError) as exc:
            submitted.append(Result(True, "", f"invalid event at index {index}: {exc}"))
    return submitted


def _writer_spool_name(events_url: str) -> str:
    # Named by where its entries go, and by nothing else: a new key or timeout drains what the old ones left.
    return hashlib.sha256(events_url.encode()).hexdigest()[:16]


def writer_base_url(url: str | None) -> str:
    """The events URL a writer built on ``url`` posts to (for naming its spool)."""
    return events_url(url)


def _refuse_inside_event_loop(method: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"EventWriter.{method}() blocks and would stall the running event loop; use fastsend.AsyncEventWriter"
    )


@atexit.register
def _flush_at_exit() -> None:
    # Bounded by exit_flush_timeout; close() logs how many were left unsent (or spooled).
    for writer in list(_open_writers):
        writer.close(writer.settings.exit_flush_timeout)
