"""Throughput bounds of this machine and the reference sender, per scenario (1080p, 640×480).

- encode-only: the event's two JPEG encodes (q95, 4:2:0, fastsend's backend) on
  ``os.cpu_count()`` threads, nothing else;
- transfer-only: real-size bodies, built in advance, POSTed to the receiver through
  fastsend's transport (its tuned aiohttp session) and nothing else,
  ``TRANSFER_CONCURRENCY`` requests in flight;
- encode+transfer bound = 1 / (1/encode-only + 1/transfer-only), in the summary;
- the transport's CPU per request, fastsend's against an aiohttp session as documented (same job);
- the reference sender, synchronous and fire-and-forget through its pool.

Every contender sends ``harness.BATCH[scenario]`` events per round to the same receiver.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

import fastsend
from benchmarks.frames import EventInputs
from benchmarks.harness import (
    ENCODE_ONLY,
    REFERENCE_FIRE_AND_FORGET,
    REFERENCE_SYNC,
    SMOKE_BATCH,
    TRANSFER_CONCURRENCY,
    TRANSFER_ONLY,
    AiohttpPoster,
    Poster,
    measure_throughput,
    real_body,
)
from benchmarks.receiver import receiver_stats
from benchmarks.reference_sender import ReferenceSender


def test_encode_only(benchmark, scenario, inputs):
    out, inp = inputs.output_frame, inputs.input_frame
    encode = fastsend.encode_jpeg

    def encode_event(_: int) -> int:
        return len(encode(out, "BGR", 95, "420")) + len(encode(inp, "BGR", 95, "420"))

    workers = os.cpu_count() or 1
    benchmark.extra_info.update(threads=workers, jpeg_backend=fastsend.jpeg_backend())
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="encode-only") as pool:
        measure_throughput(benchmark, lambda n: sum(pool.map(encode_event, range(n))), scenario, ENCODE_ONLY)


@pytest.fixture
def poster(receiver_url: str, inputs: EventInputs) -> Iterator[Poster]:
    poster = Poster(receiver_url, real_body(inputs), TRANSFER_CONCURRENCY)
    yield poster
    poster.close()


@pytest.mark.parametrize("client", ["fastsend", "aiohttp"])
def test_http_client_cpu(benchmark, scenario, inputs, receiver_url, client):
    """CPU per POST of a real-size body (this process only; the receiver runs in its own)."""
    kind = Poster if client == "fastsend" else AiohttpPoster
    poster = kind(receiver_url, real_body(inputs), TRANSFER_CONCURRENCY)
    n = SMOKE_BATCH if benchmark.disabled else {"1080p": 100, "480p": 400}[scenario]
    poster.post(n)  # connections open, caches warm
    cpu: list[float] = []

    def run() -> None:
        started = time.process_time()
        poster.post(n)
        cpu.append(time.process_time() - started)

    benchmark.group = f"http-client-{scenario}"
    try:
        benchmark.pedantic(run, rounds=1 if benchmark.disabled else 7, iterations=1)
    finally:
        poster.close()
    benchmark.extra_info.update(
        requests_per_round=n,
        body_bytes=len(poster.body),
        cpu_ms_per_request=round(statistics.median(cpu) / n * 1e3, 4),
        requests_per_s=round(n / benchmark.stats.stats.median, 1) if not benchmark.disabled else None,
    )


def test_transfer_only(benchmark, scenario, poster, receiver_url):
    benchmark.extra_info.update(body_bytes=len(poster.body), concurrency=poster.concurrency)
    before = receiver_stats(receiver_url)["requests"]
    measure_throughput(benchmark, poster.post, scenario, TRANSFER_ONLY)
    assert receiver_stats(receiver_url)["requests"] > before


@pytest.fixture
def reference(receiver_url: str) -> Iterator[ReferenceSender]:
    with ReferenceSender(receiver_url) as sender:
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
