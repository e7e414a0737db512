"""The books: every submitted event settles exactly once, through ``Ledger.settle``, moving one counter.

What a cancelled Future means: an event that has not gone on the wire yet is withdrawn and
counted ``cancelled``; once its first attempt starts, its Future can no longer be cancelled and
the event is counted by its outcome. Either way it settles exactly once.

``stats()`` is taken under the ledger's one lock, so a snapshot always adds up::

    submitted == sent + failed + dropped + spooled + cancelled + pending

Besides a window of recent latencies for percentiles, the ledger counts every delivered event's
latency and every image's encoding time into fixed buckets: what a Prometheus histogram needs.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from itertools import accumulate
from typing import Any, TypedDict

from fastsend.results import OUTCOME_LOG, Cause, Outcome, Result, Settlement

__all__ = ["ENCODE_BOUNDS", "LATENCY_BOUNDS", "Histogram", "Ledger", "Ticket"]

logger = logging.getLogger("fastsend")

_LATENCY_WINDOW = 10_000
# A camera outrunning the service fails or drops on every frame: one warning a second, with the count since.
_WARN_INTERVAL_SECONDS = 1.0

#: Upper bounds, in seconds, of the buckets of a delivered event's latency (submit to its 201).
LATENCY_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: Upper bounds, in seconds, of the buckets of one image's encoding CPU time (JPEG and base64).
ENCODE_BOUNDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


class Histogram(TypedDict):
    """Observations counted into buckets: ``cumulative[i]`` of them were ``<= bounds[i]``; ``count`` in all."""

    bounds: list[float]
    cumulative: list[int]
    count: int
    sum: float


class _Buckets:
    """A histogram being filled: one ``bisect`` and two additions per observation (under the ledger's lock)."""

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self._sum = 0.0

    def observe(self, value: float, times: int = 1) -> None:
        self._counts[bisect_left(self._bounds, value)] += times  # a value equal to a bound belongs to it
        self._sum += value * times

    def snapshot(self) -> Histogram:
        *cumulative, count = accumulate(self._counts)
        return {"bounds": list(self._bounds), "cumulative": cumulative, "count": count, "sum": self._sum}


class Ticket:
    """One submitted event's claim on the books: its Future and whether it has settled."""

    __slots__ = ("future", "settled", "started", "submitted")

    def __init__(self, future: Future[Result], submitted: float) -> None:
        self.future = future
        self.submitted = submitted
        self.settled = False
        self.started = False  # its first attempt began: the Future can no longer be cancelled


class Ledger:
    """Counters, latencies and CPU accounting of one writer; thread-safe."""

    def __init__(self, on_cancelled: Callable[[Ticket], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._on_cancelled = on_cancelled
        self._submitted = 0
        self._pending = 0
        self._counts: Counter[Settlement] = Counter()
        self._by_cause: dict[Settlement, Counter[str]] = {s: Counter() for s in Settlement}
        self._latencies: deque[float] = deque(maxlen=_LATENCY_WINDOW)
        self._latency_buckets = _Buckets(LATENCY_BOUNDS)
        self._encode_buckets = _Buckets(ENCODE_BOUNDS)
        self._retried = 0
        self._bytes_sent = 0
        self._drained = 0
        self._drainer_restarts = 0
        self._spool_write_failures = 0
        self._encode_seconds = 0.0
        self._images_encoded = 0
        self._snapshot_seconds = 0.0
        self._images_snapshotted = 0
        self._unreported: Counter[str] = Counter()
        self._reported_at = float("-inf")

    # ------------------------------------------------------------ an event's life

    def open(self, snapshot_seconds: float = 0.0, snapshots: int = 0) -> Ticket:
        """A new event is submitted: count it, and watch its Future for a cancellation."""
        ticket = Ticket(Future(), time.monotonic())
        with self._lock:
            self._submitted += 1
            self._pending += 1
            self._snapshot_seconds += snapshot_seconds
            self._images_snapshotted += snapshots
        # Settled first means not cancelled: the common case skips the Future's lock.
        ticket.future.add_done_callback(
            lambda future: self._cancelled(ticket) if not ticket.settled and future.cancelled() else None
        )
        return ticket

    def start(self, ticket: Ticket) -> bool:
        """The event goes on the wire now: True, or False if its caller withdrew it (it settled cancelled)."""
        with self._lock:
            if ticket.settled:
                return False
            if not ticket.started:
                if not ticket.future.set_running_or_notify_cancel():
                    return False  # the cancel callback settles it
                ticket.started = True
            return True

    def settle(self, ticket: Ticket, result: Result, outcome: Outcome | Cause | None = None) -> bool:
        """Resolve the event once, counted by ``outcome`` (an HTTP status is keyed by it) or else by
        ``result.cause`` (None: sent).

        Returns False if it had settled already (a cancellation got there first).
        """
        key, settlement = _classify(result, outcome)
        with self._lock:
            if ticket.settled:
                return False
            if not ticket.started:
                if not ticket.future.set_running_or_notify_cancel():
                    return False  # cancelled just now: the cancel callback settles it
                ticket.started = True
            ticket.settled = True
            self._pending -= 1
            self._counts[settlement] += 1
            if settlement is Settlement.SENT:
                latency = time.monotonic() - ticket.submitted
                self._latencies.append(latency)
                self._latency_buckets.observe(latency)
            else:
                self._by_cause[settlement][key] += 1
        ticket.future.set_result(result)
        return True

    def _cancelled(self, ticket: Ticket) -> None:
        with self._lock:
            if ticket.settled:
                return
            ticket.settled = True
            self._pending -= 1
            self._counts[Settlement.CANCELLED] += 1
            self._by_cause[Settlement.CANCELLED][Cause.CANCELLED.value] += 1
        if self._on_cancelled is not None:
            self._on_cancelled(ticket)

    # ------------------------------------------------------------ other counters

    def count_attempt(self, body_bytes: int) -> None:
        with self._lock:
            self._bytes_sent += body_bytes

    def count_retry(self) -> None:
        with self._lock:
            self._retried += 1

    def count_drained(self) -> None:
        with self._lock:
            self._drained += 1

    def count_drainer_restart(self) -> None:
        with self._lock:
            self._drainer_restarts += 1

    def count_spool_write_failure(self) -> None:
        with self._lock:
            self._spool_write_failures += 1

    def count_encode(self, seconds: float, images: int = 1) -> None:
        """``images`` encoded in ``seconds`` of CPU time, all together (the histogram counts each at the mean)."""
        with self._lock:
            self._encode_seconds += seconds
            self._images_encoded += images
            if images:
                self._encode_buckets.observe(seconds / images, images)

    def warn_rate_limited(self, key: str, count: int, message: str) -> None:
        """Log ``message`` at most once a second per writer, with every count since the last line."""
        now = time.monotonic()
        with self._lock:
            self._unreported[key] += count
            if now - self._reported_at < _WARN_INTERVAL_SECONDS:
                return
            unreported, self._unreported, self._reported_at = self._unreported, Counter(), now
        logger.warning(
            "events not delivered since the last report: %s (latest: %s)",
            _summary(unreported),
            message,
            extra=OUTCOME_LOG,
        )

    def flush_warnings(self) -> None:
        """Log what the rate limit still holds back (at close)."""
        with self._lock:
            unreported, self._unreported = self._unreported, Counter()
        if unreported:
            logger.warning("events not delivered since the last report: %s", _summary(unreported), extra=OUTCOME_LOG)

    def settled_counts(self) -> dict[str, int]:
        """How many events were sent, spooled, failed and dropped so far (cheaper than ``snapshot``)."""
        with self._lock:
            return {settlement.value: self._counts[settlement] for settlement in Settlement}

    @property
    def pending(self) -> int:
        with self._lock:
            return self._pending

    def snapshot(self) -> dict[str, Any]:
        """Every counter, taken at one instant."""
        with self._lock:
            ordered = sorted(self._latencies)
            counts, by_cause = self._counts, self._by_cause
            return {
                "submitted": self._submitted,
                "sent": counts[Settlement.SENT],
                "failed": counts[Settlement.FAILED],
                "failed_by_cause": dict(by_cause[Settlement.FAILED]),
                "dropped": counts[Settlement.DROPPED],
                "dropped_by_reason": dict(by_cause[Settlement.DROPPED]),
                "spooled": counts[Settlement.SPOOLED],
                "cancelled": counts[Settlement.CANCELLED],
                "pending": self._pending,
                "drained": self._drained,
                "drainer_restarts": self._drainer_restarts,
                "spool_write_failures": self._spool_write_failures,
                "retried": self._retried,
                "bytes_sent": self._bytes_sent,
                "latency_p50_ms": _percentile(ordered, 0.50) * 1e3,
                "latency_p95_ms": _percentile(ordered, 0.95) * 1e3,
                "latency_p99_ms": _percentile(ordered, 0.99) * 1e3,
                "encode_ms_per_image": _mean(self._encode_seconds, self._images_encoded) * 1e3,
                "snapshot_ms_per_image": _mean(self._snapshot_seconds, self._images_snapshotted) * 1e3,
                "images_encoded": self._images_encoded,
                "images_snapshotted": self._images_snapshotted,
                "latency_histogram": self._latency_buckets.snapshot(),
                "encode_histogram": self._encode_buckets.snapshot(),
            }


def _classify(result: Result, outcome: Outcome | Cause | None) -> tuple[str, Settlement]:
    if isinstance(outcome, Outcome):
        if outcome.delivered:
            return "sent", Settlement.SENT
        assert outcome.cause is not None
        return outcome.key, outcome.cause.settlement
    cause = outcome if outcome is not None else result.cause
    if cause is None:
        if result.error_status:
            raise ValueError("an error Result needs its cause")
        return "sent", Settlement.SENT
    return cause.value, cause.settlement


def _summary(counts: Counter[str]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))


def _mean(total: float, count: int) -> float:
    return total / count if count else 0.0


def _percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
