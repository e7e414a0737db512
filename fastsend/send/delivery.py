"""Delivery: each event's attempts, on the loop thread, under the ``RetryPolicy`` and its deadline.

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
from collections.abc import Awaitable, Callable

from fastsend.results import Cause, Outcome
from fastsend.send.job import Job
from fastsend.send.ledger import Ledger
from fastsend.send.loop import LoopThread
from fastsend.send.retry import MIN_ATTEMPT_SECONDS, RetryPolicy
from fastsend.send.transport import Transport

__all__ = ["Delivery", "DeliveryFinished"]

logger = logging.getLogger("fastsend")

# Settles a job whose life on the loop ended: delivered, or failed with the given message.
DeliveryFinished = Callable[[Job, Outcome], Awaitable[None]]
# An event whose caller withdrew it before its first attempt: its slot must be given back.
Withdrawn = Callable[[Job], None]


class Delivery:
    """Sends handed-over jobs on the loop thread, each under the retry policy."""

    def __init__(
        self,
        loop: LoopThread,
        policy: RetryPolicy,
        request_timeout: float,
        ledger: Ledger,
        finished: DeliveryFinished,
        withdrawn: Withdrawn,
    ) -> None:
        self._loop = loop
        self.transport: Transport | None = None  # given by on_loop_start: the dispatcher builds it on the loop
        self._policy = policy
        self._request_timeout = request_timeout
        self._ledger = ledger
        self._finished = finished
        self._withdrawn = withdrawn
        self._lock = threading.Lock()
        self._handed: deque[Job] = deque()
        self._wake_scheduled = False
        # starting: jobs wait in _handed for the loop; open: each hand-off wakes the loop; closed: refused.
        self._state = "starting"
        self._tasks: set[asyncio.Task[None]] = set()
        self._unfinished: set[Job] = set()  # launched, not yet given to ``finished``

    async def on_loop_start(self, transport: Transport) -> None:
        """Called on the loop thread when it starts, with the transport to send through; then what waited goes."""
        self.transport = transport
        with self._lock:
            if self._state != "starting":
                return
            self._state = "open"
            self._wake_scheduled = bool(self._handed)
        if self._wake_scheduled:
            self._launch()

    def hand_off(self, job: Job) -> bool:
        """Give a finished request to the loop; False if it is shutting down (the caller settles the job)."""
        with self._lock:  # shutdown closes the hand-off under this lock: no job slips past it
            if self._state == "closed":
                return False
            self._handed.append(job)
            if self._state == "starting" or self._wake_scheduled:
                return True
            self._wake_scheduled = True
            if not self._loop.call_soon(self._launch):
                self._handed.pop()
                self._wake_scheduled = False
                return False
        return True

    def refuse(self) -> list[Job]:
        """Close the hand-off without a loop (it never started): returns the jobs that waited for it."""
        with self._lock:
            self._state = "closed"
            jobs = list(self._handed)
            self._handed.clear()
        return jobs

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
                    return Outcome(Cause.DEADLINE, f"{passed} (not sent)")
                return _with_reason(last, f"gave up: {passed}")  # say what the last attempt met
            outcome = last = await self.transport.post(request, min(self._request_timeout, remaining))
            if outcome.status is not None:
                self._ledger.count_attempt(request.size)
            if outcome.delivered:
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
            self._state = "closed"
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
