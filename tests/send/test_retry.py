"""Retry policy: full-jitter backoff bounds, Retry-After, which statuses retry, the worst case."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastsend import RetryPolicy
from fastsend.results import Cause, Outcome
from fastsend.send.retry import RETRYABLE_STATUSES, Decision, parse_retry_after

NOW = datetime(2026, 11, 26, 4, 44, 12, tzinfo=timezone.utc)


def ceiling(policy: RetryPolicy, attempt: int) -> float:
    return min(policy.backoff_max, policy.backoff_base * 2 ** (attempt - 1))


# ---------------------------------------------------------------- backoff


@pytest.mark.parametrize(
    "policy", [RetryPolicy(), RetryPolicy(backoff_base=1.0, backoff_max=30.0), RetryPolicy(backoff_base=0.0)]
)
def test_backoff_stays_within_full_jitter_bounds(policy):
    rng = random.Random(1234)
    for attempt in range(1, 13):
        samples = [policy.backoff(attempt, rng=rng) for _ in range(300)]
        top = ceiling(policy, attempt)
        assert all(0.0 <= wait <= top for wait in samples)
        if top:
            assert max(samples) > 0.9 * top and min(samples) < 0.1 * top  # jitter spans the range


def test_backoff_grows_then_caps():
    policy = RetryPolicy(backoff_base=0.2, backoff_max=5.0)
    tops = [max(policy.backoff(n, rng=random.Random(seed)) for seed in range(200)) for n in range(1, 9)]
    assert tops[1] > tops[0] * 1.5 and tops[2] > tops[1] * 1.5
    assert all(top <= 5.0 for top in tops) and tops[-1] > 4.5


def test_backoff_is_reproducible_with_a_seeded_rng():
    policy = RetryPolicy()
    first = [policy.backoff(n, rng=random.Random(7)) for n in range(1, 6)]
    assert first == [policy.backoff(n, rng=random.Random(7)) for n in range(1, 6)]


@settings(max_examples=200, deadline=None)
@given(
    attempt=st.integers(min_value=1, max_value=100_000),
    base=st.floats(min_value=0.0, max_value=10.0),
    cap=st.floats(min_value=0.0, max_value=600.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_property_backoff_bounds(attempt, base, cap, seed):
    policy = RetryPolicy(backoff_base=base, backoff_max=cap)
    wait = policy.backoff(attempt, rng=random.Random(seed))
    assert 0.0 <= wait <= min(cap, base * 2 ** min(attempt - 1, 1000))


@pytest.mark.parametrize("retry_after", [3.0, 120.0])
def test_retry_after_is_honoured_above_the_backoff_cap(retry_after):
    policy = RetryPolicy(backoff_max=1.0, retry_after_max=600.0)
    assert policy.backoff(1, retry_after, rng=random.Random(0)) == retry_after


@pytest.mark.parametrize("retry_after, waited", [(59.0, 59.0), (60.0, 60.0), (86400.0, 60.0), (4.1e9, 60.0)])
def test_retry_after_is_capped_by_retry_after_max(retry_after, waited):
    assert RetryPolicy(retry_after_max=60.0).backoff(1, retry_after) == waited


def test_with_a_spool_an_unreachable_service_gives_up_at_once_and_a_busy_one_is_retried():
    unreachable = Outcome(Cause.CONNECTION, "connection error: refused")
    busy = Outcome(Cause.HTTP_STATUS, "HTTP 503: busy", status=503)
    spooling, plain = RetryPolicy(spooling=True), RetryPolicy()
    assert spooling.decide(unreachable, 1, 30.0) == Decision(False, reason="the service is unreachable")
    assert plain.decide(unreachable, 1, 30.0).retry
    assert spooling.decide(busy, 1, 30.0).retry


@pytest.mark.parametrize(
    "outcome, spoolable",
    [
        (Outcome(Cause.TIMEOUT, "t"), True),
        (Outcome(Cause.CONNECTION, "c"), True),
        (Outcome(Cause.DEADLINE, "d"), True),
        (Outcome(Cause.HTTP_STATUS, "503", status=503), True),
        (Outcome(Cause.HTTP_STATUS, "422", status=422), False),
        (Outcome(Cause.BAD_RESPONSE, "201 cut", status=201), False),
        (Outcome(Cause.INVALID_REQUEST, "bad header"), False),
        (Outcome(Cause.TLS, "tls"), False),
    ],
)
def test_what_may_wait_in_the_spool(outcome, spoolable):
    assert RetryPolicy().spoolable(outcome) is spoolable


# ---------------------------------------------------------------- Retry-After


@pytest.mark.parametrize("value, seconds", [("0", 0.0), ("7", 7.0), (" 120 ", 120.0), ("86400", 86400.0)])
def test_retry_after_delta_seconds(value, seconds):
    assert parse_retry_after(value, now=NOW) == seconds


@pytest.mark.parametrize("delta", [timedelta(seconds=30), timedelta(minutes=5), timedelta(0)])
def test_retry_after_http_date(delta):
    header = format_datetime(NOW + delta, usegmt=True)  # e.g. "Thu, 26 Nov 2026 04:44:42 GMT"
    assert parse_retry_after(header, now=NOW) == delta.total_seconds()


def test_retry_after_http_date_with_numeric_offsets():
    later = NOW + timedelta(seconds=90)
    assert parse_retry_after(format_datetime(later.astimezone(timezone(timedelta(hours=2)))), now=NOW) == 90.0
    # "-0000" means UTC of unknown origin: the parser returns a naive datetime for it
    assert parse_retry_after(later.strftime("%a, %d %b %Y %H:%M:%S -0000"), now=NOW) == 90.0


def test_retry_after_in_the_past_is_zero():
    assert parse_retry_after(format_datetime(NOW - timedelta(hours=1), usegmt=True), now=NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "-5", "1.5", "1e3", "²", "٣", "Thu, 99 Foo 2026"])
def test_unusable_retry_after_is_none(value):
    assert parse_retry_after(value, now=NOW) is None


# ---------------------------------------------------------------- statuses and attempts


def http(status: int, retry_after: float | None = None) -> Outcome:
    return Outcome(Cause.HTTP_STATUS, f"HTTP {status}", status=status, retry_after=retry_after)


def test_retryable_statuses_are_exactly_the_spec_s():
    assert RETRYABLE_STATUSES == {408, 425, 429, 500, 502, 503, 504, 529}
    for status in range(100, 600):
        assert RetryPolicy.is_retryable(http(status)) is (status in {408, 425, 429, 500, 502, 503, 504, 529})


@pytest.mark.parametrize(
    "cause, retryable",
    [
        (Cause.TIMEOUT, True),
        (Cause.CONNECTION, True),
        (Cause.TLS, False),
        (Cause.INVALID_URL, False),
        (Cause.BAD_RESPONSE, False),
    ],
)
def test_only_passing_failures_are_retried(cause, retryable):
    outcome = Outcome(cause, "x")
    assert RetryPolicy.is_retryable(outcome) is retryable
    assert RetryPolicy(retries=3).decide(outcome, 1, remaining=60).retry is retryable


@pytest.mark.parametrize("retries", [0, 1, 4, 10])
def test_decide_allows_exactly_retries_more_attempts(retries):
    policy = RetryPolicy(retries=retries, backoff_base=0.0)
    allowed = [attempt for attempt in range(1, retries + 5) if policy.decide(http(503), attempt, remaining=60).retry]
    assert allowed == list(range(1, retries + 1))  # attempt retries + 1 is the last
    assert policy.decide(http(503), retries + 1, remaining=60).reason == f"gave up after {retries + 1} attempts"


def test_decide_honours_retry_after_and_gives_up_when_the_deadline_comes_first():
    policy = RetryPolicy(retries=5, backoff_base=0.1, backoff_max=0.2)
    assert policy.decide(http(529, retry_after=3.0), 1, remaining=10).wait == 3.0
    late = policy.decide(http(529, retry_after=3.0), 1, remaining=2.0)
    assert late.retry is False and "deadline" in late.reason
    assert policy.decide(http(400), 1, remaining=10) == Decision(False, reason="not retryable")


@pytest.mark.parametrize(
    "status, blamed",
    [
        (301, True),
        (307, True),
        (401, True),
        (403, True),
        (404, True),
        (405, True),
        (407, True),
        (400, False),
        (422, False),
        (503, False),
    ],
)
def test_blames_sender_for_redirects_and_key_or_url_answers(status, blamed):
    assert RetryPolicy.blames_sender(http(status)) is blamed


# ---------------------------------------------------------------- worst case


@pytest.mark.parametrize(
    "policy, timeout",
    [
        (RetryPolicy(), 5.0),
        (RetryPolicy(retries=0), 5.0),
        (RetryPolicy(retries=10, backoff_base=0.5, backoff_max=4.0, deadline=1000.0), 2.0),
        (RetryPolicy(retries=8, backoff_base=1.0, backoff_max=60.0, deadline=20.0), 5.0),  # the deadline binds
    ],
)
def test_worst_case_seconds(policy, timeout):
    attempts = policy.retries + 1
    longest_waits = sum(ceiling(policy, attempt) for attempt in range(1, attempts))
    assert policy.worst_case_seconds(timeout) == pytest.approx(min(policy.deadline, attempts * timeout + longest_waits))


def test_worst_case_with_very_many_retries_does_not_overflow():
    policy = RetryPolicy(retries=5000, backoff_base=0.2, backoff_max=5.0, deadline=1e9)
    doubling = sum(0.2 * 2**k for k in range(5))  # 0.2 … 3.2; from the sixth wait on, the 5 s cap
    assert policy.worst_case_seconds(1.0) == pytest.approx(5001 * 1.0 + doubling + 5.0 * (5000 - 5))
