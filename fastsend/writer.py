"""The public faces of the sender: ``EventWriter``, ``AsyncEventWriter`` and ``EventWriterSink``."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, ParamSpec, TypeVar

from . import shutdown
from .block import prepare_block_event
from .config import Settings, jpeg_backend_wanted, jpeg_reuse_wanted, warn_unknown_env
from .dispatch import Dispatcher
from .events import Event, ValidationError, unexpected_keyword_message
from .jpeg import JpegOptions, jpeg_backend
from .jpeg_pair import jpeg_reuse
from .prepare import PreparedEvent, prepare_event
from .results import QueueFullError, Result
from .spool import Spool
from .urls import EVENTS_PATH
from .wire import events_url

logger = logging.getLogger("fastsend")

__all__ = ["BACKGROUND_MESSAGE", "AsyncEventWriter", "EventWriter", "EventWriterSink", "QueueFullError", "Result"]

# Past its deadline (which bounds its time queued and on the wire), a synchronous send waits this much longer
# for its event to settle before withdrawing it.
_SYNC_GRACE_SECONDS = 2.0
# The Event Writer block's output in fire-and-forget mode.
BACKGROUND_MESSAGE = "Event sent in background task"

P = ParamSpec("P")
R = TypeVar("R")


def _suggest_keywords(known: list[str]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """A misspelled keyword is a ``TypeError`` naming the method and the closest of ``known``."""

    def decorate(method: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(method)
        def checked(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return method(*args, **kwargs)
            except TypeError:
                unknown = sorted(set(kwargs) - {"event", "image", *known})
                if unknown:  # Python refused the call itself: say what was probably meant
                    name = f"EventWriter.{method.__name__}()"
                    raise TypeError(unexpected_keyword_message(name, unknown[0], known)) from None
                raise

        return checked

    return decorate


def _keywords_of(function: Callable[..., Any]) -> list[str]:
    return [p.name for p in inspect.signature(function).parameters.values() if p.kind is p.KEYWORD_ONLY]


_PREPARE_KEYWORDS = [name for name in _keywords_of(prepare_event) if name != "jpeg"]  # the writer's own


class EventWriter:
    """Send events from any thread; a context manager that flushes and closes on exit.

    ``submit()`` returns at once with a ``Future[Result]``; ``send()`` waits for the
    ``event_id``. Settings are keyword arguments or ``FASTSEND_*`` variables
    (see ``fastsend.Settings``). Threads and the connection pool start on first use.
    """

    def __init__(self, url: str | None = None, **settings: Any) -> None:
        warn_unknown_env()
        self.settings = Settings.resolve(url=url, **settings)
        jpeg_backend_wanted()  # FASTSEND_JPEG_* are checked now, not at the first event's encoding
        jpeg_reuse_wanted()
        jpeg_backend()
        jpeg_reuse()
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
        shutdown.register(self, spooled=outbox is not None, handle_sigterm=self.settings.handle_sigterm)

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def jpeg_options(self) -> JpegOptions:
        """How this writer encodes frames (its ``jpeg_*`` settings)."""
        return self._dispatcher.jpeg

    @property
    def exit_flush_timeout(self) -> float:
        return self.settings.exit_flush_timeout

    @_suggest_keywords([*_PREPARE_KEYWORDS, "deadline"])
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
            jpeg=self.jpeg_options,
        )
        return self.submit_prepared(prepared, deadline=deadline)

    def submit_prepared(self, prepared: PreparedEvent, *, deadline: float | None = None) -> Future[Result]:
        """Queue an event already validated by ``fastsend.prepare_event`` (or a block); its Future."""
        return self._dispatcher.submit(prepared, deadline=deadline)

    @_suggest_keywords([*_PREPARE_KEYWORDS, "deadline"])
    def send(self, event: Event, image: Any, **options: Any) -> Result:
        """Send and wait: the ``Result`` carries the ``event_id`` from the service's 201.

        Returns within ``deadline`` seconds (default ``Settings.deadline``) plus the time
        to encode the images; the two images are encoded in parallel, before ``send``
        queues the event, so your arrays are not copied (``copy`` defaults to False here).
        The deadline covers the time queued too: an event still queued at its deadline is
        never sent, and one on the wire is reported as it ends (spooled, or "may have been
        stored" after a timeout) — never failed first and delivered later.
        """
        _refuse_inside_event_loop("send")
        deadline = options.pop("deadline", None)
        options.setdefault("copy", False)
        prepared = prepare_event(event, image, **options)
        return self.send_prepared(prepared, deadline=deadline)

    def send_prepared(self, prepared: PreparedEvent, *, deadline: float | None = None) -> Result:
        """Send an already prepared event and wait for its ``Result`` (images encoded before queueing)."""
        deadline = self.settings.deadline if deadline is None else deadline
        future = self._dispatcher.submit(prepared, deadline=deadline, encode_first=True)
        return _wait_settled(future, deadline, self.settings.request_timeout)

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
        try:
            return self._dispatcher.close(timeout)
        finally:
            shutdown.unregister(self)

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

    One writer (and one connection pool) is kept per URL, so calling ``run()`` once per
    frame reuses connections; at most ``max_writers`` of them (``FASTSEND_MAX_WRITERS``):
    the least recently used is closed, after a flush, when another URL needs one.
    """

    def __init__(self, **settings: Any) -> None:
        self._settings = settings
        self._max_writers: int = Settings.one("max_writers", settings.get("max_writers"))
        self._writers: OrderedDict[str, EventWriter] = OrderedDict()
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
        result, _ = self.dispatch(
            fire_and_forget=fire_and_forget,
            request_timeout=request_timeout,
            event_ingestion_url=event_ingestion_url,
            **params,
        )
        return result.as_dict()

    def dispatch(
        self,
        *,
        fire_and_forget: bool = True,
        request_timeout: float = 5.0,
        event_ingestion_url: str | None = None,
        **params: Any,
    ) -> tuple[Result, Future[Result] | None]:
        """The block's semantics: queue the event (its Future comes back too) or send it and wait.

        A synchronous call returns within ``request_timeout`` plus the encoding time: its one
        budget covers the time queued, every attempt and any retry. Raises ``ValidationError``
        (or ``TypeError``, ``QueueFullError``) for what the caller must fix; a writer that cannot
        be started (out of file descriptors or threads) is an error Result, not an exception.
        """
        try:
            writer = self.writer_for(event_ingestion_url, Settings.one("api_key"), request_timeout)
        except (OSError, RuntimeError) as exc:
            logger.error("could not start a writer for %s: %s", event_ingestion_url, exc)
            return Result(True, "", f"Event not sent: could not start a writer for its URL: {exc}"), None
        # A synchronous call encodes before it returns: the images need no snapshot.
        # A queued event must not see later in-place edits of its frames (blocks may draw on numpy_image):
        # they are snapshotted, as the encoder's YUV planes where that pays.
        block_event = prepare_block_event(
            event_ingestion_url=writer.settings.url, copy=fire_and_forget, jpeg=writer.jpeg_options, **params
        )
        if fire_and_forget:
            return Result(False, "", BACKGROUND_MESSAGE), writer.submit_prepared(block_event.prepared)
        return writer.send_prepared(block_event.prepared, deadline=float(request_timeout)), None

    def writer_for(self, url: str | None, api_key: str | None, request_timeout: float) -> EventWriter:
        """The writer for ``url``; a new API key or timeout replaces it (the old one flushes first, and
        what it spools the new one drains: a spool directory is named by its URL alone)."""
        target = writer_base_url(url)
        with self._lock:
            current = self._writers.get(target)
            if current is not None:
                if current.settings.api_key == api_key and current.settings.request_timeout == float(request_timeout):
                    self._writers.move_to_end(target)
                    return current
                del self._writers[target]
                current.close(current.settings.exit_flush_timeout)  # its spool directory is the new one's
            while len(self._writers) >= self._max_writers:
                _, oldest = self._writers.popitem(last=False)
                _close_in_background(oldest)
            settings = dict(self._settings, api_key=api_key, request_timeout=request_timeout)
            settings.pop("max_writers", None)
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
            writers = list(self._writers.values())
            self._writers.clear()
        return sum(writer.close(timeout) for writer in writers)


def _close_in_background(writer: EventWriter) -> None:
    """Close a writer no longer kept, flushing first, without holding up the caller."""
    name = f"fastsend-close-{writer.settings.url}"
    threading.Thread(target=writer.close, args=(writer.settings.exit_flush_timeout,), name=name).start()


def _wait_settled(future: Future[Result], deadline: float, request_timeout: float) -> Result:
    """The Result of a synchronous send, which settles by its deadline; a late one is withdrawn if it can be."""
    try:
        return future.result(timeout=deadline + _SYNC_GRACE_SECONDS)
    except FutureTimeout:
        if future.cancel():
            return Result(True, "", f"no outcome within {deadline + _SYNC_GRACE_SECONDS:g}s: withdrawn, never sent")
    try:  # on the wire now: its attempt ends by its own timeout
        return future.result(timeout=request_timeout + _SYNC_GRACE_SECONDS)
    except FutureTimeout:
        return Result(True, "", "no outcome yet: the event is being sent and may still be stored")


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
