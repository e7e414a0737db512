"""``Admission`` alone: the queue, the overflow policies and the in-flight slots, with no sender behind it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import pytest

from fastsend.results import Cause, QueueFullError
from fastsend.send.admission import Admission, Refusal
from fastsend.send.job import Job
from fastsend.send.ledger import Ticket

pytestmark = pytest.mark.timeout(30)

WAIT = 5.0


def job(nbytes: int = 10, budget: float = 60.0) -> Job:
    return Job(Ticket(Future(), time.monotonic()), None, time.monotonic() + budget, budget, nbytes)


class Expired:
    """The ``expired`` callback: records the refusals of jobs whose deadline passed in the queue."""

    def __init__(self) -> None:
        self.refusals: list[Refusal] = []
        self.arrived = threading.Event()

    def __call__(self, refusals: list[Refusal]) -> None:
        self.refusals.extend(refusals)
        self.arrived.set()


class Started:
    """The ``start`` callback: records the jobs given a slot, in order."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def __call__(self, job: Job) -> None:
        self.jobs.append(job)


def admission(started: Callable[[Job], None], expired: Expired | None = None, **overrides: Any) -> Admission:
    options: dict[str, Any] = {
        "queue_size": 2,
        "queue_bytes": 1_000,
        "max_in_flight": 1,
        "overflow": "drop_oldest",
        "block_timeout": 0.05,
        **overrides,
    }
    return Admission(start=started, expired=expired or Expired(), **options)


def test_jobs_get_slots_in_order_and_the_rest_wait_in_the_queue() -> None:
    started = Started()
    gate = admission(started, max_in_flight=2, queue_size=5)
    jobs = [job() for _ in range(4)]
    for each in jobs:
        assert gate.admit(each) == []
    assert started.jobs == jobs[:2]
    assert all(j.holds_slot for j in jobs[:2]) and all(j.queued for j in jobs[2:])
    assert gate.state() == {"queued": 2, "queued_bytes": 20, "in_flight": 2}


def test_a_slot_is_given_back_once_however_often_it_is_released() -> None:
    started = Started()
    gate = admission(started, max_in_flight=1, queue_size=5)
    first, second, third = job(), job(), job()
    for each in (first, second, third):
        gate.admit(each)
    gate.release(first)
    gate.release(first)  # a second release must not free a second slot
    assert started.jobs == [first, second]
    assert gate.state()["in_flight"] == 1 and not first.holds_slot
    gate.release(job())  # never held one: nothing happens
    assert started.jobs == [first, second]
    gate.release(second)
    gate.release(third)
    assert gate.state() == {"queued": 0, "queued_bytes": 0, "in_flight": 0}


def test_start_is_called_outside_the_lock() -> None:
    seen: list[dict[str, int]] = []
    gate: Admission

    def start(job: Job) -> None:
        seen.append(gate.state())  # takes the lock: this deadlocks if start runs under it

    gate = admission(start)
    first, second = job(), job()

    def admit_both() -> None:
        gate.admit(first)
        gate.admit(second)
        gate.release(first)

    admitting = threading.Thread(target=admit_both, daemon=True)
    admitting.start()
    admitting.join(WAIT)
    assert not admitting.is_alive()
    assert seen == [{"queued": 0, "queued_bytes": 0, "in_flight": 1}] * 2


def test_withdraw_takes_a_queued_job_out_and_nothing_else() -> None:
    started = Started()
    gate = admission(started, queue_size=5)
    running, waiting = job(), job(nbytes=7)
    gate.admit(running)
    gate.admit(waiting)
    assert gate.withdraw(running.ticket) is None  # holds a slot: not in the queue
    assert gate.withdraw(waiting.ticket) is waiting
    assert not waiting.queued and gate.state() == {"queued": 0, "queued_bytes": 0, "in_flight": 1}
    assert gate.withdraw(waiting.ticket) is None
    gate.release(running)
    assert started.jobs == [running]


def test_withdrawing_the_last_queued_job_wakes_a_waiting_flush() -> None:
    started = Started()
    gate = admission(started, queue_size=5)
    running, waiting = job(), job()
    gate.admit(running)
    gate.admit(waiting)
    assert gate.wait_idle(0.01) == 2
    gate.release(running)  # the queued one moves up and takes the slot
    assert started.jobs == [running, waiting]
    left: list[int] = []
    flushing = threading.Thread(target=lambda: left.append(gate.wait_idle(WAIT)), daemon=True)
    flushing.start()
    gate.release(waiting)
    flushing.join(WAIT)
    assert left == [0]


def test_drop_newest_refuses_the_new_job() -> None:
    gate = admission(Started(), overflow="drop_newest", queue_size=1)
    running, waiting, newest = job(), job(), job()
    gate.admit(running)
    gate.admit(waiting)
    (refusal,) = gate.admit(newest)
    assert (refusal.job, refusal.cause) == (newest, Cause.QUEUE_FULL_DROP_NEWEST)
    assert "drop_newest" in refusal.message
    assert waiting.queued and not newest.queued


def test_drop_oldest_pushes_the_oldest_out_for_the_new_job() -> None:
    gate = admission(Started(), overflow="drop_oldest", queue_size=2)
    running, oldest, middle, newest = job(), job(), job(), job()
    for each in (running, oldest, middle):
        gate.admit(each)
    (refusal,) = gate.admit(newest)
    assert (refusal.job, refusal.cause) == (oldest, Cause.QUEUE_FULL_DROP_OLDEST)
    assert not oldest.queued and middle.queued and newest.queued
    assert gate.state()["queued"] == 2


