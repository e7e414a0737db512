"""The drainer: sends the outbox (the spool), oldest first, on the loop thread, through the writer's own
transport (its URL and key), backing off while the service is away; supervised, so that no error ends it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from fastsend.results import Cause, Outcome
from fastsend.send.ledger import Ledger
from fastsend.send.loop import off_loop
from fastsend.send.outbox import Outbox
from fastsend.send.retry import RetryPolicy
from fastsend.send.spool import CorruptEntry, SpoolEntry
from fastsend.send.transport import Transport

__all__ = ["Drainer"]

logger = logging.getLogger("fastsend")

# An oldest entry that fails this often in a row lets the next one be tried: if that goes, it moves behind.
_POSTPONE_AFTER = 3
# An entry whose sending raises this often in a row is quarantined: it cannot become a request.
_QUARANTINE_AFTER_ERRORS = 3
# How long an entry that could not be quarantined is passed over before it is tried again, at least and at most.
_SET_ASIDE_SECONDS = (1.0, 60.0)


class Drainer:
    """Sends the outbox, oldest first, one entry at a time, on the loop thread.

    ``wake`` says there is something new to send (it ends an idle wait, not a backoff);
    ``nudge`` says a caller waits (it ends a backoff too); ``service_answered`` says a live
    send was delivered, which ends a backoff that waited for an unreachable service.

    An oldest entry that keeps failing is not allowed to hold the rest: after a few failures
    in a row the next entry is tried once; if that one goes, the failing entry moves behind
    the others. If it fails too, the service is away for everyone and the order is kept.
    An entry that cannot even be quarantined (the disk refuses) is passed over for a while.

    ``run`` is supervised: an unexpected error is logged with its traceback, counted
    (``drainer_restarts`` in ``stats()``), and the drain starts again after a backoff.
    """

    def __init__(
        self,
        outbox: Outbox,
        policy: RetryPolicy,
        request_timeout: float,
        ledger: Ledger,
        watch: Callable[[Outcome], None] | None = None,
    ) -> None:
        self._outbox = outbox
        self._watch = watch  # told every attempt's outcome (the writer's Reachability)
        self._policy = policy
        self._request_timeout = request_timeout
        self._ledger = ledger
        self._filled: asyncio.Event | None = None
        self._nudged: asyncio.Event | None = None
        self._failures = 0  # attempts in a row that did not deliver, for the backoff
        self._head: SpoolEntry | None = None  # the oldest entry while it fails, how often in a row, and raised
        self._head_failures = 0
        self._head_errors = 0
        self._probing = False  # the next entry is tried once, to see whether others could go
        self._unreachable = False  # the last attempt found no service (connection error or timeout)
        self._set_aside: dict[str, tuple[float, int]] = {}  # unquarantinable: name -> (retry at, failures)

    async def run(self, transport: Transport) -> None:
        """Drain for ever (until cancelled), through ``transport``; restarted after any unexpected error."""
        self._filled, self._nudged = asyncio.Event(), asyncio.Event()
        restarts = 0
        while True:
            try:
                await self._drain(transport)
            except asyncio.CancelledError:
                raise
            except Exception:
                restarts += 1
                self._ledger.count_drainer_restart()
                wait = self._policy.backoff_floor(restarts)
                logger.exception("spool drainer stopped by an unexpected error; restarting it in %.2gs", wait)
                await self._pause(wait)

    async def _drain(self, transport: Transport) -> None:
        assert self._filled is not None
        while True:
            entry = self._next_entry()
            if entry is None:
                self._filled.clear()
                await self._idle()
                continue
            try:
                await self._send(entry, transport)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a disk error must not end the drain for good, and silently
                logger.exception("spool drainer: unexpected error; trying again")
                if self._raised(entry):
                    await self._quarantine(entry, f"could not be sent: {exc!r}")
                    continue
                await self._pause(self._policy.backoff(self._failures))

    async def _idle(self) -> None:
        """Wait for something new in the outbox, or for an entry passed over to be due again."""
        assert self._filled is not None
        due = min((at for at, _ in self._set_aside.values()), default=None)
        if due is None:
            await self._filled.wait()
            return
        try:
            await asyncio.wait_for(self._filled.wait(), max(0.0, due - time.monotonic()))
        except asyncio.TimeoutError:
            pass

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

    def _next_entry(self) -> SpoolEntry | None:
        oldest = self._skip_set_aside(self._outbox.oldest())
        if oldest is None or not self._probing:
            return oldest
        probe = self._skip_set_aside(self._outbox.after(oldest))
        if probe is None:  # alone: nothing waits behind it
            self._probing = False
            return oldest
        return probe

    def _skip_set_aside(self, entry: SpoolEntry | None) -> SpoolEntry | None:
        """``entry``, or the first one after it that is not passed over just now."""
        now = time.monotonic()
        while entry is not None and self._set_aside.get(entry.name, (0.0, 0))[0] > now:
            entry = self._outbox.after(entry)
        return entry

    async def _send(self, entry: SpoolEntry, transport: Transport) -> None:
        try:
            request = await off_loop(self._outbox.load, entry)
        except CorruptEntry as exc:  # it can never become a request: aside at once, no traceback
            await self._quarantine(entry, str(exc))
            return
        self._set_aside.pop(entry.name, None)
        outcome = await transport.post(request, self._request_timeout)
        if self._watch is not None:
            self._watch(outcome)
        self._unreachable = outcome.status is None and outcome.cause in (Cause.CONNECTION, Cause.TIMEOUT)
        if outcome.delivered:
            await off_loop(self._outbox.remove, entry, self._ledger.count_drained)
            if self._probing and self._head is not None:  # another went while the oldest keeps failing
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
            await self._quarantine(entry, f"rejected by the service: {outcome.message}")
            return
        self._failed(entry)
        await self._pause(self._backoff(outcome))

    async def _quarantine(self, entry: SpoolEntry, reason: str) -> None:
        """Move ``entry`` aside; if the disk refuses, say so and pass it over for a while, then try again."""
        try:
            await off_loop(self._outbox.quarantine, entry, reason)
        except OSError as exc:
            _, failures = self._set_aside.get(entry.name, (0.0, 0))
            low, high = _SET_ASIDE_SECONDS
            wait = min(high, low * 2.0**failures)
            self._set_aside[entry.name] = (time.monotonic() + wait, failures + 1)
            logger.error(
                "spool entry %s could not be quarantined (%s): %s; the others go on, it is tried again in %gs",
                entry.name,
                exc,
                reason,
                wait,
            )
            self._forget_head()
        else:
            self._set_aside.pop(entry.name, None)

    def _failed(self, entry: SpoolEntry) -> None:
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

    def _raised(self, entry: SpoolEntry) -> bool:
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
