"""The sending side: bounded queue → encoder threads → one uvloop thread with pooled connections.

Each event's life, and who owns it:

    caller   prepared event → admitted to the queue (or dropped by the overflow policy)
    encoder  JPEG + base64 + splice → a finished Request (frame memory released); an
             event's output and input images go to two encoders at once, and the
             one that finishes last splices
    loop     POST, retry with backoff until 201, a permanent error, or the deadline
    any      exactly one Result resolves the event's Future, and one counter moves

Events past the queue (encoding, sending, backing off) are bounded by
``max_in_flight``; the queue by ``queue_size`` and ``queue_bytes``.

With an outbox (the spool), an event that cannot be delivered in time, is
spilled from a full queue, or is still pending at close is written to disk
instead of failed, and a drainer on the loop sends the outbox oldest first.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import queue
import threading
import time
import weakref
from collections import Counter, deque
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from .config import Settings
from .http import ConnectionPool, HttpError
from .jpeg import EncodedImage, ImageSource, JpegOptions, RawImage, release_frame, to_base64
from .retry import AT_CAPACITY_STATUS, RetryPolicy, parse_retry_after
from .wire import PreparedEvent, Request, render_body, request_headers, splice

__all__ = ["Dispatcher", "QueueFullError", "Result"]

logger = logging.getLogger("fastsend")

_LATENCY_WINDOW = 10_000
# What an encoder task does: the whole event, or one of its two raw images.
_WHOLE, _OUTPUT, _INPUT = "whole", "output", "input"
# Answers that blame the sender's configuration (key, URL), not the entry: a drain keeps the entry.
_SENDER_MISCONFIGURED = frozenset({"http_401", "http_403", "http_404", "http_405", "http_407"})
# An attempt with less time than this left could only time out, and might still be applied.
_MIN_ATTEMPT_SECONDS = 0.05
_DETAIL_CHARS = 300


@dataclass(frozen=True, slots=True)
class Result:
    """An event's fate, in the Event Writer block's shape.

    ``spooled`` is True when the event was not delivered yet but is safe in the
    spool and will be sent later: do not send it again yourself.
    """

    error_status: bool
    event_id: str
    message: str
    spooled: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"error_status": self.error_status, "event_id": self.event_id, "message": self.message}


@dataclass(frozen=True, slots=True)
class _Outcome:
    """What one attempt settled: success (no cause), a permanent error, or a retryable one."""

    cause: str
    message: str
    event_id: str = ""
    retryable: bool = False
    retry_after: float | None = None


class QueueFullError(RuntimeError):
    """The queue was full and the overflow policy is ``raise``."""


@dataclass(slots=True, eq=False)
class _Job:
    prepared: PreparedEvent | None
    url: str
    future: Future
    submitted: float
    deadline: float
    nbytes: int
    request: Request | None = None
    # Two raw images are encoded as two tasks, on two encoders at once; the last to finish builds the request.
    images_left: int = 0
    output_b64: bytes | None = None
    input_b64: bytes | None = None


class _Stats:
    """Counters and the latency window; every event moves exactly one of sent/failed/dropped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.submitted = 0
        self.sent = 0
        self.retried = 0
        self.bytes_sent = 0
        self.failed: Counter[str] = Counter()
        self.dropped: Counter[str] = Counter()
        self.spooled = 0
        self.drained = 0
        self.latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self.encode_seconds = 0.0
        self.images_encoded = 0
        self.snapshot_seconds = 0.0
        self.images_snapshotted = 0

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            ordered = sorted(self.latencies)
            encode = self.encode_seconds / self.images_encoded if self.images_encoded else 0.0
            snapshot = self.snapshot_seconds / self.images_snapshotted if self.images_snapshotted else 0.0
            return {
                "submitted": self.submitted,
                "sent": self.sent,
                "failed": sum(self.failed.values()),
                "failed_by_cause": dict(self.failed),
                "dropped": sum(self.dropped.values()),
                "dropped_by_reason": dict(self.dropped),
                "spooled": self.spooled,
                "drained": self.drained,
                "retried": self.retried,
                "bytes_sent": self.bytes_sent,
                "latency_p50_ms": _percentile(ordered, 0.50) * 1e3,
                "latency_p95_ms": _percentile(ordered, 0.95) * 1e3,
                "latency_p99_ms": _percentile(ordered, 0.99) * 1e3,
                "encode_ms_per_image": encode * 1e3,
                "snapshot_ms_per_image": snapshot * 1e3,
            }


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _detail(body: bytes) -> str:
    try:
        parsed = orjson.loads(body)
        text = parsed.get("detail") if isinstance(parsed, dict) else None
        text = str(text) if text is not None else body.decode("utf-8", "replace")
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace")
    text = text.strip() or "(empty body)"
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS] + "…"


