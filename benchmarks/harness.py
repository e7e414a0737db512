"""Throughput measurement shared by every end-to-end contender.

Every contender of a scenario sends the same number of events per round
(``BATCH``), so the per-round times in pytest-benchmark's table compare
directly; ``measure_throughput`` also stores events/s (batch / median round
time) in ``benchmark.extra_info`` and in ``RESULTS``, from which pytest's terminal
summary derives the encode+transfer bound and the ratios.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp

import fastsend
from benchmarks.frames import EventInputs
from fastsend.config import Settings
from fastsend.send.encoding import render_body
from fastsend.send.transport import AiohttpTransport
from fastsend.send.wire import Request

__all__ = [
    "BATCH",
    "ENCODE_ONLY",
    "NOTES",
    "REFERENCE_FIRE_AND_FORGET",
    "REFERENCE_SYNC",
    "RESULTS",
    "SECTIONS",
    "SMOKE_BATCH",
    "TRANSFER_CONCURRENCY",
    "TRANSFER_ONLY",
    "AiohttpPoster",
    "Poster",
    "batch_size",
    "encode_transfer_bound",
    "measure_throughput",
    "new_loop",
    "real_body",
]

#: Events per round, per scenario: short rounds, many of them, so the median shrugs off
#: the bursts of other work on a shared machine (the slowest contenders take ~0.5 s a round).
BATCH = {"1080p": 16, "480p": 64}
#: Events per call when benchmarks are disabled (``--benchmark-disable``): a smoke run.
SMOKE_BATCH = 2

ENCODE_ONLY = "encode-only"
TRANSFER_ONLY = "transfer-only"
REFERENCE_SYNC = "reference-sync"
REFERENCE_FIRE_AND_FORGET = "reference-fire-and-forget"

#: Requests in flight for the transfer-only contender.
TRANSFER_CONCURRENCY = 4

#: scenario → contender → events/s (median round) measured in this pytest run.
RESULTS: dict[str, dict[str, float]] = {}
#: scenario → lines printed under its rates in the terminal summary.
NOTES: dict[str, list[str]] = {}
#: title → lines: more sections of the terminal summary (the engine benchmarks'), printed after the rates.
SECTIONS: dict[str, list[str]] = {}


def batch_size(benchmark: Any, scenario: str) -> int:
    """Events per round for ``scenario``, or ``SMOKE_BATCH`` when benchmarks are disabled."""
    return SMOKE_BATCH if benchmark.disabled else BATCH[scenario]


def measure_throughput(
    benchmark: Any,
    run_batch: Callable[[int], Any],
    scenario: str,
    contender: str,
    *,
    events: int | None = None,
    budget_s: float = 4.0,
    min_rounds: int = 5,
    max_rounds: int = 60,
) -> float | None:
    """Time ``run_batch(n)`` — which must send ``n`` events and return once all are delivered.

    One timed warm-up round picks the number of rounds that fits ``budget_s``;
    then ``benchmark.pedantic(rounds=R, iterations=1)``. Returns events/s at the
    median round, or ``None`` when benchmarks are disabled (one smoke call).
    """
    n = events if events is not None else batch_size(benchmark, scenario)
    benchmark.group = f"throughput-{scenario}"
    benchmark.extra_info.update(scenario=scenario, contender=contender, events_per_round=n)
    if benchmark.disabled:
        benchmark.pedantic(run_batch, args=(n,), rounds=1, iterations=1)
        return None
    start = time.perf_counter()
    run_batch(n)
    warmup = time.perf_counter() - start
    rounds = max(min_rounds, min(max_rounds, int(budget_s / max(warmup, 1e-6))))
    benchmark.pedantic(run_batch, args=(n,), rounds=rounds, iterations=1)
    rate = n / benchmark.stats.stats.median
    benchmark.extra_info["events_per_s"] = round(rate, 1)
    RESULTS.setdefault(scenario, {})[contender] = rate
    bound = encode_transfer_bound(scenario)
    if bound is not None:
        benchmark.extra_info["encode_transfer_bound"] = round(bound, 1)
    return rate


def encode_transfer_bound(scenario: str) -> float | None:
    """1 / (1/encode-only + 1/transfer-only) for ``scenario``, once both were measured."""
    rates = RESULTS.get(scenario, {})
    encode, transfer = rates.get(ENCODE_ONLY), rates.get(TRANSFER_ONLY)
    if not encode or not transfer:
        return None
    return 1.0 / (1.0 / encode + 1.0 / transfer)


def new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def real_body(inputs: EventInputs) -> bytes:
    event = fastsend.Event.quality_check(result="fail")
    prepared = fastsend.prepare_event(
        event, inputs.output_frame, input_image=inputs.input_frame, object_detections=inputs.detections
    )
    return b"".join(render_body(prepared, fastsend.JpegOptions()))


class Poster:
    """Posts one prebuilt body ``n`` times, ``concurrency`` at a time, with nothing else running.

    It posts through fastsend's own transport (the tuned aiohttp session the writer
    uses), so the transfer-only rate, and with it the encode+transfer bound, is what
    this client can do on this machine with no encoding in the way.
    """

    def __init__(self, url: str, body: bytes, concurrency: int) -> None:
        self.url = url
        self.body = body
        self.concurrency = concurrency
        self.loop = new_loop()
        self.pool: Any = self.loop.run_until_complete(self._open())

    async def _open(self) -> Any:
        settings = Settings.resolve(environ={}, url=self.url, max_connections=self.concurrency, connect_timeout=5.0)
        return AiohttpTransport(settings)

    async def _post_one(self) -> int:
        """POST the body once; the answer's status."""
        request = Request.of("benchmark", (self.body,))
        outcome = await self.pool.post(request, 30.0)
        return outcome.status or 0

    async def _post_all(self, n: int) -> None:
        remaining = n

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                status = await self._post_one()
                if status != 201:
                    raise RuntimeError(f"receiver answered {status}")

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, n))))

    def post(self, n: int) -> None:
        self.loop.run_until_complete(self._post_all(n))

    def close(self) -> None:
        self.loop.run_until_complete(self.pool.close())
        self.loop.close()


class AiohttpPoster(Poster):
    """The same job through an aiohttp session as its documentation shows it.

    What fastsend's tuned transport is measured against.
    """

    async def _open(self) -> aiohttp.ClientSession:  # type: ignore[override]
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        return aiohttp.ClientSession(connector=connector, headers={"Content-Type": "application/json"})

    async def _post_one(self) -> int:
        async with self.pool.post(f"{self.url}/v2/events", data=self.body) as response:
            await response.read()
            return response.status

    def close(self) -> None:
        self.loop.run_until_complete(self.pool.close())
        self.loop.close()
