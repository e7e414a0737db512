"""Throughput bounds of this machine and the reference sender, per scenario (1080p, 640×480).

- encode-only: the event's two JPEG encodes (q95, 4:2:0, fastsend's backend) on
  ``os.cpu_count()`` threads, nothing else;
- transfer-only: real-size bodies, built in advance, POSTed to the sink with
  aiohttp over a pooled connector, ``TRANSFER_CONCURRENCY`` requests in flight;
- encode+transfer bound = 1 / (1/encode-only + 1/transfer-only), in the summary;
- the reference sender, synchronous and fire-and-forget through its pool.

Every contender sends ``harness.BATCH[scenario]`` events per round to the same sink.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import aiohttp
import pytest

import fastsend
from benchmarks.frames import EventInputs
from benchmarks.harness import (
    ENCODE_ONLY,
    REFERENCE_FIRE_AND_FORGET,
    REFERENCE_SYNC,
    TRANSFER_ONLY,
    measure_throughput,
)
from benchmarks.reference_sender import ReferenceSender
from benchmarks.sink import sink_stats

TRANSFER_CONCURRENCY = 4


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def _real_body(inputs: EventInputs) -> bytes:
    event = fastsend.Event.quality_check(result="fail")
    prepared = fastsend.prepare_event(
        event, inputs.output_frame, input_image=inputs.input_frame, object_detections=inputs.detections
    )
    return b"".join(fastsend.render_body(prepared, fastsend.JpegOptions()))


def test_encode_only(benchmark, scenario, inputs):
    out, inp = inputs.output_frame, inputs.input_frame
    encode = fastsend.encode_jpeg

    def encode_event(_: int) -> int:
        return len(encode(out, "BGR", 95, "420")) + len(encode(inp, "BGR", 95, "420"))

    workers = os.cpu_count() or 1
    benchmark.extra_info.update(threads=workers, jpeg_backend=fastsend.jpeg_backend())
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="encode-only") as pool:
        measure_throughput(benchmark, lambda n: sum(pool.map(encode_event, range(n))), scenario, ENCODE_ONLY)


class _Poster:
    """An aiohttp session on its own (uv)loop, posting one body ``n`` times, ``concurrency`` at a time."""

    def __init__(self, url: str, body: bytes, concurrency: int) -> None:
        self.url = f"{url}/v2/events"
        self.body = body
        self.concurrency = concurrency
        self.loop = _new_loop()
        self.session = self.loop.run_until_complete(self._open())

    async def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        return aiohttp.ClientSession(connector=connector, headers={"Content-Type": "application/json"})

    async def _post_all(self, n: int) -> None:
        remaining = n

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with self.session.post(self.url, data=self.body) as response:
                    await response.read()
                    if response.status != 201:
                        raise RuntimeError(f"sink answered {response.status}")

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, n))))

    def post(self, n: int) -> None:
        self.loop.run_until_complete(self._post_all(n))

    def close(self) -> None:
        self.loop.run_until_complete(self.session.close())
        self.loop.close()


@pytest.fixture
def poster(sink_url: str, inputs: EventInputs) -> Iterator[_Poster]:
    poster = _Poster(sink_url, _real_body(inputs), TRANSFER_CONCURRENCY)
    yield poster
    poster.close()


def test_transfer_only(benchmark, scenario, poster, sink_url):
    benchmark.extra_info.update(body_bytes=len(poster.body), concurrency=poster.concurrency)
    before = sink_stats(sink_url)["requests"]
    measure_throughput(benchmark, poster.post, scenario, TRANSFER_ONLY)
    assert sink_stats(sink_url)["requests"] > before


@pytest.fixture
def reference(sink_url: str) -> Iterator[ReferenceSender]:
    with ReferenceSender(sink_url) as sender:
        yield sender


def test_reference_sync(benchmark, scenario, inputs, reference):
    out, inp, dets = inputs.output_frame, inputs.input_frame, inputs.detections

    def run(n: int) -> None:
        for _ in range(n):
            reference.send(out, inp, dets)

    benchmark.extra_info.update(http="requests.post per event (new connection each)")
    measure_throughput(benchmark, run, scenario, REFERENCE_SYNC)


def test_reference_fire_and_forget(benchmark, scenario, inputs, reference):
    out, inp, dets = inputs.output_frame, inputs.input_frame, inputs.detections

    def run(n: int) -> None:
        for _ in range(n):
            reference.submit(out, inp, dets)
        reference.drain()

    benchmark.extra_info.update(
        http="requests.post per event (new connection each)", pool_threads=reference.max_workers
    )
    measure_throughput(benchmark, run, scenario, REFERENCE_FIRE_AND_FORGET)
