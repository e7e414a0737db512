"""Admission: the bounded queue in front of the encoders, the overflow policies, and the in-flight slots.

An event waits in the queue until one of ``max_in_flight`` slots is free; it then holds
its slot while it is encoded, sent and backed off, and gives it back exactly once
(``release``), whatever ends it. An event still queued at its deadline leaves the queue
then, unsent (``expired``), so a deadline bounds the time queued too.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from fastsend.results import Cause, QueueFullError
from fastsend.send.job import Job
from fastsend.send.ledger import Ticket

__all__ = ["Admission", "Refusal"]


@dataclass(frozen=True, slots=True)
class Refusal:
    """An event the queue did not keep, and why."""

    job: Job
    cause: Cause
    message: str


class Admission:
    """The queue and the slots; ``start`` is called (outside the lock) for each job given a slot,
    ``expired`` (from a watcher thread) with the jobs whose deadline passed while they were queued."""

    def __init__(
        self,
        *,
        queue_size: int,
        queue_bytes: int,
        max_in_flight: int,
        overflow: str,
        block_timeout: float,
        start: Callable[[Job], None],
        expired: Callable[[list[Refusal]], None],
    ) -> None:
        self._queue_size = queue_size
        self._queue_bytes = queue_bytes
        self._max_in_flight = max_in_flight
        self._overflow = overflow
        self._block_timeout = block_timeout
        self._start = start
        self._expired = expired
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._deadlines = threading.Condition(self._lock)
        self._queue: deque[Job] = deque()
        self._queued_bytes = 0
        self._room_waiters = 0  # callers blocked for room (overflow "block"): only they need waking
        self._in_flight = 0
        self._closed = False  # no new events admitted; what is queued still moves on until close()
        self._next_deadline = float("inf")  # no queued event is due before this
        self._watcher: threading.Thread | None = None

    def admit(self, job: Job) -> list[Refusal]:
        """Queue ``job`` under the overflow policy; returns the events refused or pushed out, to settle.

        Under the ``raise`` policy ``job`` comes back refused; the caller settles it, then raises.
        """
        refused: list[Refusal] = []
        with self._lock:
            if self._closed:
                return [Refusal(job, Cause.CLOSED, "writer is closed")]
            if self._is_full(job) and not self._make_room(job, refused):
                return refused
            job.queued = True
            self._queue.append(job)
            self._queued_bytes += job.nbytes
            started = self._fill_slots()
            if job.queued:
                self._watch(job)
        self._start_all(started)
        return refused

    # ------------------------------------------------------------ deadlines of queued events

    def _watch(self, job: Job) -> None:
        """``job`` waits for a slot: make sure the watcher wakes by its deadline (under the lock)."""
        if job.deadline < self._next_deadline:
            self._next_deadline = job.deadline
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch_deadlines, name="fastsend-deadlines", daemon=True)
                self._watcher.start()
            else:
                self._deadlines.notify()

    def _watch_deadlines(self) -> None:
        with self._lock:
            while not (self._closed and not self._queue):
                now = time.monotonic()
                due = [job for job in self._queue if job.deadline <= now]
                if due:
                    for job in due:
                        self._remove(job)
                    self._room.notify_all()
                    self._notify_if_idle()
                    refusals = [Refusal(job, Cause.DEADLINE, _expired_message(job)) for job in due]
                    self._lock.release()
                    try:
                        self._expired(refusals)
                    finally:
                        self._lock.acquire()
                    continue
                self._next_deadline = min((job.deadline for job in self._queue), default=float("inf"))
                wait = None if self._next_deadline == float("inf") else self._next_deadline - now
                self._deadlines.wait(wait)
            self._watcher = None

    def _remove(self, job: Job) -> None:
        self._queue.remove(job)
        job.queued = False
        self._queued_bytes -= job.nbytes

    def _make_room(self, job: Job, refused: list[Refusal]) -> bool:
        """Apply the overflow policy to a full queue; False if ``job`` itself is refused."""
        policy = self._overflow
        if policy == "drop_newest":
            refused.append(
                Refusal(job, Cause.QUEUE_FULL_DROP_NEWEST, "queue full: dropped the newest event (drop_newest)")
            )
            return False
        if policy == "raise":
            refused.append(Refusal(job, Cause.QUEUE_FULL_RAISE, "queue full: refused (overflow policy raise)"))
            return False
        if policy == "block":
            self._room_waiters += 1
            try:
                self._room.wait_for(lambda: not self._is_full(job) or self._closed, timeout=self._block_timeout)
            finally:
                self._room_waiters -= 1
            if self._closed:
                refused.append(Refusal(job, Cause.CLOSED, "writer closed while waiting for room"))
                return False
            if self._is_full(job):
                message = f"queue full: no room within {self._block_timeout:g}s (block)"
                refused.append(Refusal(job, Cause.QUEUE_FULL_BLOCK_TIMEOUT, message))
                return False
            return True
        # drop_oldest, or spill: the oldest leave the queue (spill sends them to the spool)
        while self._queue and self._is_full(job):
            oldest = self._pop_oldest()
            refused.append(
                Refusal(oldest, Cause.QUEUE_FULL_DROP_OLDEST, f"queue full: dropped the oldest event ({policy})")
            )
        return True

    def queue_full_error(self) -> QueueFullError:
        with self._lock:
            return QueueFullError(
                f"queue full ({len(self._queue)} events, {self._queued_bytes} bytes); overflow policy is 'raise'"
            )

    def _is_full(self, job: Job) -> bool:
        if not self._queue:
            return False  # an event larger than the byte bound still goes, alone
        return len(self._queue) >= self._queue_size or self._queued_bytes + job.nbytes > self._queue_bytes

    def _pop_oldest(self) -> Job:
        job = self._queue.popleft()
        job.queued = False
        self._queued_bytes -= job.nbytes
        return job

    def _fill_slots(self) -> list[Job]:
        started = []
        while self._queue and self._in_flight < self._max_in_flight:
            job = self._pop_oldest()
            job.holds_slot = True
            self._in_flight += 1
            started.append(job)
        if started and self._room_waiters:
            self._room.notify_all()
        return started

    def _start_all(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._start(job)

    def withdraw(self, ticket: Ticket) -> Job | None:
        """Take a cancelled event out of the queue; None if it is no longer queued."""
        with self._lock:
            for job in self._queue:
                if job.ticket is ticket:
                    self._remove(job)
                    self._room.notify_all()
                    self._notify_if_idle()
                    return job
        return None

    def release(self, job: Job) -> None:
        """Give back ``job``'s slot, once; queued events move up."""
        with self._lock:
            if not job.holds_slot:
                return
            job.holds_slot = False
            self._in_flight -= 1
            started = self._fill_slots()
            self._notify_if_idle()
        self._start_all(started)

    def _notify_if_idle(self) -> None:
        if not self._queue and self._in_flight == 0:
            self._idle.notify_all()

    def wait_idle(self, timeout: float | None) -> int:
        """Wait until nothing is queued or in flight; returns how many still are."""
        with self._lock:
            self._idle.wait_for(lambda: not self._queue and self._in_flight == 0, timeout=timeout)
            return len(self._queue) + self._in_flight

    def refuse_new(self) -> None:
        """Admit no new event from now on; the queued ones keep moving to the encoders."""
        with self._lock:
            self._closed = True
            self._room.notify_all()
            self._deadlines.notify()

    def close(self) -> list[Job]:
        """Refuse new events, and take the queued ones out: returns them, to settle."""
        with self._lock:
            self._closed = True
            leftovers = list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            for job in leftovers:
                job.queued = False
            self._room.notify_all()
            self._deadlines.notify()
            self._notify_if_idle()
            return leftovers

    @property
    def closed(self) -> bool:
        return self._closed

    def state(self) -> dict[str, int]:
        with self._lock:
            return {"queued": len(self._queue), "queued_bytes": self._queued_bytes, "in_flight": self._in_flight}


def _expired_message(job: Job) -> str:
    return f"deadline of {job.budget:g}s passed while the event was queued (not sent)"
