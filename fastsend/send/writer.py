"""The public faces of the sender: ``EventWriter`` and ``AsyncEventWriter``."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import weakref
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, ParamSpec, TypeVar

from fastsend.config import EVENTS_PATH, Settings, jpeg_backend_wanted, jpeg_reuse_wanted, warn_unknown_env
from fastsend.errors import BlockingCallError
from fastsend.events import Event, ValidationError, unexpected_keyword_message
from fastsend.imaging.jpeg import JpegOptions, jpeg_backend
from fastsend.imaging.pair import jpeg_reuse
from fastsend.results import Cause, Result
from fastsend.send import shutdown
from fastsend.send.dispatch import Dispatcher, State
from fastsend.send.prepare import PreparedEvent, prepare_event
from fastsend.send.spool import Spool
from fastsend.send.transport import AiohttpTransport, Transport
from fastsend.send.wire import events_url

logger = logging.getLogger("fastsend")

__all__ = ["AsyncEventWriter", "EventWriter"]

# Past its deadline (which bounds its time queued and on the wire), a synchronous send waits this much longer
# for its event to settle before withdrawing it.
_SYNC_GRACE_SECONDS = 2.0

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


_PREPARE_KEYWORDS = _keywords_of(prepare_event)


class EventWriter:
    """Send events from any thread; a context manager that flushes and closes on exit.

    ``submit()`` returns at once with a ``Future[Result]``; ``send()`` waits for the
    ``event_id``. Settings are keyword arguments or ``FASTSEND_*`` variables
    (see ``fastsend.Settings``). Its threads and connection pool start when it is built.

    Its life is open → closing → closed: ``close()``, leaving a ``with`` block, the
    interpreter's exit, SIGTERM and dropping the last reference to it all close it the
    same way, and until then it is kept (with what it holds) even if nothing else refers to it.
    """

    # What sends each request; a writer for another kind of request (cloud events) names its own.
    transport_factory: Callable[[Settings], Transport] = staticmethod(AiohttpTransport)

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
            self._dispatcher = Dispatcher(self.settings, outbox, self.transport_factory)
        except BaseException:
            if outbox is not None:
                outbox.close()
            raise
        forgotten = weakref.finalize(self, shutdown.close_forgotten(self._dispatcher, self.url))
        forgotten.atexit = False  # at exit, the exit flush closes it

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def jpeg_options(self) -> JpegOptions:
        """How this writer encodes frames (its ``jpeg_*`` settings)."""
        return self._dispatcher.jpeg

    @property
    def state(self) -> State:
        """Where the writer is in its life: ``open``, ``closing`` or ``closed``."""
        return self._dispatcher.state

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
        """Flush for up to ``timeout`` seconds, then stop. Returns how many events were left unsent
        (spooled, with a spool). Once it returns, every event submitted before has its Result."""
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


def _wait_settled(future: Future[Result], deadline: float, request_timeout: float) -> Result:
    """The Result of a synchronous send, which settles by its deadline; a late one is withdrawn if it can be."""
    try:
        return future.result(timeout=deadline + _SYNC_GRACE_SECONDS)
    except FutureTimeout:
        if future.cancel():
            return Result.failed(
                Cause.DEADLINE, f"no outcome within {deadline + _SYNC_GRACE_SECONDS:g}s: withdrawn, never sent"
            )
    try:  # on the wire now: its attempt ends by its own timeout
        return future.result(timeout=request_timeout + _SYNC_GRACE_SECONDS)
    except FutureTimeout:
        return Result.failed(Cause.TIMEOUT, "no outcome yet: the event is being sent and may still be stored")


def _submit_each(submit: Callable[..., Any], items: Iterable[Mapping[str, Any]]) -> list[Any]:
    """``submit(**item)`` for every item; an invalid item gets an error Result in its place."""
    submitted: list[Any] = []
    for index, item in enumerate(items):
        try:
            submitted.append(submit(**item))
        except (ValidationError, TypeError) as exc:
            submitted.append(Result.failed(Cause.INVALID_EVENT, f"invalid event at index {index}: {exc}"))
    return submitted


def _refuse_inside_event_loop(method: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise BlockingCallError(
        f"EventWriter.{method}() blocks and would stall the running event loop; use fastsend.AsyncEventWriter"
    )
