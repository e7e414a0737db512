"""Delivery's attempt loop, alone: a fake transport answers from a script, the RetryPolicy and the deadline
decide, and each outcome is checked against the attempts made and the books."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import pytest

from fastsend.results import Cause, Outcome
from fastsend.send.delivery import Delivery
from fastsend.send.job import Job
from fastsend.send.ledger import Ledger
from fastsend.send.loop import LoopThread
from fastsend.send.retry import RetryPolicy
from fastsend.send.wire import Request

DELIVERED = Outcome(None, "event created", event_id="7", status=201)
BUSY = Outcome(Cause.HTTP_STATUS, "HTTP 503", status=503)
REJECTED = Outcome(Cause.HTTP_STATUS, "HTTP 400: bad", status=400)
UNREACHABLE = Outcome(Cause.CONNECTION, "connection refused")


class ScriptedTransport:
    """Answers attempt N with ``script[N]`` (the last repeats), after ``delay`` seconds; records each timeout."""

    def __init__(self, script: Sequence[Outcome], delay: float = 0.0) -> None:
        self.script = list(script)
        self.delay = delay
        self.timeouts: list[float] = []
        self.closed = False

    async def post(self, request: Request, timeout: float) -> Outcome:
        self.timeouts.append(timeout)
        await asyncio.sleep(min(self.delay, timeout))
        if self.delay > timeout:
            return Outcome(Cause.TIMEOUT, f"timed out after {timeout:g}s")
        return self.script[min(len(self.timeouts) - 1, len(self.script) - 1)]

    async def close(self) -> None:
        self.closed = True


def deliver(transport: ScriptedTransport, policy: RetryPolicy, budget: float, request_timeout: float = 1.0):
    ledger = Ledger()
    unused = LoopThread("asyncio")  # deliver() runs on the test's own loop; the thread is never started
    delivery = Delivery(unused, policy, request_timeout, ledger, finished=_never, withdrawn=_never)
    delivery.transport = transport
    job = Job(ledger.open(), None, time.monotonic() + budget, budget, 0, Request.of("key-1", [b"{}"]))
    return asyncio.run(delivery.deliver(job)), ledger.snapshot()


async def _never(*args: object) -> None:
    raise AssertionError("deliver() alone neither finishes nor withdraws a job")


FAST = RetryPolicy(retries=4, backoff_base=0.001, backoff_max=0.002, deadline=5.0)


def test_delivered_on_the_first_attempt():
    outcome, stats = deliver(ScriptedTransport([DELIVERED]), FAST, 5.0)
    assert outcome is DELIVERED and stats["retried"] == 0 and stats["bytes_sent"] == 2


def test_a_busy_service_is_retried_until_it_answers():
    transport = ScriptedTransport([BUSY, BUSY, DELIVERED])
    outcome, stats = deliver(transport, FAST, 5.0)
    assert outcome is DELIVERED and len(transport.timeouts) == 3 and stats["retried"] == 2


def test_a_rejection_is_never_retried():
    transport = ScriptedTransport([REJECTED, DELIVERED])
    outcome, _ = deliver(transport, FAST, 5.0)
    assert outcome is REJECTED and len(transport.timeouts) == 1


def test_retries_end_after_the_policys_count_with_the_last_answer_and_why():
    transport = ScriptedTransport([BUSY])
    outcome, stats = deliver(transport, RetryPolicy(retries=2, backoff_base=0.001, backoff_max=0.001), 5.0)
    assert len(transport.timeouts) == 3 and stats["retried"] == 2
    assert outcome.status == 503 and "gave up after 3 attempts" in outcome.message


def test_with_a_spool_an_unreachable_service_is_not_retried():
    transport = ScriptedTransport([UNREACHABLE, DELIVERED])
    outcome, _ = deliver(transport, RetryPolicy(spooling=True, backoff_base=0.001), 5.0)
    assert outcome.cause is Cause.CONNECTION and "unreachable" in outcome.message and len(transport.timeouts) == 1


def test_each_attempt_is_bounded_by_what_is_left_of_the_deadline():
    transport = ScriptedTransport([DELIVERED], delay=10.0)  # never answers in time
    started = time.monotonic()
    outcome, _ = deliver(transport, RetryPolicy(retries=100, backoff_base=0.001, backoff_max=0.001), 0.5, 0.2)
    took = time.monotonic() - started
    assert outcome.cause is Cause.TIMEOUT and "gave up" in outcome.message and len(transport.timeouts) >= 2
    assert all(timeout <= 0.2 for timeout in transport.timeouts)
    assert took < 2.0


def test_an_event_past_its_deadline_is_never_sent():
    transport = ScriptedTransport([DELIVERED])
    outcome, _ = deliver(transport, FAST, 0.0)
    assert outcome.cause is Cause.DEADLINE and "(not sent)" in outcome.message and transport.timeouts == []


@pytest.mark.parametrize("retry_after", [0.0, None])
def test_a_retry_after_of_zero_still_waits_the_floor(retry_after):
    answer = Outcome(Cause.HTTP_STATUS, "HTTP 503", status=503, retry_after=retry_after)
    transport = ScriptedTransport([answer, answer, DELIVERED])
    policy = RetryPolicy(retries=4, backoff_base=0.2, backoff_max=0.2)
    started = time.monotonic()
    outcome, _ = deliver(transport, policy, 5.0)
    if retry_after is not None:  # two waits of at least the floor, 0.1 s each
        assert time.monotonic() - started >= 0.2
    assert outcome is DELIVERED
