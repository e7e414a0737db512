"""Whether the service answers: one WARNING when it stops answering and one when it is back.

A spooled event is not an error, so an unreachable service is otherwise silent with a spool,
and without one it would be a line per event. The writer's ``Reachability`` watches every
attempt's ``Outcome`` (live sends and spool drains) and speaks only on a change of state,
saying on the way back how many events were spooled, failed or dropped meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

from fastsend.results import OUTCOME_LOG, Cause, Outcome

__all__ = ["Reachability"]

logger = logging.getLogger("fastsend")

_NO_ANSWER = frozenset({Cause.CONNECTION, Cause.TIMEOUT})


class Reachability:
    """The state of one writer's service, told once per change; thread-safe.

    ``counts`` returns the writer's settled counters (``spooled``, ``failed``, ``dropped``).
    """

    def __init__(self, url: str, counts: Callable[[], Mapping[str, int]], *, spooling: bool) -> None:
        self._url = url
        self._counts = counts
        self._spooling = spooling
        self._lock = threading.Lock()
        self._lost_at: float | None = None  # monotonic time it stopped answering; None while it answers
        self._counts_then: Mapping[str, int] = {}

    @property
    def unreachable(self) -> bool:
        with self._lock:
            return self._lost_at is not None

    def observe(self, outcome: Outcome) -> None:
        """One attempt's outcome: any HTTP answer means reachable; a connection error or a timeout
        without an answer means not."""
        if outcome.status is None and outcome.cause in _NO_ANSWER:
            self._lost(outcome)
        elif outcome.status is not None and self._lost_at is not None:  # only a change of state takes the lock
            self._answered()

    def _lost(self, outcome: Outcome) -> None:
        with self._lock:
            if self._lost_at is not None:
                return
            self._lost_at, self._counts_then = time.monotonic(), dict(self._counts())
        meanwhile = "events go to the spool" if self._spooling else "events are not delivered"
        logger.warning(
            "service %s unreachable: %s; %s until it answers (said once, not per event)",
            self._url,
            outcome.message,
            meanwhile,
            extra=OUTCOME_LOG,
        )

    def _answered(self) -> None:
        with self._lock:
            if self._lost_at is None:
                return
            seconds, then = time.monotonic() - self._lost_at, self._counts_then
            self._lost_at, self._counts_then = None, {}
        now = self._counts()
        meanwhile = ", ".join(f"{now.get(key, 0) - then.get(key, 0)} {key}" for key in ("spooled", "failed", "dropped"))
        logger.warning(
            "service %s answers again after %.1fs unreachable; meanwhile %s events",
            self._url,
            seconds,
            meanwhile,
            extra=OUTCOME_LOG,
        )