def test_raise_refuses_the_new_job_and_describes_the_queue() -> None:
    gate = admission(Started(), overflow="raise", queue_size=1)
    gate.admit(job())
    gate.admit(job())
    newest = job()
    (refusal,) = gate.admit(newest)
    assert (refusal.job, refusal.cause) == (newest, Cause.QUEUE_FULL_RAISE)
    error = gate.queue_full_error()
    assert isinstance(error, QueueFullError) and "1 events" in str(error) and "raise" in str(error)


def test_block_waits_for_room_then_gives_up_after_its_timeout() -> None:
    gate = admission(Started(), overflow="block", queue_size=1, block_timeout=0.05)
    gate.admit(job())
    gate.admit(job())
    newest = job()
    (refusal,) = gate.admit(newest)
    assert (refusal.job, refusal.cause) == (newest, Cause.QUEUE_FULL_BLOCK_TIMEOUT)
    assert "0.05s" in refusal.message


def test_block_admits_once_a_slot_frees_room() -> None:
    started = Started()
    gate = admission(started, overflow="block", queue_size=1, block_timeout=WAIT)
    running, waiting, newest = job(), job(), job()
    gate.admit(running)
    gate.admit(waiting)
    refused: list[Any] = []
    blocked = threading.Thread(target=lambda: refused.extend(gate.admit(newest)), daemon=True)
    blocked.start()
    time.sleep(0.05)  # let it block; the outcome does not depend on whether it did yet
    gate.release(running)
    blocked.join(WAIT)
    assert not blocked.is_alive() and refused == []
    assert started.jobs == [running, waiting] and newest.queued


def test_close_wakes_a_blocked_admit_and_refuses_later_ones() -> None:
    gate = admission(Started(), overflow="block", queue_size=1, block_timeout=WAIT)
    running, waiting, blocked_job = job(), job(), job()
    gate.admit(running)
    gate.admit(waiting)
    refused: list[Any] = []
    blocked = threading.Thread(target=lambda: refused.extend(gate.admit(blocked_job)), daemon=True)
    blocked.start()
    time.sleep(0.05)
    assert gate.close() == [waiting]
    blocked.join(WAIT)
    assert not blocked.is_alive()
    assert [(r.job, r.cause) for r in refused] == [(blocked_job, Cause.CLOSED)]
    late = job()
    assert [(r.job, r.cause) for r in gate.admit(late)] == [(late, Cause.CLOSED)]
    assert gate.closed and gate.state() == {"queued": 0, "queued_bytes": 0, "in_flight": 1}


def test_the_byte_bound_counts_queued_bytes_but_a_lone_large_job_still_goes() -> None:
    gate = admission(Started(), queue_size=10, queue_bytes=100, overflow="drop_newest")
    gate.admit(job(nbytes=5))  # takes the slot
    huge = job(nbytes=500)
    assert gate.admit(huge) == []  # the queue was empty: it goes alone
    small = job(nbytes=1)
    (refusal,) = gate.admit(small)
    assert refusal.job is small and gate.state()["queued_bytes"] == 500


def test_withdrawing_a_queued_job_makes_room_for_a_blocked_admit() -> None:
    gate = admission(Started(), overflow="block", queue_size=1, block_timeout=WAIT)
    running, waiting, newest = job(), job(), job()
    gate.admit(running)
    gate.admit(waiting)
    refused: list[Any] = []
    blocked = threading.Thread(target=lambda: refused.extend(gate.admit(newest)), daemon=True)
    blocked.start()
    time.sleep(0.05)
    assert gate.withdraw(waiting.ticket) is waiting
    blocked.join(WAIT)
    assert not blocked.is_alive() and refused == []
    assert newest.queued and gate.state()["queued"] == 1


def test_a_queued_job_leaves_the_queue_at_its_deadline_unsent() -> None:
    started, expired = Started(), Expired()
    gate = admission(started, expired, max_in_flight=1, queue_size=5)
    holder, patient, hurried = job(), job(), job(budget=0.2)
    for each in (holder, patient, hurried):
        gate.admit(each)
    assert started.jobs == [holder]
    assert expired.arrived.wait(WAIT), "the job queued past its deadline was never expired"
    assert [(r.job, r.cause) for r in expired.refusals] == [(hurried, Cause.DEADLINE)]
    assert "passed while the event was queued" in expired.refusals[0].message
    assert not hurried.queued and gate.state() == {"queued": 1, "queued_bytes": 10, "in_flight": 1}
    gate.release(holder)
    assert started.jobs == [holder, patient]  # the expired job never got a slot


def test_an_earlier_deadline_queued_later_still_expires_first() -> None:
    started, expired = Started(), Expired()
    gate = admission(started, expired, max_in_flight=1, queue_size=5)
    gate.admit(job())
    slow, quick = job(budget=30.0), job(budget=0.2)
    gate.admit(slow)  # the watcher now sleeps until the slow one's deadline
    gate.admit(quick)
    assert expired.arrived.wait(WAIT), "the watcher did not wake for the earlier deadline"
    assert [r.job for r in expired.refusals] == [quick]
    assert slow.queued
