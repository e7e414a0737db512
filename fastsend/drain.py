"""What could not be delivered now: into the outbox (the spool) or settled failed; and the drainer.

With an outbox, an event given up on a passing failure (the service unreachable or busy,
the deadline, a full queue, close) is written to disk and settled ``spooled``; a write that
fails settles it ``spool_write_failed``. The drainer sends the outbox oldest first on the
loop thread, backing off while the service is away.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from .admission import Job
from .ledger import Ledger
from .results import Cause, Outcome, Result, Settlement
from .retry import RetryPolicy
from .transport import Transport
from .wire import Request

__all__ = ["Drainer", "Outbox", "off_loop", "settle_undelivered"]

logger = logging.getLogger("fastsend")

# Causes an event may be spooled for: the service was away, slow or busy, or the writer ran out of time or room.
_SPOOLABLE = frozenset({Cause.TIMEOUT, Cause.CONNECTION, Cause.DEADLINE, Cause.CLOSED, Cause.QUEUE_FULL_DROP_OLDEST})
# A drained entry that the answering service refuses this often in a row moves behind the others.
_POSTPONE_AFTER = 3


class Outbox(Protocol):
    """Durable storage for requests that could not be delivered now (``fastsend.spool.Spool``)."""

    def put(self, request: Request) -> bool: ...
    def oldest(self) -> Any: ...
    def load_or_quarantine(self, entry: Any) -> Request | None: ...
    def remove(self, entry: Any) -> None: ...
    def quarantine(self, entry: Any, reason: str) -> None: ...
    def postpone(self, entry: Any) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def __len__(self) -> int: ...
    def leave_to_parent(self) -> None: ...
    def close(self) -> None: ...


def spoolable(outcome: Outcome, policy: RetryPolicy) -> bool:
    return outcome.cause in _SPOOLABLE or (outcome.cause is Cause.HTTP_STATUS and policy.is_retryable(outcome))


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
    if outbox is not None and spoolable(outcome, policy):
        try:
            if job.request is None and job.prepared is not None:
                build_request(job)  # refused before it reached the encoders: encode it here
            if job.request is not None and outbox.put(job.request):
                ledger.settle(
                    job.ticket, Result(True, "", f"{outcome.message}; spooled for a later retry", True), Cause.SPOOLED
                )
                wake_drainer()
                return
        except OSError as exc:
            logger.error("could not write to the spool: %s", exc)
            ledger.count_spool_write_failure()
            failure = Outcome(Cause.SPOOL_WRITE_FAILED, f"{outcome.message}; the spool write failed: {exc}")
            ledger.settle(job.ticket, Result(True, "", failure.message), failure)
            return
        except Exception as exc:  # noqa: BLE001 - the event cannot be encoded: it can never be sent
            logger.warning("encoding failed: %s", exc)
            ledger.settle(job.ticket, Result(True, "", f"encoding failed: {exc}"), Cause.ENCODE_ERROR)
            return
    if outcome.cause is Cause.CLOSED:
        logger.debug("event not delivered: %s", outcome.message)  # close() logs one line for all
    elif outcome.cause is not None and outcome.cause.settlement is Settlement.DROPPED:
        ledger.warn_rate_limited(outcome.key, 1, outcome.message)
    else:
        logger.warning("event not delivered: %s", outcome.message)
    ledger.settle(job.ticket, Result(True, "", outcome.message), outcome)


class Drainer:
    """Sends the outbox, oldest first, one entry at a time, on the loop thread."""

    def __init__(
        self,
        outbox: Outbox,
        transport: Callable[[], Transport | None],
        policy: RetryPolicy,
        request_timeout: float,
        api_key: str | None,
        ledger: Ledger,
    ) -> None:
        self._outbox = outbox
        self._transport = transport
        self._policy = policy
        self._request_timeout = request_timeout
        self._api_key = api_key
        self._ledger = ledger
        self._filled: asyncio.Event | None = None
        self._emptied: list[Callable[[], None]] = []
        self._refusals = 0

    async def run(self) -> None:
        """Drain for ever (until cancelled); wakes when ``wake`` is called."""
        self._filled = asyncio.Event()
        failures = 0
        while True:
            try:
                failures = await self._drain_next(failures)
            except asyncio.CancelledError:
                raise
            except Exception:  # a disk error must not end the drain for good, and silently
                logger.exception("spool drainer: unexpected error; trying again")
                failures += 1
                await asyncio.sleep(self._policy.backoff(failures))

    def wake(self) -> None:
        """Called on the loop thread: there is something new to send."""
        if self._filled is not None:
            self._filled.set()

    async def _drain_next(self, failures: int) -> int:
        """Send the oldest entry (or wait for one); returns the count of failures in a row."""
        assert self._filled is not None
        entry = self._outbox.oldest()
        if entry is None:
            self._filled.clear()
            await self._filled.wait()
            return failures
        request = await off_loop(self._outbox.load_or_quarantine, entry)
        transport = self._transport()
        if request is None or transport is None:
            return failures
        if self._api_key:  # never stored: the current key goes with every drained entry
            request = Request(
                request.url, {**request.headers, "X-API-Key": self._api_key}, request.chunks, request.size
            )
        outcome = await transport.post(request, self._request_timeout)
        if outcome.delivered:
            await off_loop(self._outbox.remove, entry)
            self._ledger.count_drained()
            self._refusals = 0
            return 0
        policy = self._policy
        if policy.blames_sender(outcome):  # the entry is fine; this sender's key or URL is not: keep it
            logger.error("spool drain paused: %s", outcome.message)
            failures += 1
            await asyncio.sleep(max(policy.backoff_max, policy.backoff(failures)))
            return failures
        if not policy.is_retryable(outcome):
            await off_loop(self._outbox.quarantine, entry, f"rejected by the service: {outcome.message}")
            return failures
        if outcome.status is not None:  # the service answers, yet not for this entry: let the others by
            self._refusals += 1
            if self._refusals >= _POSTPONE_AFTER:
                self._refusals = 0
                await off_loop(self._outbox.postpone, entry)
        failures += 1
        await asyncio.sleep(policy.backoff(failures, outcome.retry_after))
        return failures


async def off_loop(function: Callable[..., Any], *args: Any) -> Any:
    """Run blocking outbox I/O on the loop's executor."""
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)
