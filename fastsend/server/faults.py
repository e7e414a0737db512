"""Fault injection for the reference service: latency, injected errors, dropped connections.

All faults are off by default. Decisions come from a seedable ``random.Random``
so a test that fixes ``seed`` sees the same sequence of outcomes every run.
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import dataclass

__all__ = ["FaultAction", "FaultInjector", "Faults"]


@dataclass(frozen=True)
class Faults:
    """What to do wrong on ``POST /v2/events``.

    - ``latency``: seconds added to every accepted write (counted as a write in
      progress, so it also makes ``capacity`` easy to reach).
    - ``error_rate``: share of requests (0..1) answered with ``error_status``
      and ``{"detail": error_detail}`` without storing anything.
    - ``drop_rate``: share of requests (0..1) whose connection is aborted
      after reading part of the body, without any answer.
    - ``seed``: seed for the random draws; ``None`` seeds from the OS.

    Each request draws once: it is dropped, failed, or served normally, so
    ``error_rate + drop_rate`` must not exceed 1.
    """

    latency: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503
    error_detail: str = "injected fault"
    drop_rate: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.latency) and self.latency >= 0):
            raise ValueError(f"latency must be a finite number of seconds >= 0, not {self.latency!r}")
        for name in ("error_rate", "drop_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {rate!r}")
        if self.error_rate + self.drop_rate > 1.0:
            raise ValueError("error_rate + drop_rate must not exceed 1")
        if not 400 <= self.error_status <= 599:
            raise ValueError(f"error_status must be a 4xx or 5xx status, not {self.error_status!r}")


class FaultAction(enum.Enum):
    """The outcome drawn for one request."""

    SERVE = "serve"
    ERROR = "error"
    DROP = "drop"


class FaultInjector:
    """Draws a :class:`FaultAction` per request from one seeded generator.

    Used from the service's event loop only, so it needs no lock.
    """

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self._random = random.Random(self.faults.seed)

    def draw(self) -> FaultAction:
        """The fate of the next request."""
        faults = self.faults
        if not (faults.drop_rate or faults.error_rate):
            return FaultAction.SERVE
        roll = self._random.random()
        if roll < faults.drop_rate:
            return FaultAction.DROP
        if roll < faults.drop_rate + faults.error_rate:
            return FaultAction.ERROR
        return FaultAction.SERVE
