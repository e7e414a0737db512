"""The dispatcher wires the sending side's rooms together, and does nothing else.

    caller ── submit ──▶ admission ──▶ encoding ──▶ delivery (loop thread) ──▶ service
                         (queue,        (threads)    (transport, retry policy)
                          slots)            │               │
                             └── refused ───┴── undelivered ┴──▶ drain (spool or fail)

Every event settles exactly once in the ``Ledger``; every in-flight slot is given back
exactly once to ``Admission``. Who calls what is decided here, in one place.

A dispatcher's life is ``open → closing → closed``, and ``close()`` is the one way through it
(see ``fastsend.send.shutdown`` for what leads there: the application, the interpreter's exit,
SIGTERM, eviction from a pool, the last reference dropped). A close interrupted half-way (Ctrl-C)
is resumed by the next one, settling each event once.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from fastsend.config import Settings
from fastsend.errors import BlockingCallError
from fastsend.imaging.jpeg import JpegOptions
from fastsend.results import Cause, Outcome, Result
from fastsend.send import shutdown
from fastsend.send.admission import Admission, Refusal
from fastsend.send.delivery import Delivery
from fastsend.send.drainer import Drainer
from fastsend.send.encoding import Encoders
from fastsend.send.job import Job
from fastsend.send.ledger import Ledger, Ticket
from fastsend.send.loop import LoopThread, off_loop
from fastsend.send.outbox import Outbox, settle_undelivered
from fastsend.send.prepare import PreparedEvent
from fastsend.send.reachability import Reachability
from fastsend.send.retry import RetryPolicy
from fastsend.send.transport import AiohttpTransport, Transport
from fastsend.send.wire import events_url

__all__ = ["Dispatcher", "State"]

logger = logging.getLogger("fastsend")

_CLOSED_UNSENT = "writer closed before the event could be sent"
# While a close waits for the queue to empty, how often it looks whether a SIGTERM cut it short.
_CUT_SHORT_POLL_SECONDS = 0.05


class State(enum.Enum):
    """Where a writer is in its life."""

    OPEN = "open"
    CLOSING = "closing"  # close() has begun: no new event is admitted; what is pending is flushed
    CLOSED = "closed"  # every event submitted before close() has its Result


class Dispatcher:
    """Owns one writer's rooms: ledger, admission, encoders, loop thread, delivery, outbox and drainer."""

    def __init__(
        self,
        settings: Settings,
        outbox: Outbox | None = None,
        transport: Callable[[Settings], Transport] = AiohttpTransport,
    ) -> None:
        self.settings = settings
        self.url = events_url(settings.url)
        self.policy = RetryPolicy(
            settings.retries,
            settings.backoff_base,
            settings.backoff_max,
            settings.deadline,
            settings.retry_after_max,
            spooling=outbox is not None,
        )
        self.jpeg = JpegOptions(settings.jpeg_quality, settings.jpeg_subsampling, settings.jpeg_max_side)
        self._make_transport = transport
        self._outbox = outbox
        self._build()
        shutdown.register(self, spooled=outbox is not None, handle_sigterm=settings.handle_sigterm)
        # Threads and the connection pool start now, off the caller's path: the first submit() costs what
        # the others do, and what an earlier process spooled goes out without waiting for one.
        self._ensure_started()

    def _build(self) -> None:
        """Fresh rooms: at construction, and in a forked child (the parent's threads did not come along)."""
        settings = self.settings
        self._start_lock = threading.Lock()
        self._started = False
        self._close_lock = threading.Lock()
        self.state = State.OPEN
        self._leftovers: deque[Job] = deque()  # taken from the queue by close(), not settled yet
        self._loop_shutdown: Future[None] | None = None
        self._closed_unsent = 0  # events pending at close() that it spooled or settled closed
        self._closed_unsent_lock = threading.Lock()
        self.ledger = Ledger(on_cancelled=self._cancelled)
        self.admission = Admission(
            queue_size=settings.queue_size,
            queue_bytes=settings.queue_bytes,
            max_in_flight=settings.max_in_flight,
            overflow=settings.overflow,
            block_timeout=settings.block_timeout,
            start=self._start_encoding,
            expired=self._settle_refused,
        )
        self.encoders = Encoders(self.jpeg, settings.encode_threads, self.ledger, self._encoded)
        self.loop = LoopThread(settings.loop)
        self.delivery = Delivery(
            self.loop,
            self.policy,
            settings.request_timeout,
            self.ledger,
            finished=self._delivered,
            withdrawn=self.admission.release,
        )
        self.reachability = Reachability(settings.url, self.ledger.settled_counts, spooling=self._outbox is not None)
        self.drainer: Drainer | None = None
        self._drain_task: asyncio.Task[None] | None = None
        if self._outbox is not None:
            self.drainer = Drainer(
                self._outbox, self.policy, settings.request_timeout, self.ledger, watch=self.reachability.observe
            )

    def _ensure_started(self) -> None:
        """Start the loop thread and the encoders (at once; nothing here waits for them)."""
        with self._start_lock:
            if not self._started:
                self._started = True
                self.encoders.start_workers()
                self.loop.start(self._on_loop_start, self._loop_failed)

    async def _on_loop_start(self) -> None:
        transport = self._make_transport(self.settings)  # on the loop: its connection pool belongs to it
        if self.drainer is not None:
            self._drain_task = asyncio.get_running_loop().create_task(self.drainer.run(transport))
        await self.delivery.on_loop_start(transport)  # last: once it returns, hand-offs go to this loop

    def _loop_failed(self, failure: BaseException) -> None:
        logger.error("fastsend could not start its event loop: %s", failure)
        for job in self.delivery.refuse():
            self._encoded_unsendable(job)
            self.admission.release(job)

    # ------------------------------------------------------------ caller side

    def submit(
        self, prepared: PreparedEvent, *, deadline: float | None = None, encode_first: bool = False
    ) -> Future[Result]:
        """Queue a prepared event; returns at once with the Future of its ``Result``.

        ``encode_first`` (synchronous sends) encodes the images before queueing, so the
        caller's arrays are not read once this returns and need no snapshot.
        """
        snapshots = prepared.snapshots
        ticket = self.ledger.open(sum(s.snapshot_seconds for s in snapshots), len(snapshots))
        if encode_first:
            try:
                prepared = self.encoders.encode_now(prepared)
            except Exception as exc:  # noqa: BLE001 - any encoder failure is the event's Result
                logger.warning("encoding failed: %s", exc)
                self.ledger.settle(ticket, Result.failed(Cause.ENCODE_ERROR, f"encoding failed: {exc}"))
                return ticket.future
        budget = self.settings.deadline if deadline is None else deadline
        job = Job.of(ticket, prepared, time.monotonic() + budget, budget)
        if not self.admission.closed:
            self._ensure_started()
        with shutdown.deferring_sigterm():  # an event pushed out of the queue is settled before SIGTERM exits
            refused = self.admission.admit(job)
            self._settle_refused(refused)
        if any(r.job is job and r.cause is Cause.QUEUE_FULL_RAISE for r in refused):
            raise self.admission.queue_full_error()
        return ticket.future

    def _settle_refused(self, refused: list[Refusal]) -> None:
        spill = self.settings.overflow == "spill"
        for refusal in refused:
            outcome = Outcome(refusal.cause, refusal.message)
            if refusal.cause is Cause.DEADLINE or (spill and refusal.cause is Cause.QUEUE_FULL_DROP_OLDEST):
                self._settle_undelivered(refusal.job, outcome)  # into the spool (if any), on this thread
                continue
            refusal.job.release_frames()
            if refusal.cause is not Cause.CLOSED:
                self.ledger.warn_rate_limited(refusal.cause.value, 1, refusal.message)
            self.ledger.settle(refusal.job.ticket, Result.of(outcome), outcome)

    def _cancelled(self, ticket: Ticket) -> None:
        job = self.admission.withdraw(ticket)
        if job is not None:
            job.release_frames()

    # ------------------------------------------------------------ the stages' ends

    def _start_encoding(self, job: Job) -> None:
        if job.ticket.settled:  # withdrawn before it got its slot
            self.admission.release(job)
        else:
            self.encoders.start(job)

    def _encoded(self, job: Job, failure: Outcome | None) -> None:
        """An encoder is done with ``job``: hand it to the loop, or settle it here."""
        try:
            if failure is not None:
                self.ledger.settle(job.ticket, Result.of(failure), failure)
            elif job.ticket.settled:
                pass  # withdrawn by its caller meanwhile
            elif self.delivery.hand_off(job):
                return  # the loop owns it now, and its slot
            else:
                self._encoded_unsendable(job)
        except Exception:
            logger.exception("unexpected error while settling an encoded event")
        self.admission.release(job)

    def _encoded_unsendable(self, job: Job) -> None:
        """An encoded job the loop will not take: it is closing, or it never started."""
        failure = self.loop.failure
        if failure is not None:
            message = f"fastsend could not start its event loop: {failure}"
            self.ledger.settle(job.ticket, Result.failed(Cause.INTERNAL_ERROR, message))
            return
        self._count_closed_unsent()
        self._settle_undelivered(job, Outcome(Cause.CLOSED, _CLOSED_UNSENT))

    async def _delivered(self, job: Job, outcome: Outcome) -> None:
        try:
            self.reachability.observe(outcome)
            if outcome.delivered:
                self.ledger.settle(job.ticket, Result.of(outcome), outcome)
                if self.drainer is not None:
                    self.drainer.service_answered()
            else:
                if outcome.cause is Cause.CLOSED:
                    self._count_closed_unsent()
                if self._outbox is None:
                    self._settle_undelivered(job, outcome)
                else:  # a spool write fsyncs: keep it off the loop
                    await off_loop(self._settle_undelivered, job, outcome)
        finally:
            job.request = None
            self.admission.release(job)

    def _settle_undelivered(self, job: Job, outcome: Outcome) -> None:
        settle_undelivered(
            job,
            outcome,
            outbox=self._outbox,
            policy=self.policy,
            ledger=self.ledger,
            build_request=self.encoders.build_request,
            wake_drainer=self._wake_drainer,
        )

    def _count_closed_unsent(self) -> None:
        with self._closed_unsent_lock:
            self._closed_unsent += 1

    def _wake_drainer(self) -> None:
        if self.drainer is not None:
            self.loop.call_soon(self.drainer.wake)

    def _nudge_drainer(self) -> None:
        if self.drainer is not None:
            self.loop.call_soon(self.drainer.nudge)

    # ------------------------------------------------------------ waiting and closing

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every submitted event has its Result; returns how many are still pending."""
        if self.loop.is_current():
            raise BlockingCallError(
                "flush() on fastsend's loop thread would wait for itself; call it from another thread"
            )
        return self.admission.wait_idle(timeout)

    def drain(self, timeout: float | None = None) -> int:
        """Flush, then wait until the spool is empty too (or the writer closed); returns the events still
        pending or spooled."""
        started = time.monotonic()
        pending = self.flush(timeout)
        outbox = self._outbox
        if outbox is None:
            return pending
        if len(outbox) and self.state is State.OPEN:
            self._ensure_started()
            self._nudge_drainer()  # a drainer backing off tries again now
            outbox.wait_empty(None if timeout is None else max(0.0, started + timeout - time.monotonic()))
        return self.ledger.pending + len(outbox)

    def snapshot(self) -> dict[str, Any]:
        stats = self.ledger.snapshot()
        stats.update(self.admission.state())
        if self._outbox is not None:
            stats.update(self._outbox.stats())
        return stats

    @property
    def exit_flush_timeout(self) -> float:
        return self.settings.exit_flush_timeout

    def close(self, timeout: float | None = None) -> int:
        """Flush up to ``timeout``, then stop; what is left is spooled or settled closed. Returns that count.

        When it returns, every event submitted before it has its Result. A concurrent close waits for
        this one, then finds it done; a SIGTERM meanwhile cuts the flush short (``fastsend.send.shutdown``).
        """
        if self.loop.is_current():
            raise BlockingCallError(
                "close() called on fastsend's loop thread (from a Result's done-callback?) would wait for itself; "
                "call it from another thread"
            )
        with shutdown.closing():
            with self._close_lock:
                if self.state is State.CLOSED:
                    return 0
                self.state = State.CLOSING
                unsent = self._close(timeout)
                self.state = State.CLOSED
            shutdown.unregister(self)
        return unsent

    def _close(self, timeout: float | None) -> int:
        """Every step can be done again: a close interrupted half-way is resumed by the next one."""
        self.admission.refuse_new()  # what is submitted from now on is refused, not counted here
        self._flush_for_close(timeout)
        self._leftovers.extend(self.admission.close())
        closing = Outcome(Cause.CLOSED, _CLOSED_UNSENT)
        while self._leftovers:
            job = self._leftovers[0]
            if not job.ticket.settled:
                self._count_closed_unsent()
                self._settle_undelivered(job, closing)
            self._leftovers.popleft()
        self._stop_loop()
        self.encoders.stop()  # they settle the events they still hold (hand-off is closed)
        if self._outbox is not None:
            self._outbox.close()
        self.ledger.flush_warnings()
        unsent = self._closed_unsent
        if unsent:
            where = "spooled" if self._outbox is not None else "not sent"
            logger.warning("closed with %d event(s) %s", unsent, where)
        return unsent

    def _flush_for_close(self, timeout: float | None) -> None:
        """Wait up to ``timeout`` for what is queued and in flight, or until a SIGTERM cuts the wait short."""
        ends = None if timeout is None else time.monotonic() + timeout
        while not shutdown.cut_short():
            left = _CUT_SHORT_POLL_SECONDS if ends is None else min(_CUT_SHORT_POLL_SECONDS, ends - time.monotonic())
            if self.flush(max(0.0, left)) == 0 or (ends is not None and time.monotonic() >= ends):
                return

    def _stop_loop(self) -> None:
        """End every event task (each settles), the drainer and the transport; then the loop thread."""
        if self.loop.wait_ready(timeout=5.0) and self.loop.running:
            if self._loop_shutdown is None:
                self._loop_shutdown = self.loop.run(self._shutdown_loop())
            self._loop_shutdown.result()
            self.loop.stop()
        else:
            for job in self.delivery.refuse():  # handed over to a loop that never ran
                self._encoded_unsendable(job)
                self.admission.release(job)

    async def _shutdown_loop(self) -> None:
        if self._drain_task is not None:
            self._drain_task.cancel()
            await asyncio.gather(self._drain_task, return_exceptions=True)
        await self.delivery.shutdown()

    # ------------------------------------------------------------ fork

    def reset_in_child(self) -> None:
        """In a forked child: fresh rooms (the parent's threads did not come along), and no spool.

        The spool and its lock stay the parent's: a child draining it would send entries twice,
        and closing it would unlock the directory under the running parent.
        """
        if self._outbox is not None:
            self._outbox.leave_to_parent()  # else a child outliving its parent keeps the spool locked
            self._outbox = None
            logger.warning("forked process: this writer sends without the spool, which stays with the parent")
        self._build()  # its threads start with its first event
