"""Where a contender's CPU goes: the whole process, each thread by its role, and fastsend's encoders.

``CpuMeter`` accumulates, over every call it measures, the process's CPU time
(``time.process_time``: all threads, user and kernel) and each Python thread's own
CPU clock (``time.pthread_getcpuclockid``, read from this thread), grouped by the
thread's role (``thread_role``). What no live Python thread accounts for (threads
that ended meanwhile, native threads) is reported as ``unattributed``.

With a ``fastsend`` writer's ``stats()`` it also takes the encoders' own CPU for the
images (the ledger's ``encode_ms_per_image`` × ``images_encoded``), so that

    cost around the encoder = (process CPU - encode CPU) / events

is what fastsend spends per event on everything but libjpeg-turbo and base64:
snapshot, validation, annotations, the envelope, hand-offs between threads, the
loop thread and the kernel's work sending the body.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AROUND_ENCODER_TARGET_MS",
    "CpuMeter",
    "CpuReport",
    "cpu_lines",
    "encode_seconds",
    "snapshot_seconds",
    "thread_role",
]

#: Thread-name prefix → role, first match wins; any other thread is "other".
ROLES: tuple[tuple[str, str], ...] = (
    ("MainThread", "caller"),
    ("fastsend-encode", "fastsend encoders"),
    ("fastsend-sync-encode", "fastsend encoders"),
    ("fastsend-loop", "fastsend loop"),
    ("fastsend-io", "fastsend io"),
    ("enterprise-sink", "enterprise pool"),
    ("engine-step", "engine steps"),
    ("reference", "reference pool"),
)


def thread_role(name: str) -> str:
    """The role of a thread, from its name (``ROLES``)."""
    for prefix, role in ROLES:
        if name.startswith(prefix):
            return role
    return "other"


def _thread_clocks() -> dict[int, tuple[str, float]]:
    """ident → (role, CPU seconds) of every live Python thread."""
    clocks = {}
    for thread in threading.enumerate():
        if thread.ident is None:
            continue
        try:
            seconds = time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
        except (OSError, ProcessLookupError):  # ended between enumerate() and the read
            continue
        clocks[thread.ident] = (thread_role(thread.name), seconds)
    return clocks


def encode_seconds(stats: Mapping[str, Any]) -> float:
    """A fastsend writer's total encode CPU so far, from its ``stats()``."""
    return float(stats["encode_ms_per_image"]) * int(stats["images_encoded"]) / 1e3


def snapshot_seconds(stats: Mapping[str, Any]) -> float:
    """A fastsend writer's total snapshot CPU so far (on the callers' threads), from its ``stats()``."""
    return float(stats["snapshot_ms_per_image"]) * int(stats["images_snapshotted"]) / 1e3


@dataclass
class CpuReport:
    """CPU per event, in milliseconds, over everything a ``CpuMeter`` measured."""

    events: int
    process_ms: float
    encode_ms: float | None  # None: not a fastsend contender
    images_encoded: int
    snapshot_ms: float = 0.0
    by_role_ms: dict[str, float] = field(default_factory=dict)

    @property
    def around_encoder_ms(self) -> float | None:
        """Process CPU per event minus the encoders' CPU for its images (snapshot included)."""
        return None if self.encode_ms is None else self.process_ms - self.encode_ms

    def split(self) -> str:
        """The per-role split as one line, largest first."""
        parts = sorted(self.by_role_ms.items(), key=lambda item: -item[1])
        return ", ".join(f"{role} {ms:.2f}" for role, ms in parts if abs(ms) >= 0.005)


class CpuMeter:
    """Adds up the CPU of calls measured with ``measure``; ``report()`` gives it per event."""

    def __init__(self, stats: Callable[[], Mapping[str, Any]] | None = None) -> None:
        self._stats = stats
        self.events = 0
        self.process_seconds = 0.0
        self.encode_seconds = 0.0
        self.snapshot_seconds = 0.0
        self.images_encoded = 0
        self.by_role: dict[str, float] = {}

    def measure(self, run: Callable[[int], object], events: int) -> float:
        """Call ``run(events)``; add its CPU to the totals. Returns its wall time in seconds."""
        stats_before = self._stats() if self._stats is not None else None
        threads_before = _thread_clocks()
        cpu_before = time.process_time()
        started = time.perf_counter()
        run(events)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        threads_after = _thread_clocks()
        if stats_before is not None and self._stats is not None:
            stats_after = self._stats()
            self.encode_seconds += encode_seconds(stats_after) - encode_seconds(stats_before)
            self.snapshot_seconds += snapshot_seconds(stats_after) - snapshot_seconds(stats_before)
            self.images_encoded += int(stats_after["images_encoded"]) - int(stats_before["images_encoded"])
        attributed = 0.0
        for ident, (role, seconds) in threads_after.items():
            spent = seconds - threads_before.get(ident, (role, 0.0))[1]
            self.by_role[role] = self.by_role.get(role, 0.0) + spent
            attributed += spent
        self.by_role["unattributed"] = self.by_role.get("unattributed", 0.0) + cpu - attributed
        self.process_seconds += cpu
        self.events += events
        return wall

    def report(self) -> CpuReport:
        per_event = 1e3 / max(self.events, 1)
        return CpuReport(
            events=self.events,
            process_ms=self.process_seconds * per_event,
            encode_ms=self.encode_seconds * per_event if self._stats is not None else None,
            images_encoded=self.images_encoded,
            snapshot_ms=self.snapshot_seconds * per_event,
            by_role_ms={role: seconds * per_event for role, seconds in self.by_role.items()},
        )


#: The issue's ceiling for the cost around the encoder, per scenario (ms of CPU per event).
AROUND_ENCODER_TARGET_MS = {"1080p": 0.8, "480p": 0.3}


def cpu_lines(reports: Mapping[str, CpuReport], target_ms: float | None = None) -> list[str]:
    """Summary lines: each contender's CPU per event and its split; for fastsend, the cost around the encoder."""
    lines = []
    for name, report in reports.items():
        lines.append(f"CPU per event, {name}: {report.process_ms:.2f} ms ({report.split()})")
        around = report.around_encoder_ms
        if around is None or report.encode_ms is None:
            continue
        images = report.images_encoded / max(report.events, 1)
        lines.append(
            f"  around the encoder: {around:.2f} ms per event (process {report.process_ms:.2f} - encode "
            f"{report.encode_ms:.2f} for {images:.2g} image(s)), snapshot {report.snapshot_ms:.2f} of it"
            + _verdict(around, target_ms)
        )
    return lines


def _verdict(value: float, target_ms: float | None) -> str:
    if target_ms is None:
        return ""
    return f"; target ≤ {target_ms:g} ms: {'met' if value <= target_ms else 'missed'}"
