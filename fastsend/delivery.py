"""Delivery: the loop thread, and each event's attempts under the ``RetryPolicy`` and its deadline.

Encoders hand finished requests over with ``hand_off``; one wake-up of the loop carries
every request handed over meanwhile. Each event is one task: attempt, ask the policy,
back off, attempt again — until an ``Outcome`` ends it, which goes to ``finished``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from .admission import Job
from .ledger import Ledger
from .results import Cause, Outcome
from .retry import MIN_ATTEMPT_SECONDS, RetryPolicy
from .transport import Transport

__all__ = ["Delivery", "DeliveryFinished", "LoopThread"]

logger = logging.getLogger("fastsend")

T = TypeVar("T")
# Settles a job whose life on the loop ended: delivered, or failed with the given message.
DeliveryFinished = Callable[[Job, Outcome], Awaitable[None]]
# An event whose caller withdrew it before its first attempt: its slot must be given back.
Withdrawn = Callable[[Job], None]


class LoopThread:
    """One event loop (uvloop when available) running on its own daemon thread."""

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, on_start: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Start the loop and run ``on_start()`` on it before anything else; raises what prevented it."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                loop = _new_event_loop(self._kind)
                asyncio.set_event_loop(loop)
                loop.set_default_executor(_ExitSafeExecutor(thread_name_prefix="fastsend-io"))
                self.loop = loop
                loop.run_until_complete(on_start())
            except BaseException as exc:  # noqa: BLE001 - re-raised on the thread that started the loop
                failure.append(exc)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="fastsend-loop", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise RuntimeError(f"fastsend could not start its event loop: {failure[0]}") from failure[0]

    def is_current(self) -> bool:
        """Whether the caller runs on this loop's thread."""
        return self._thread is threading.current_thread()

    @property
    def running(self) -> bool:
        return self.loop is not None and self._thread is not None and self._thread.is_alive()

    def call_soon(self, callback: Callable[[], object]) -> bool:
        """Run ``callback`` on the loop; False if the loop is gone."""
        if self.loop is None:
            return False
        try:
            self.loop.call_soon_threadsafe(callback)
        except RuntimeError:  # closed
            return False
        return True

    def run(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def stop(self, timeout: float = 5.0) -> None:
        if self.loop is not None and self.running:
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)


class _ExitSafeExecutor(ThreadPoolExecutor):
    """The loop's executor (spool writes, aiohttp's netrc look-up); at interpreter exit, when every
    thread pool refuses new work, it runs the call inline so that the exit flush can still send and spool."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        try:
            return super().submit(fn, *args, **kwargs)
        except RuntimeError:
            done: Future[T] = Future()
            try:
                done.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - carried by the future, as an executor would
                done.set_exception(exc)
            return done


def _new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
            return loop
    return asyncio.new_event_loop()


class Delivery:
    """Sends handed-over jobs on the loop thread, each under the retry policy."""

    def __init__(
        self,
        loop: LoopThread,
        transport: Callable[[], Transport],
        policy: RetryPolicy,
        request_timeout: float,
        ledger: Ledger,
        finished: DeliveryFinished,
        withdrawn: Withdrawn,
        give_up_early: Callable[[Outcome], bool] = lambda outcome: False,
    ) -> None:
        self._loop = loop
        self._make_transport = transport
        self.transport: Transport | None = None
        self._policy = policy
        self._request_timeout = request_timeout
        self._ledger = ledger
        self._finished = finished
        self._withdrawn = withdrawn
        self._give_up_early = give_up_early
        self._lock = threading.Lock()
        self._handed: deque[Job] = deque()
        self._wake_scheduled = False
        self._open = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._unfinished: set[Job] = set()  # launched, not yet given to ``finished``

    async def on_loop_start(self) -> None:
        """Called on the loop thread when it starts: the transport is made there."""
        self.transport = self._make_transport()
        with self._lock:
            self._open = True

    def hand_off(self, job: Job) -> bool:
        """Give a finished request to the loop; False if it is shutting down (the caller settles the job)."""
        with self._lock:  # shutdown closes the hand-off under this lock: no job slips past it
            if not self._open:
                return False
            self._handed.append(job)
            if not self._wake_scheduled:
                self._wake_scheduled = True
                if not self._loop.call_soon(self._launch):
                    self._handed.pop()
                    self._wake_scheduled = False
                    return False
        return True

    def _launch(self) -> None:
        with self._lock:
            jobs = list(self._handed)
            self._handed.clear()
            self._wake_scheduled = False
        loop = asyncio.get_running_loop()
        for job in jobs:
            self._unfinished.add(job)
            task = loop.create_task(self._run(job))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, job: Job) -> None:
        try:
            if not self._ledger.start(job.ticket):
                self._unfinished.discard(job)
                self._withdrawn(job)
                return
            outcome = await self.deliver(job)
        except asyncio.CancelledError:
            await self._finish(job, Outcome(Cause.CLOSED, "writer closed while the event was being sent"))
            raise
        except Exception as exc:  # a bug here must still settle the event, loudly
            logger.exception("unexpected error while sending an event")
            outcome = Outcome(Cause.INTERNAL_ERROR, f"internal error: {exc!r}")
        await self._finish(job, outcome)

    async def _finish(self, job: Job, outcome: Outcome) -> None:
        if job in self._unfinished:
            self._unfinished.discard(job)
            await self._finished(job, outcome)

    async def deliver(self, job: Job) -> Outcome:
        """Attempt until delivered, refused, out of retries, or past the deadline."""
        request = job.request
        assert request is not None and self.transport is not None
        attempt = 0
        last: Outcome | None = None
        while True:
            attempt += 1
            remaining = job.deadline - time.monotonic()
            if remaining < MIN_ATTEMPT_SECONDS:
                passed = f"deadline of {job.budget:g}s passed before attempt {attempt}"
                if last is None:
                    return Outcome(Cause.DEADLINE, passed)
                return _with_reason(last, f"gave up: {passed}")  # say what the last attempt met
            outcome = last = await self.transport.post(request, min(self._request_timeout, remaining))
            if outcome.status is not None:
                self._ledger.count_attempt(request.size)
            if outcome.delivered:
                return outcome
            if self._give_up_early(outcome):
                return outcome
            decision = self._policy.decide(outcome, attempt, job.deadline - time.monotonic())
            if not decision.retry:
                if not self._policy.is_retryable(outcome):
                    return outcome
                return _with_reason(outcome, decision.reason)
            self._ledger.count_retry()
            logger.debug("retrying in %.3fs after attempt %d: %s", decision.wait, attempt, outcome.message)
            await asyncio.sleep(decision.wait)

    async def shutdown(self) -> None:
        """Close the hand-off, end every event task (each settles as closed), close the transport."""
        with self._lock:
            self._open = False
        await asyncio.sleep(0)  # run the hand-offs queued before that, so their tasks exist to be cancelled
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # A task cancelled before its first step never ran: its event is settled here.
        for job in list(self._unfinished):
            await self._finish(job, Outcome(Cause.CLOSED, "writer closed before the event could be sent"))
        if self.transport is not None:
            await self.transport.close()


def _with_reason(outcome: Outcome, reason: str) -> Outcome:
    return Outcome(
        outcome.cause, f"{outcome.message} ({reason})", outcome.event_id, outcome.status, outcome.retry_after
    )
