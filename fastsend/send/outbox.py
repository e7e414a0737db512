"""What could not be delivered now: into the outbox (the spool), or settled failed with its cause.

With an outbox, an event given up on a passing failure (the service unreachable or busy,
the deadline, a full queue, close) is written to disk and settled ``spooled``; a write that
fails settles it ``spool_write_failed``. Without one, or for a rejection, it settles failed
(or dropped) with the reason. The drainer (``fastsend.send.drainer``) sends the outbox later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from fastsend.results import OUTCOME_LOG, Cause, Outcome, Result, Settlement
from fastsend.send.job import Job
from fastsend.send.ledger import Ledger
from fastsend.send.retry import RetryPolicy
from fastsend.send.spool import SpoolEntry
from fastsend.send.wire import Request

__all__ = ["Outbox", "settle_undelivered"]

logger = logging.getLogger("fastsend")


class Outbox(Protocol):
    """Durable storage for requests that could not be delivered now (``fastsend.send.spool.Spool``)."""

    def put(self, request: Request) -> bool: ...
    def oldest(self) -> SpoolEntry | None: ...
    def after(self, entry: SpoolEntry) -> SpoolEntry | None: ...
    def load(self, entry: SpoolEntry) -> Request: ...
    def remove(self, entry: SpoolEntry, removed: Callable[[], None] = ...) -> None: ...
    def quarantine(self, entry: SpoolEntry, reason: str) -> None: ...
    def postpone(self, entry: SpoolEntry) -> None: ...
    def wait_empty(self, timeout: float | None) -> bool: ...
    def stats(self) -> dict[str, int]: ...
    def __len__(self) -> int: ...
    def leave_to_parent(self) -> None: ...
    def close(self) -> None: ...


def settle_undelivered(
    job: Job,
    outcome: Outcome,
    *,
    outbox: Outbox | None,
    policy: RetryPolicy,
    ledger: Ledger,
    build_request: Callable[[Job], None],
    wake_drainer: Callable[[], None],
) -> None:
    """Settle a job that was not delivered: spooled when it may be, else failed (or dropped) with its cause.

    Blocking (a spool write fsyncs): call it off the loop. A job already settled is left alone, so a
    settling interrupted half-way (by Ctrl-C) can be done again.
    """
    if job.ticket.settled:
        return
    if outbox is not None and policy.spoolable(outcome):
        try:
            if job.request is None and job.prepared is not None:
                build_request(job)  # refused before it reached the encoders: encode it here
            if job.request is not None and outbox.put(job.request):
                ledger.settle(job.ticket, Result.in_spool(f"{outcome.message}; spooled, will be sent later"))
                wake_drainer()
                return
        except OSError as exc:
            logger.error("could not write to the spool: %s", exc)
            ledger.count_spool_write_failure()
            failure = Outcome(Cause.SPOOL_WRITE_FAILED, f"{outcome.message}; the spool write failed: {exc}")
            ledger.settle(job.ticket, Result.of(failure), failure)
            return
        except Exception as exc:  # noqa: BLE001 - the event cannot be encoded: it can never be sent
            logger.warning("encoding failed: %s", exc)
            ledger.settle(job.ticket, Result.failed(Cause.ENCODE_ERROR, f"encoding failed: {exc}"))
            return
    if outcome.cause is Cause.CLOSED:
        logger.debug("event not delivered: %s", outcome.message)  # close() logs one line for all
    elif outcome.cause is not None and outcome.cause.settlement is Settlement.DROPPED:
        ledger.warn_rate_limited(outcome.key, 1, outcome.message)
    else:
        logger.warning("event not delivered: %s", outcome.message, extra=OUTCOME_LOG)
    ledger.settle(job.ticket, Result.of(outcome), outcome)