class Outbox(Protocol):
    """Durable storage for requests that could not be delivered now (``fastsend.spool.Spool``)."""

    def put(self, request: Request) -> bool: ...
    def oldest(self) -> Any: ...
    def load_or_quarantine(self, entry: Any) -> Request | None: ...
    def remove(self, entry: Any) -> None: ...
    def quarantine(self, entry: Any, reason: str) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def close(self) -> None: ...


_live_dispatchers: weakref.WeakSet[Dispatcher] = weakref.WeakSet()


class Dispatcher:
    """Owns the queue, the encoder threads, the loop thread and its connection pool."""

    def __init__(self, settings: Settings, outbox: Outbox | None = None) -> None:
        self.settings = settings
        self.jpeg = JpegOptions(settings.jpeg_quality, settings.jpeg_subsampling, settings.jpeg_max_side)
        self.retry = RetryPolicy(settings.retries, settings.backoff_base, settings.backoff_max, settings.deadline)
        self._outbox = outbox
        self._reset()
        _live_dispatchers.add(self)
        if outbox is not None and outbox.oldest() is not None:
            with self._lock:
                self._start_loop()  # what an earlier process left goes out without waiting for a submit

    def _reset(self) -> None:
        """Fresh state: at construction, and in a forked child (the parent's threads did not come along)."""
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._queue: deque[_Job] = deque()
        self._queued_bytes = 0
        self._active = 0
        self._closed = False
        self._encode_jobs: queue.SimpleQueue[tuple[_Job, str] | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._sync_pool: ThreadPoolExecutor | None = None  # encodes a synchronous send's output image
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_error: BaseException | None = None
        self._loop_thread: threading.Thread | None = None
        self._handoff_open = False  # the loop takes encoded events; False once it is shutting down
        self._encoded: deque[_Job] = deque()  # handed off, waiting for the loop to start sending them
        self._launch_scheduled = False
        self._pool: ConnectionPool | None = None
        self._tasks: set[asyncio.Task] = set()
        self._drainer: asyncio.Task | None = None
        self._outbox_filled: asyncio.Event | None = None
        self.stats = _Stats()
        self._drops_unlogged = 0
        self._drops_logged_at = float("-inf")

    # ------------------------------------------------------------ caller side

    def submit(self, prepared: PreparedEvent, url: str, *, deadline: float | None = None, encode_first: bool = False) -> Future:
        """Queue a prepared event; returns with the Future of its ``Result``.

        ``encode_first`` (synchronous sends) encodes the images before queueing, the
        output on a helper thread while this thread does the input: the caller's
        arrays are not read once this returns, so they need no snapshot.
        """
        snapshots = _snapshots(prepared)
        if encode_first:
            try:
                prepared = self._encode_now(prepared)
            except Exception as exc:
                return self._refuse_unencodable(exc)
        now = time.monotonic()
        job = _Job(
            prepared,
            url,
            Future(),
            submitted=now,
            deadline=now + (self.settings.deadline if deadline is None else deadline),
            nbytes=_frame_bytes(prepared),
        )
        dropped: list[tuple[_Job, str, str]] = []
        with self._lock:
            with self.stats.lock:
                self.stats.submitted += 1
                self.stats.images_snapshotted += len(snapshots)
                self.stats.snapshot_seconds += sum(image.snapshot_seconds for image in snapshots)
            if self._closed:
                dropped.append((job, "closed", "writer is closed"))
            else:
                self._admit(job, dropped)
        self._resolve_dropped(dropped)
        return job.future

    def _admit(self, job: _Job, dropped: list[tuple[_Job, str, str]]) -> None:
        """Put ``job`` in the queue under the overflow policy; called with the lock held."""
        policy = self.settings.overflow
        if self._is_full(job):
            if policy == "drop_newest":
                dropped.append((job, "queue_full_drop_newest", "queue full: dropped the newest event (drop_newest)"))
                return
            if policy == "raise":
                with self.stats.lock:
                    self.stats.dropped["queue_full_raise"] += 1
                job.future.set_result(Result(True, "", "queue full: refused (overflow policy raise)"))
                raise QueueFullError(
                    f"queue full ({len(self._queue)} events, {self._queued_bytes} bytes); overflow policy is 'raise'"
                )
            if policy == "block":
                self._room.wait_for(lambda: not self._is_full(job) or self._closed, timeout=self.settings.block_timeout)
                if self._closed:
                    dropped.append((job, "closed", "writer closed while waiting for room"))
                    return
                if self._is_full(job):
                    dropped.append(
                        (job, "queue_full_block_timeout", f"queue full: no room within {self.settings.block_timeout:g}s (block)")
                    )
                    return
            else:  # drop_oldest, or spill: the oldest go to the outbox instead
                reason = "queue_full_spill" if policy == "spill" else "queue_full_drop_oldest"
                while self._queue and self._is_full(job):
                    oldest = self._queue.popleft()
                    self._queued_bytes -= oldest.nbytes
                    dropped.append((oldest, reason, f"queue full: dropped the oldest event ({policy})"))
        self._queue.append(job)
        self._queued_bytes += job.nbytes
        self._pump()

    def _is_full(self, job: _Job) -> bool:
        if not self._queue:
            return False  # an event larger than the byte bound still goes, alone
        return len(self._queue) >= self.settings.queue_size or self._queued_bytes + job.nbytes > self.settings.queue_bytes

    def _pump(self) -> None:
        """Move queued events to the encoders while fewer than ``max_in_flight`` are past the queue."""
        if not self._queue:
            return
        self._start_threads()
        moved = False
        while self._queue and self._active < self.settings.max_in_flight:
            job = self._queue.popleft()
            self._queued_bytes -= job.nbytes
            self._active += 1
            if _encodes_input_separately(job.prepared) and isinstance(job.prepared.output, RawImage):
                job.images_left = 2
                self._encode_jobs.put((job, _OUTPUT))
                self._encode_jobs.put((job, _INPUT))
            else:
                self._encode_jobs.put((job, _WHOLE))
            moved = True
        if moved:
            self._room.notify_all()

    def _encode_now(self, prepared: PreparedEvent) -> PreparedEvent:
        """``prepared`` with its raw images encoded: the output on a helper thread, the input on this one."""
        two_raw = _encodes_input_separately(prepared) and isinstance(prepared.output, RawImage)
        helper = self._sync_encoder() if two_raw else None
        try:
            pending = helper.submit(self._encode_counted, prepared.output) if helper is not None else None
        except RuntimeError:  # shut down by a close() meanwhile: encode both here
            pending = None
        if pending is None:
            encoded = self._encode_here(prepared)
        else:
            try:
                encoded_input = self._encode_counted(prepared.input)
            except BaseException:
                futures.wait([pending])  # the helper must be done with the caller's frame before this returns
                raise
            encoded = dataclasses.replace(prepared, output=pending.result(), input=encoded_input)
        _release_frames(prepared)
        return encoded

    def _encode_here(self, prepared: PreparedEvent) -> PreparedEvent:
        """``prepared`` with its raw images encoded on this thread, each once."""
        output = self._encode_counted(prepared.output)
        source = output if prepared.input is prepared.output else self._encode_counted(prepared.input)
        return dataclasses.replace(prepared, output=output, input=source)

    def _encode_counted(self, image: ImageSource | None) -> ImageSource | None:
        return EncodedImage(self._encode_image(image)) if isinstance(image, RawImage) else image

    def _encode_image(self, source: RawImage) -> bytes:
        """One image's base64 JPEG, with the encoding thread's CPU time counted."""
        started = time.thread_time()
        encoded = to_base64(source, self.jpeg)
        with self.stats.lock:
            self.stats.encode_seconds += time.thread_time() - started
            self.stats.images_encoded += 1
        return encoded

    def _sync_encoder(self) -> ThreadPoolExecutor | None:
        with self._lock:
            if self._closed:
                return None  # the event is refused as closed right after
            if self._sync_pool is None:
                self._sync_pool = ThreadPoolExecutor(self.settings.encode_threads, thread_name_prefix="fastsend-sync-encode")
            return self._sync_pool

    def _refuse_unencodable(self, exc: Exception) -> Future:
        logger.warning("encoding failed: %s", exc)
        future: Future = Future()
        with self.stats.lock:
            self.stats.submitted += 1
            self.stats.failed["encode_error"] += 1
        future.set_result(Result(True, "", f"encoding failed: {exc}"))
        return future

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every submitted event has its Result; returns how many are still pending."""
        with self._lock:
            self._idle.wait_for(lambda: not self._queue and self._active == 0, timeout=timeout)
            return len(self._queue) + self._active

    def snapshot(self) -> dict[str, Any]:
        stats = self.stats.snapshot()
        if self._outbox is not None:
            stats.update(self._outbox.stats())
        with self._lock:
            stats["queued"] = len(self._queue)
            stats["queued_bytes"] = self._queued_bytes
            stats["in_flight"] = self._active
        return stats

    def close(self, timeout: float | None = None) -> int:
        """Flush up to ``timeout``, then stop; what is left is resolved failed. Returns that count.

        When it returns, every event submitted before it has its Result.
        """
        self.flush(timeout)
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
            leftovers = list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            self._room.notify_all()
        unsent_before = self._unsent_at_close()
        for job in leftovers:
            if not self._spool_unsent(job, "writer closed before the event could be sent", "closed"):
                self._finish(job, Result(True, "", "writer closed before the event could be sent"), "closed", counted_active=False)
        if self._loop is not None and self._loop_thread is not None and self._loop_thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown_loop(), self._loop).result()
            self._loop_thread.join(timeout=5)
        for _ in self._workers:
            self._encode_jobs.put(None)
        for worker in self._workers:  # they settle the events they still hold
            if worker is not threading.current_thread():  # close() from a Future's callback on an encoder
                worker.join(timeout=5)
        with self._lock:
            sync_pool, self._sync_pool = self._sync_pool, None
        if sync_pool is not None:
            sync_pool.shutdown(wait=False)
        if self._outbox is not None:
            self._outbox.close()
        unsent = self._unsent_at_close() - unsent_before
        if unsent:
            where = "spooled" if self._outbox is not None else "not sent"
            logger.warning("closed with %d event(s) %s", unsent, where)
        return unsent

    def _unsent_at_close(self) -> int:
        with self.stats.lock:
            return self.stats.dropped["closed"] + self.stats.spooled

    # ------------------------------------------------------------ encoders

    def _start_threads(self) -> None:
        self._start_loop()
        if not self._workers:
            for index in range(self.settings.encode_threads):
                worker = threading.Thread(target=self._encode_forever, name=f"fastsend-encode-{index}", daemon=True)
                worker.start()
                self._workers.append(worker)

    def _start_loop(self) -> None:
        if self._loop_thread is None:
            ready = threading.Event()
            self._loop_thread = threading.Thread(target=self._run_loop, args=(ready,), name="fastsend-loop", daemon=True)
            self._loop_thread.start()
            ready.wait()
            if self._loop_error is not None:
                raise RuntimeError(f"fastsend could not start its event loop: {self._loop_error}") from self._loop_error
            self._handoff_open = True

    def _encode_forever(self) -> None:
        while (task := self._encode_jobs.get()) is not None:
            job, part = task
            if self._closed and self._outbox is None:
                self._finish(job, Result(True, "", "writer closed before the event could be sent"), "closed")
            elif part == _WHOLE:
                if self._build_request(job, counted_active=True):
                    self._hand_off(job)
            elif self._encode_part(job, part):
                self._hand_off(job)

    def _encode_part(self, job: _Job, part: str) -> bool:
        """Encode one of the job's two images; True for the thread that finished the last one."""
        prepared = job.prepared
        source = prepared.output if part == _OUTPUT else prepared.input
        encoded = None
        if not job.future.done():  # else the other image failed: nothing will be sent
            try:
                encoded = self._encode_image(source)
            except Exception as exc:
                logger.warning("encoding failed: %s", exc)
                self._finish(job, Result(True, "", f"encoding failed: {exc}"), "encode_error")
        release_frame(source)
        with self._lock:
            if part == _OUTPUT:
                job.output_b64 = encoded
            else:
                job.input_b64 = encoded
            job.images_left -= 1
            last = job.images_left == 0
        if not last or job.future.done():  # the other image is still encoding, or one of them failed
            return False
        self._set_request(job, splice(prepared.envelope, job.output_b64, job.input_b64))
        job.output_b64 = job.input_b64 = None
        return True

    def _set_request(self, job: _Job, chunks: list[bytes]) -> None:
        job.request = Request.of(job.url, request_headers(job.prepared.idempotency_key, self.settings.api_key), chunks)
        job.prepared = None  # retries need only the request

    def _hand_off(self, job: _Job) -> None:
        """Pass a finished request to the loop thread, or settle it if the loop is shutting down."""
        with self._lock:  # _shutdown_loop closes the hand-off under this lock: no event slips past it
            handed_off = self._handoff_open
            if handed_off:
                self._encoded.append(job)
                if not self._launch_scheduled:  # one wake-up of the loop carries every event encoded meanwhile
                    self._launch_scheduled = True
                    self._loop.call_soon_threadsafe(self._launch_encoded)
        if not handed_off:
            self._give_up(job, "writer closed before the event could be sent", "closed")

    # ------------------------------------------------------------ loop thread

    def _run_loop(self, ready: threading.Event) -> None:
        try:
            loop = _new_event_loop(self.settings.loop)
            asyncio.set_event_loop(loop)
            self._pool = ConnectionPool(self.settings.max_connections, self.settings.connect_timeout)
            if self._outbox is not None:
                self._outbox_filled = asyncio.Event()
                self._drainer = loop.create_task(self._drain_outbox())
        except BaseException as exc:
            self._loop_error = exc
            ready.set()
            raise
        self._loop = loop
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _launch_encoded(self) -> None:
        with self._lock:
            jobs = list(self._encoded)
            self._encoded.clear()
            self._launch_scheduled = False
        for job in jobs:
            task = self._loop.create_task(self._deliver(job))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._delivered, job))

    def _delivered(self, job: _Job, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not job.future.done():  # cancelled before its first step: _deliver never ran to settle it
            self._give_up(job, "writer closed before the event could be sent", "closed")

    async def _deliver(self, job: _Job) -> None:
        try:
            await self._deliver_with_retries(job)
        except asyncio.CancelledError:
            self._give_up(job, "writer closed while the event was being sent", "closed")
            raise
        except Exception as exc:  # a bug here must still settle the event, loudly
            logger.exception("unexpected error while sending an event")
            self._finish(job, Result(True, "", f"internal error: {exc!r}"), "internal_error")

    async def _deliver_with_retries(self, job: _Job) -> None:
        request = job.request
        attempt = 0
        outcome: _Outcome | None = None
        while True:
            attempt += 1
            remaining = job.deadline - time.monotonic()
            if remaining < _MIN_ATTEMPT_SECONDS:
                passed = f"deadline of {self._deadline_seconds(job):g}s passed before attempt {attempt}"
                if outcome is None:
                    await self._give_up_off_loop(job, passed, "deadline")
                else:  # the backoff ended past the deadline: say what the last attempt met
                    await self._give_up_off_loop(job, f"{outcome.message} (gave up: {passed})", outcome.cause)
                return
            outcome = await self._attempt(request, min(self.settings.request_timeout, remaining))
            if not outcome.cause:
                self._finish(job, Result(False, outcome.event_id, outcome.message), "")
                return
            if not outcome.retryable:
                logger.warning("event rejected: %s", outcome.message)
                self._finish(job, Result(True, "", outcome.message), outcome.cause)
                return
            if not self.retry.may_retry(attempt):
                await self._give_up_off_loop(job, f"{outcome.message} (gave up after {attempt} attempts)", outcome.cause)
                return
            wait = self.retry.backoff(attempt, outcome.retry_after)
            if time.monotonic() + wait >= job.deadline:
                await self._give_up_off_loop(job, f"{outcome.message} (gave up: deadline of {self._deadline_seconds(job):g}s)", outcome.cause)
                return
            with self.stats.lock:
                self.stats.retried += 1
            logger.debug("retrying in %.3fs after attempt %d: %s", wait, attempt, outcome.message)
            await asyncio.sleep(wait)

    async def _attempt(self, request: Request, timeout: float) -> _Outcome:
        """One POST, classified."""
        try:
            response = await self._pool.post(request.url, request.headers, request.chunks, request.size, timeout)
        except asyncio.TimeoutError:
            return _Outcome("timeout", f"timed out after {timeout:g}s (the service may have applied it)", retryable=True)
        except (HttpError, OSError) as exc:
            return _Outcome("connection", f"connection error: {exc or type(exc).__name__}", retryable=True)
        status, body = response.status, response.body
        retry_after = parse_retry_after(response.headers.get("retry-after"))
        with self.stats.lock:
            self.stats.bytes_sent += request.size
        if status == 201:
            try:
                return _Outcome("", "event created", event_id=str(orjson.loads(body)["id"]))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                return _Outcome("bad_response", f"HTTP 201 without an id in the body: {_detail(body)}")
        detail = _detail(body)
        if status == AT_CAPACITY_STATUS:
            message = f"service at capacity (529, backpressure): {detail}"
            return _Outcome("http_529", message, retryable=True, retry_after=retry_after)
        retryable = self.retry.is_retryable_status(status)
        return _Outcome(f"http_{status}", f"HTTP {status}: {detail}", retryable=retryable, retry_after=retry_after)

    def _deadline_seconds(self, job: _Job) -> float:
        return job.deadline - job.submitted

    async def _give_up_off_loop(self, job: _Job, message: str, cause: str) -> None:
        if self._outbox is None:
            self._give_up(job, message, cause)
        else:  # writing to the outbox fsyncs: keep it off the loop
            await _off_loop(self._give_up, job, message, cause)

    def _give_up(self, job: _Job, message: str, cause: str, *, counted_active: bool = True) -> None:
        """Settle an event that was not delivered: into the outbox if there is one, else failed."""
        if self._outbox is not None and job.request is not None:
            try:
                spooled = self._outbox.put(job.request)
            except OSError as exc:
                logger.error("could not write to the spool: %s", exc)
                spooled = False
            if spooled:
                result = Result(True, "", f"{message}; spooled for a later retry", spooled=True)
                self._finish(job, result, "spooled", counted_active=counted_active)
                self._wake_drainer()
                return
        if cause == "closed":  # close() logs one line for all of them
            logger.debug("event not delivered: %s", message)
        else:
            logger.warning("event not delivered: %s", message)
        self._finish(job, Result(True, "", message), cause, counted_active=counted_active)

    def _wake_drainer(self) -> None:
        loop, filled = self._loop, self._outbox_filled
        if loop is not None and filled is not None:
            try:
                loop.call_soon_threadsafe(filled.set)
            except RuntimeError:  # loop closed: the next writer on this spool drains it
                pass

    async def _drain_outbox(self) -> None:
        """Send the outbox oldest first, one at a time, backing off while the service is away."""
        failures = 0
        while True:
            try:
                failures = await self._drain_next(failures)
            except Exception:  # a disk error must not end the drain for good, and silently
                logger.exception("spool drainer: unexpected error; trying again")
                failures += 1
                await asyncio.sleep(self.retry.backoff(failures))

    async def _drain_next(self, failures: int) -> int:
        """Send the oldest entry (or wait for one); returns the count of failures in a row."""
        outbox, filled = self._outbox, self._outbox_filled
        entry = outbox.oldest()
        if entry is None:
            filled.clear()
            await filled.wait()
            return failures
        request = await _off_loop(outbox.load_or_quarantine, entry)
        if request is None:
            return failures
        if self.settings.api_key:
            request = Request(request.url, {**request.headers, "X-API-Key": self.settings.api_key}, request.chunks, request.size)
        outcome = await self._attempt(request, self.settings.request_timeout)
        if not outcome.cause:
            await _off_loop(outbox.remove, entry)
            with self.stats.lock:
                self.stats.drained += 1
            return 0
        if not outcome.retryable and outcome.cause not in _SENDER_MISCONFIGURED:
            await _off_loop(outbox.quarantine, entry, f"rejected by the service: {outcome.message}")
            return failures
        if not outcome.retryable:  # the entry is fine: this sender's key or URL is not; keep it for one that works
            logger.error("spool drain paused: %s", outcome.message)
            await asyncio.sleep(self.settings.backoff_max)
            return failures
        failures += 1
        await asyncio.sleep(self.retry.backoff(failures, outcome.retry_after))
        return failures

    async def _shutdown_loop(self) -> None:
        with self._lock:
            self._handoff_open = False  # from now on the encoders settle what they hold themselves
        await asyncio.sleep(0)  # run the hand-offs queued before that, so their tasks exist to be cancelled
        tasks = list(self._tasks)
        if self._drainer is not None:
            tasks.append(self._drainer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pool.close()
        asyncio.get_running_loop().stop()

    # ------------------------------------------------------------ outcomes

    def _finish(self, job: _Job, result: Result, cause: str, *, counted_active: bool = True) -> None:
        """Resolve one event exactly once and move exactly one counter."""
        if job.future.done():
            return
        latency = time.monotonic() - job.submitted
        with self.stats.lock:
            if not result.error_status:
                self.stats.sent += 1
                self.stats.latencies.append(latency)
            elif cause == "spooled":
                self.stats.spooled += 1
            elif cause == "closed" or cause.startswith("queue_full"):
                self.stats.dropped[cause] += 1
            else:
                self.stats.failed[cause] += 1
        job.future.set_result(result)
        if counted_active:
            with self._lock:
                self._active -= 1
                self._pump()
                if not self._queue and self._active == 0:
                    self._idle.notify_all()

    def _resolve_dropped(self, dropped: list[tuple[_Job, str, str]]) -> None:
        """Settle events refused or pushed out of the queue; spilled ones are encoded and spooled here."""
        for job, reason, message in dropped:
            if reason == "queue_full_spill" and self._spool_unsent(job, "queue full (spill)", reason):
                continue
            if job.prepared is not None:
                _release_frames(job.prepared)
                job.prepared = None
            with self.stats.lock:
                self.stats.dropped[reason] += 1
            job.future.set_result(Result(True, "", message))
        if dropped and dropped[0][1] not in ("closed", "queue_full_spill"):
            self._log_drops(len(dropped), dropped[0][2])

    def _log_drops(self, count: int, message: str) -> None:
        # At most one line a second: a camera outrunning the service drops on every frame.
        now = time.monotonic()
        with self.stats.lock:
            self._drops_unlogged += count
            if now - self._drops_logged_at < 1.0:
                return
            count, self._drops_unlogged, self._drops_logged_at = self._drops_unlogged, 0, now
        logger.warning("dropped %d event(s) since the last report: %s", count, message)

    def _spool_unsent(self, job: _Job, why: str, cause: str) -> bool:
        """Encode a job that never reached the encoders and put it in the outbox, on this thread."""
        if self._outbox is None:
            return False
        if self._build_request(job, counted_active=False):
            self._give_up(job, why, cause, counted_active=False)
        return True

    def _build_request(self, job: _Job, *, counted_active: bool) -> bool:
        """Encode the job's images into its finished request; if that fails, settle the job and say so."""
        prepared = job.prepared
        try:
            encoded = self._encode_here(prepared)
        except Exception as exc:
            logger.warning("encoding failed: %s", exc)
            self._finish(job, Result(True, "", f"encoding failed: {exc}"), "encode_error", counted_active=counted_active)
            return False
        self._set_request(job, render_body(encoded, self.jpeg))  # splices: the images are encoded
        _release_frames(prepared)
        return True


async def _off_loop(function: Any, *args: Any) -> Any:
    """Run blocking outbox I/O on the loop's executor, or right here once the interpreter is exiting."""
    try:
        pending = asyncio.get_running_loop().run_in_executor(None, function, *args)
    except RuntimeError:  # at exit executors refuse new work, yet the exit flush must still spool
        return function(*args)
    return await pending


def _images(prepared: PreparedEvent) -> tuple[ImageSource, ...]:
    """The event's images, each once: no input when there is none or it is the output itself."""
    if prepared.input is None or prepared.input is prepared.output:
        return (prepared.output,)
    return (prepared.output, prepared.input)


def _snapshots(prepared: PreparedEvent) -> list[RawImage]:
    return [s for s in _images(prepared) if isinstance(s, RawImage) and s.recyclable]


def _frame_bytes(prepared: PreparedEvent) -> int:
    return sum(s.array.nbytes if isinstance(s, RawImage) else len(s.base64) for s in _images(prepared))


def _release_frames(prepared: PreparedEvent) -> None:
    for source in _images(prepared):
        release_frame(source)


def _encodes_input_separately(prepared: PreparedEvent) -> bool:
    return isinstance(prepared.input, RawImage) and prepared.input is not prepared.output


def _reinit_after_fork() -> None:
    # The parent's threads, loop and sockets do not exist in the child: start over on first use.
    for dispatcher in list(_live_dispatchers):
        dispatcher._reset()
        if dispatcher._outbox is not None:
            # The spool and its lock stay the parent's: a child draining it would send entries twice,
            # and closing it would unlock the directory under the running parent.
            dispatcher._outbox = None
            logger.warning("forked process: this writer sends without the spool, which stays with the parent")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)
