"""When to try again, how long to wait, and what may wait in the spool: one immutable policy that the
sender asks and that never sends."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from fastsend.results import Cause, Outcome

__all__ = ["AT_CAPACITY_STATUS", "RETRYABLE_STATUSES", "Decision", "RetryPolicy", "parse_retry_after"]

AT_CAPACITY_STATUS = 529
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, AT_CAPACITY_STATUS})
# Answers that blame the sender's configuration (redirected, wrong key or URL, a proxy wanting credentials),
# not the event: a spooled entry is kept for a sender that is set up right.
SENDER_MISCONFIGURED_STATUSES = frozenset({401, 403, 404, 405, 407}) | frozenset(range(300, 400))
_RETRYABLE_CAUSES = frozenset({Cause.TIMEOUT, Cause.CONNECTION})
# Causes an event may be spooled for: the service was away, slow or busy, or the writer ran out of time or room.
_SPOOLABLE_CAUSES = frozenset(
    {Cause.TIMEOUT, Cause.CONNECTION, Cause.DEADLINE, Cause.CLOSED, Cause.QUEUE_FULL_DROP_OLDEST}
)
# An attempt with less time than this left could only time out, and might still be applied.
MIN_ATTEMPT_SECONDS = 0.05


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


@dataclass(frozen=True, slots=True)
class Decision:
    """Try again after ``wait`` seconds, or give up for ``reason``."""

    retry: bool
    wait: float = 0.0
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped, honouring ``Retry-After`` up to ``retry_after_max``.

    ``retries`` counts attempts after the first; ``deadline`` (seconds from submit)
    bounds the whole life of an event whatever the attempt count. ``spooling``: the
    writer has a spool, so an unreachable service sends an event there at once
    rather than holding its slot until the deadline.
    """

    retries: int = 4
    backoff_base: float = 0.2
    backoff_max: float = 5.0
    deadline: float = 30.0
    retry_after_max: float = 60.0
    spooling: bool = False

    @staticmethod
    def is_retryable(outcome: Outcome) -> bool:
        """A timeout, a connection error, or 408/425/429/5xx-unavailable/529; never TLS, a bad URL or a 4xx."""
        if outcome.cause is Cause.HTTP_STATUS:
            return outcome.status in RETRYABLE_STATUSES
        return outcome.cause in _RETRYABLE_CAUSES

    @staticmethod
    def blames_sender(outcome: Outcome) -> bool:
        """Whether a failure says the sender is set up wrong (key, URL, TLS), not that the event is bad."""
        if outcome.cause is Cause.HTTP_STATUS:
            return outcome.status in SENDER_MISCONFIGURED_STATUSES
        return outcome.cause in (Cause.TLS, Cause.INVALID_URL)

    def spoolable(self, outcome: Outcome) -> bool:
        """Whether an event not delivered for ``outcome`` may wait in the spool (a rejection may not)."""
        return outcome.cause in _SPOOLABLE_CAUSES or (outcome.cause is Cause.HTTP_STATUS and self.is_retryable(outcome))

    def decide(self, outcome: Outcome, attempt: int, remaining: float, rng: random.Random | None = None) -> Decision:
        """After failed attempt number ``attempt`` (1-based) with ``remaining`` seconds to the deadline."""
        if not self.is_retryable(outcome):
            return Decision(False, reason="not retryable")
        if self.spooling and outcome.cause is Cause.CONNECTION:
            return Decision(False, reason="the service is unreachable")
        if attempt > self.retries:
            return Decision(False, reason=f"gave up after {attempt} attempts")
        wait = self.backoff(attempt, outcome.retry_after, rng)
        if wait + MIN_ATTEMPT_SECONDS > remaining:
            return Decision(False, reason="gave up: the deadline comes before the next attempt could")
        return Decision(True, wait)

    def backoff(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based).

        ``Retry-After`` wins, between a floor and a cap: never less than ``backoff_floor(attempt)``
        (an answer of ``0``, or of a date in the past, must not make a hot loop), never more
        than ``retry_after_max``.
        """
        if retry_after is not None:
            return min(max(retry_after, self.backoff_floor(attempt)), self.retry_after_max)
        return (rng or random).uniform(0.0, self._ceiling(attempt))

    def backoff_floor(self, attempt: int) -> float:
        """The least wait after failed attempt ``attempt`` whatever the service says: half its backoff ceiling."""
        return self._ceiling(attempt) / 2.0

    def _ceiling(self, attempt: int) -> float:
        # Past 2**64 the doubling has met any sensible cap; a larger int would overflow a float.
        return min(self.backoff_max, self.backoff_base * 2.0 ** min(attempt - 1, 64))

    def worst_case_seconds(self, request_timeout: float) -> float:
        """The longest a synchronous send can take: every attempt times out and waits its longest."""
        waits = sum(self._ceiling(attempt) for attempt in range(1, self.retries + 1))
        return min(self.deadline, (self.retries + 1) * request_timeout + waits)
