"""When to try again, and how long to wait: one immutable policy the sender asks."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

__all__ = ["RetryPolicy", "RETRYABLE_STATUSES", "AT_CAPACITY_STATUS", "parse_retry_after"]

AT_CAPACITY_STATUS = 529
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504, AT_CAPACITY_STATUS})


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
class RetryPolicy:
    """Exponential backoff with full jitter, capped, honouring ``Retry-After``.

    ``retries`` counts attempts after the first; ``deadline`` (seconds from submit)
    bounds the whole life of an event whatever the attempt count.
    """

    retries: int = 4
    backoff_base: float = 0.2
    backoff_max: float = 5.0
    deadline: float = 30.0

    @staticmethod
    def is_retryable_status(status: int) -> bool:
        return status in RETRYABLE_STATUSES

    def may_retry(self, attempt: int) -> bool:
        """Whether attempt number ``attempt`` (1-based) may be followed by another."""
        return attempt <= self.retries

    def backoff(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        if retry_after is not None:
            return retry_after
        return (rng or random).uniform(0.0, self._ceiling(attempt))

    def _ceiling(self, attempt: int) -> float:
        # Past 2**64 the doubling has met any sensible cap; a larger int would overflow a float.
        return min(self.backoff_max, self.backoff_base * 2.0 ** min(attempt - 1, 64))

    def worst_case_seconds(self, request_timeout: float) -> float:
        """The longest a synchronous send can take: every attempt times out and waits its longest."""
        waits = sum(self._ceiling(attempt) for attempt in range(1, self.retries + 1))
        return min(self.deadline, (self.retries + 1) * request_timeout + waits)
