"""What could not be delivered now: into the outbox (the spool) or settled failed; and the drainer.

With an outbox, an event given up on a passing failure (the service unreachable or busy,
the deadline, a full queue, close) is written to disk and settled ``spooled``; a write that
fails settles it ``spool_write_failed``. The drainer sends the outbox oldest first on the
loop thread, through the writer's own transport (its URL and key), backing off while the
service is away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from fastsend.results import OUTCOME_LOG, Cause, Outcome, Result, Settlement
from fastsend.send.job import Job
from fastsend.send.ledger import Ledger
from fastsend.send.retry import RetryPolicy
from fastsend.send.transport import Transport
from fastsend.send.wire import Request

__all__ = ["Drainer", "Outbox", "off_loop", "settle_undelivered"]

logger = logging.getLogger("fastsend")

# An oldest entry that fails this often in a row lets the next one be tried: if that goes, it moves behind.
_POSTPONE_AFTER = 3
# An entry whose sending raises this often in a row is quarantined: it cannot become a request.
_QUARANTINE_AFTER_ERRORS = 3


class Outbox(Protocol):
    """Durable storage for requests that could not be delivered now (``fastsend.send.spool.Spool``)."""

    def put(self, request: Request) -> bool: ...
    def oldest(self) -> Any: ...
    def after(self, entry: Any) -> Any: ...
    def load_or_quarantine(self, entry: Any) -> Request | None: ...
    def remove(self, entry: Any, removed: Callable[[], None] = ...) -> None: ...
    def quarantine(self, entry: Any, reason: str) -> None: ...
    def postpone(self, entry: Any) -> None: ...
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

    Blocking (a spool write fsyncs): call it off the loop.
    """
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


class Drainer:
    """Sends the outbox, oldest first, one entry at a time, on the loop thread.

    ``wake`` says there is something new to send (it ends an idle wait, not a backoff);
    ``nudge`` says a caller waits (it ends a backoff too); ``service_answered`` says a live
    send was delivered, which ends a backoff that waited for an unreachable service.

    An oldest entry that keeps failing is not allowed to hold the rest: after a few failures
    in a row the next entry is tried once; if that one goes, the failing entry moves behind
    the others. If it fails too, the service is away for everyone and the order is kept.
    """

    def __init__(
        self,
        outbox: Outbox,
        transport: Callable[[], Transport | None],
        policy: RetryPolicy,
        request_timeout: float,
        ledger: Ledger,
        watch: Callable[[Outcome], None] | None = None,
    ) -> None:
        self._outbox = outbox
        self._watch = watch  # told every attempt's outcome (the writer's Reachability)
        self._transport = transport
        self._policy = policy
        self._request_timeout = request_timeout
        self._ledger = ledger
        self._filled: asyncio.Event | None = None
        self._nudged: asyncio.Event | None = None
        self._failures = 0  # attempts in a row that did not deliver, for the backoff
        self._head: Any = None  # the oldest entry while it fails, how often in a row, and how often it raised
        self._head_failures = 0
        self._head_errors = 0
        self._probing = False  # the next entry is tried once, to see whether others could go
        self._unreachable = False  # the last attempt found no service (connection error or timeout)

    async def run(self) -> None:
        """Drain for ever (until cancelled)."""
        self._filled, self._nudged = asyncio.Event(), asyncio.Event()
        while True:
            entry = self._next_entry()
            if entry is None:
                self._filled.clear()
                await self._filled.wait()
                continue
            try:
                await self._send(entry)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a disk error must not end the drain for good, and silently
                logger.exception("spool drainer: unexpected error; trying again")
                if self._raised(entry):
                    await off_loop(self._outbox.quarantine, entry, f"could not be sent: {exc!r}")
                    continue
                await self._pause(self._policy.backoff(self._failures))

    def wake(self) -> None:
        """On the loop thread: something new is in the outbox."""
        if self._filled is not None:
            self._filled.set()

    def nudge(self) -> None:
        """On the loop thread: try now, even in the middle of a backoff."""
        if self._filled is not None and self._nudged is not None:
            self._filled.set()
            self._nudged.set()

    def service_answered(self) -> None:
        """On the loop thread: a live send was delivered, so the service is reachable again."""
        if self._unreachable:
            self._unreachable = False
            self.nudge()

    def _next_entry(self) -> Any:
        oldest = self._outbox.oldest()
        if oldest is None or not self._probing:
            return oldest
        probe = self._outbox.after(oldest)
        if probe is None:  # alone: nothing waits behind it
            self._probing = False
            return oldest
        return probe

    async def _send(self, entry: Any) -> None:
        request = await off_loop(self._outbox.load_or_quarantine, entry)
        transport = self._transport()
        if request is None or transport is None:
            return
        outcome = await transport.post(request, self._request_timeout)
        if self._watch is not None:
            self._watch(outcome)
        self._unreachable = outcome.status is None and outcome.cause in (Cause.CONNECTION, Cause.TIMEOUT)
        if outcome.delivered:
            await off_loop(self._outbox.remove, entry, self._ledger.count_drained)
            if self._probing:  # another entry went while the oldest keeps failing: it moves behind them
                await off_loop(self._outbox.postpone, self._head)
            self._failures = 0
            self._forget_head()
            return
        policy = self._policy
        if policy.blames_sender(outcome):  # the entry is fine; this sender's key or URL is not: keep it
            logger.error("spool drain paused: %s", outcome.message)
            self._failures += 1
            await self._pause(max(policy.backoff_max, policy.backoff(self._failures)))
            return
        if not policy.is_retryable(outcome):
            await off_loop(self._outbox.quarantine, entry, f"rejected by the service: {outcome.message}")
            return
        self._failed(entry)
        await self._pause(self._backoff(outcome))

    def _failed(self, entry: Any) -> None:
        """A retryable failure of ``entry``: the oldest one, or the probe behind it."""
        self._failures += 1
        if self._probing:  # the next one failed too: the service is away for everyone, keep the order
            self._probing = False
            self._head_failures = 0
            return
        if self._head is None or entry.name != self._head.name:
            self._forget_head()
            self._head = entry
        self._head_failures += 1
        self._probing = self._head_failures >= _POSTPONE_AFTER

    def _raised(self, entry: Any) -> bool:
        """Count an unexpected error while sending ``entry``; True once it has raised too often in a row."""
        self._failures += 1
        self._probing = False
        if self._head is None or entry.name != self._head.name:
            self._forget_head()
            self._head = entry
        self._head_errors += 1
        return self._head_errors >= _QUARANTINE_AFTER_ERRORS

    def _forget_head(self) -> None:
        self._head, self._head_failures, self._head_errors, self._probing = None, 0, 0, False

    def _backoff(self, outcome: Outcome) -> float:
        wait = self._policy.backoff(self._failures, outcome.retry_after)
        if outcome.retry_after is not None and outcome.retry_after > wait:
            logger.warning(
                "spool drain: the service asked to wait %gs (Retry-After); waiting %gs (retry_after_max)",
                outcome.retry_after,
                wait,
            )
        return wait

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if nudged."""
        assert self._nudged is not None
        try:
            await asyncio.wait_for(self._nudged.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        self._nudged.clear()


async def off_loop(function: Callable[..., Any], *args: Any) -> Any:
    """Run blocking outbox I/O on the loop's executor."""
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)
