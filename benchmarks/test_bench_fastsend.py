"""fastsend end to end against the reference-style sender and the machine's bounds.

- ``test_fastsend_fire_and_forget``: events/s, ``submit`` then ``flush``, same batches as
  the contenders in ``test_bench_bounds.py`` (the summary shows the ratios);
- ``test_throughput_interleaved``: every contender, round after round, in one test: on
  a shared machine load drifts between tests, so these ratios are the ones to quote;
- ``test_caller_cost``: what one fire-and-forget call costs the caller at 1080p, paced
  like a 30 fps video loop: fastsend with the default snapshot, with ownership handed
  over (``copy=False``), and the reference path (encoding on the caller's thread);
- ``test_sync_latency``: synchronous ``send()`` against the reference synchronous send,
  interleaved;
- ``test_fire_and_forget_latency``: submit to 201 of one 1080p event at a time;
- ``test_memory_bounded``: peak RSS while 1080p events go to a service answering 529.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import fastsend
from benchmarks.cpu import AROUND_ENCODER_TARGET_MS, CpuMeter, cpu_lines
from benchmarks.frames import EventInputs
from benchmarks.harness import (
    ENCODE_ONLY,
    NOTES,
    REFERENCE_FIRE_AND_FORGET,
    RESULTS,
    SECTIONS,
    TRANSFER_CONCURRENCY,
    TRANSFER_ONLY,
    Poster,
    batch_size,
    measure_throughput,
    real_body,
)
from benchmarks.reference_sender import ReferenceSender

FASTSEND_FIRE_AND_FORGET = "fastsend-fire-and-forget"
FASTSEND_OWNED = "fastsend-fire-and-forget-owned"  # copy=False: the frames are handed over, no snapshot
#: Rounds of the interleaved test: each contender's median round shrugs off bursts of other load.
INTERLEAVED_ROUNDS = 15
ROOT = Path(__file__).resolve().parents[1]


def _event() -> fastsend.Event:
    return fastsend.Event.quality_check(result="fail", external_id="bench")


@pytest.fixture
def writer(receiver_url: str) -> Iterator[fastsend.EventWriter]:
    # block: a benchmark must deliver every event, not shed load.
    with fastsend.EventWriter(receiver_url, overflow="block", block_timeout=60) as writer:
        yield writer
    stats = writer.stats()
    assert stats["failed"] == 0 and stats["dropped"] == 0, stats


def _fastsend_batch(writer: fastsend.EventWriter, inputs: EventInputs, **options) -> Callable[[int], None]:
    out, inp, dets = inputs.output_frame, inputs.input_frame, inputs.detections

    def run(n: int) -> None:
        for _ in range(n):
            writer.submit(_event(), out, input_image=inp, object_detections=dets, **options)
        assert writer.flush(timeout=120) == 0

    return run


def test_fastsend_fire_and_forget(benchmark, scenario, inputs, writer):
    benchmark.extra_info.update(jpeg_backend=fastsend.jpeg_backend(), encode_threads=writer.settings.encode_threads)
    measure_throughput(benchmark, _fastsend_batch(writer, inputs), scenario, FASTSEND_FIRE_AND_FORGET)


# ---------------------------------------------------------------- interleaved


def test_throughput_interleaved(benchmark, scenario, inputs, writer, receiver_url):
    """All contenders in each round; events/s at each contender's median round."""
    n = batch_size(benchmark, scenario)
    out, inp, dets = inputs.output_frame, inputs.input_frame, inputs.detections
    encode = fastsend.encode_jpeg
    poster = Poster(receiver_url, real_body(inputs), TRANSFER_CONCURRENCY)
    encoders = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    reference = ReferenceSender(receiver_url)

    def encode_only(count: int) -> None:
        list(encoders.map(lambda _: (encode(out, "BGR", 95, "420"), encode(inp, "BGR", 95, "420")), range(count)))

    def reference_ff(count: int) -> None:
        for _ in range(count):
            reference.submit(out, inp, dets)
        reference.drain()

    contenders = {
        ENCODE_ONLY: encode_only,
        TRANSFER_ONLY: poster.post,
        REFERENCE_FIRE_AND_FORGET: reference_ff,
        FASTSEND_FIRE_AND_FORGET: _fastsend_batch(writer, inputs),
        FASTSEND_OWNED: _fastsend_batch(writer, inputs, copy=False),
    }
    times: dict[str, list[float]] = {name: [] for name in contenders}
    # The fastsend contenders share one writer: each meter takes the encode CPU of its own calls.
    meters = {name: CpuMeter(writer.stats if name.startswith("fastsend") else None) for name in contenders}

    def one_round() -> None:
        for name, run in contenders.items():
            times[name].append(meters[name].measure(run, n))

    benchmark.group = f"interleaved-{scenario}"
    try:
        benchmark.pedantic(
            one_round, rounds=1 if benchmark.disabled else INTERLEAVED_ROUNDS, iterations=1, warmup_rounds=0
        )
    finally:
        poster.close()
        encoders.shutdown()
        reference.close()
    rates = {name: n / statistics.median(samples) for name, samples in times.items()}
    cpu = {name: meter.report() for name, meter in meters.items()}
    section = f"{scenario}, interleaved (quote these)"
    if not benchmark.disabled:
        RESULTS[section] = rates  # the terminal summary prints them with their ratios
    bound = 1 / (1 / rates[ENCODE_ONLY] + 1 / rates[TRANSFER_ONLY])
    ours = rates[FASTSEND_FIRE_AND_FORGET]
    # The default path's own CPU per image (the writer's stats mix all its contenders): snapshots on the
    # caller's thread, encodes on the encoders.
    default = cpu[FASTSEND_FIRE_AND_FORGET]
    images = default.images_encoded / max(default.events, 1)
    snapshot_ms = default.snapshot_ms / images if images else 0.0
    encode_ms = (default.encode_ms or 0.0) / images if images else 0.0
    snapshot_share = snapshot_ms / (snapshot_ms + encode_ms) if encode_ms else 0.0
    if not benchmark.disabled:
        NOTES[section] = [
            f"snapshot {snapshot_ms:.2f} ms CPU per frame, encode {encode_ms:.2f} ms CPU per image: "
            f"the snapshot is {snapshot_share:.0%} of the default path's copy+encode work",
            *cpu_lines(cpu, AROUND_ENCODER_TARGET_MS[scenario]),
        ]
    benchmark.extra_info.update(
        snapshot_cpu_ms_per_frame=round(snapshot_ms, 3),
        encode_cpu_ms_per_image=round(encode_ms, 3),
        snapshot_share=round(snapshot_share, 3),
        events_per_s={name: round(rate, 1) for name, rate in rates.items()},
        cpu_ms_per_event={name: round(report.process_ms, 3) for name, report in cpu.items()},
        around_encoder_ms_per_event={
            name: round(report.around_encoder_ms, 3)
            for name, report in cpu.items()
            if report.around_encoder_ms is not None
        },
        cpu_split_ms_per_event={
            name: {role: round(ms, 3) for role, ms in report.by_role_ms.items()} for name, report in cpu.items()
        },
        encode_transfer_bound=round(bound, 1),
        fastsend_vs_bound=round(ours / bound, 3),
        fastsend_vs_reference_ff=round(ours / rates[REFERENCE_FIRE_AND_FORGET], 3),
        fastsend_owned_vs_bound=round(rates[FASTSEND_OWNED] / bound, 3),
    )


# ---------------------------------------------------------------- caller cost

_PACE_S = 1 / 30


def _paced() -> None:
    time.sleep(_PACE_S)


def _percentiles(benchmark) -> None:
    data = sorted(benchmark.stats.stats.data)
    if data:
        benchmark.extra_info["p50_ms"] = round(data[len(data) // 2] * 1e3, 4)
        benchmark.extra_info["p99_ms"] = round(data[min(len(data) - 1, int(len(data) * 0.99))] * 1e3, 4)


def _control_work() -> int:
    """Fixed pure-Python work (~10 µs warm): shows what pacing alone does to any call on this machine."""
    table = {i: i for i in range(100)}
    return sum(table[i] for i in range(100))


def _warm_p50(call: Callable[[], object], n: int = 200) -> float:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        call()
        samples.append(time.perf_counter() - started)
    return sorted(samples)[n // 2]


@pytest.mark.parametrize("contender", ["fastsend-snapshot", "fastsend-owned", "reference", "bare-copy", "control"])
def test_caller_cost(benchmark, contender, receiver_url):
    """One call per 1/30 s (the pace of a video loop); also its cost back to back, caches warm.

    Default settings: back to back, the queue overflows and drops the oldest, which is
    part of what a caller that outruns the service pays.
    """
    from benchmarks.frames import SIZES, event_inputs

    inputs = event_inputs(*SIZES["1080p"])
    out, inp, dets = inputs.output_frame, inputs.input_frame, inputs.detections
    event = _event()
    writer = fastsend.EventWriter(receiver_url)
    reference = ReferenceSender(receiver_url) if contender == "reference" else None
    if contender == "control":
        call = _control_work
    elif contender == "bare-copy":  # the floor of any snapshot: the two frames copied into warm buffers
        copies = np.empty_like(out), np.empty_like(inp)

        def call() -> None:
            np.copyto(copies[0], out)
            np.copyto(copies[1], inp)

    elif reference is not None:

        def call() -> None:
            reference.submit(out, inp, dets)

    else:
        copy = contender == "fastsend-snapshot"

        def call() -> None:
            writer.submit(event, out, input_image=inp, object_detections=dets, copy=copy)

    benchmark.group = "caller-cost-1080p"
    rounds = 2 if benchmark.disabled else 150
    benchmark.pedantic(call, setup=_paced, rounds=rounds, iterations=1, warmup_rounds=0 if benchmark.disabled else 5)
    if not benchmark.disabled:
        _percentiles(benchmark)
        if reference is None:
            benchmark.extra_info["warm_p50_ms"] = round(_warm_p50(call) * 1e3, 4)
    if reference is not None:
        reference.close()
    writer.close(timeout=60)


# ---------------------------------------------------------------- synchronous latency


def test_sync_latency(benchmark, receiver_url, writer):
    """fastsend ``send()`` and the reference synchronous send, alternating, at 1080p."""
    from benchmarks.frames import SIZES, event_inputs

    inputs = event_inputs(*SIZES["1080p"])
    out, inp, dets = inputs.output_frame, inputs.input_frame, inputs.detections
    reference = ReferenceSender(receiver_url)
    reference_times: list[float] = []

    def fastsend_send() -> None:
        result = writer.send(_event(), out, input_image=inp, object_detections=dets)
        assert not result.error_status, result.message

    def reference_send() -> None:
        started = time.perf_counter()
        reference.send(out, inp, dets)
        reference_times.append(time.perf_counter() - started)

    benchmark.group = "sync-latency-1080p"
    rounds = 1 if benchmark.disabled else 40
    # Warm-up: the first send starts the writer's threads and opens its connection (~30 ms once).
    warmup = 0 if benchmark.disabled else 2
    benchmark.pedantic(fastsend_send, setup=reference_send, rounds=rounds, iterations=1, warmup_rounds=warmup)
    reference.close()
    del reference_times[:warmup]
    if not benchmark.disabled:
        _percentiles(benchmark)
        reference_times.sort()
        reference_p50 = reference_times[len(reference_times) // 2]
        benchmark.extra_info["reference_p50_ms"] = round(reference_p50 * 1e3, 3)
        benchmark.extra_info["reference_p99_ms"] = round(reference_times[int(len(reference_times) * 0.99)] * 1e3, 3)
        benchmark.extra_info["fastsend_vs_reference_p50"] = round(benchmark.stats.stats.median / reference_p50, 3)


# ---------------------------------------------------------------- fire-and-forget latency


def test_fire_and_forget_latency(benchmark, receiver_url, writer):
    """Submit to 201 for one 1080p event at a time (every 100 ms): how soon the service knows."""
    from benchmarks.frames import SIZES, event_inputs

    inputs = event_inputs(*SIZES["1080p"])
    out, inp, dets = inputs.output_frame, inputs.input_frame, inputs.detections

    def deliver_one() -> None:
        result = writer.submit(_event(), out, input_image=inp, object_detections=dets).result(timeout=30)
        assert not result.error_status, result.message

    benchmark.group = "fire-and-forget-latency-1080p"
    rounds = 1 if benchmark.disabled else 40
    warmup = 0 if benchmark.disabled else 2  # the first event starts the writer's threads and connection
    benchmark.pedantic(deliver_one, setup=lambda: time.sleep(0.1), rounds=rounds, iterations=1, warmup_rounds=warmup)
    if not benchmark.disabled:
        _percentiles(benchmark)


# ---------------------------------------------------------------- memory


def test_memory_bounded(benchmark):
    """Peak RSS of a process submitting 1080p events to a receiver that answers 529 throughout.

    The table's row times the whole probe (a fresh process submitting every event); the memory
    figures are in ``extra_info`` and the terminal summary.
    """
    events = 40 if benchmark.disabled else 10_000
    reports: list[dict[str, float]] = []

    def probe() -> None:
        run = subprocess.run(
            [sys.executable, "-m", "benchmarks.memory_probe", "--events", str(events)],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=ROOT,
        )
        assert run.returncode == 0, run.stderr
        reports.append(json.loads(run.stdout.strip().splitlines()[-1]))

    benchmark.group = "memory-529-storm (row: the probe process's run)"
    benchmark.pedantic(probe, rounds=1, iterations=1)
    (report,) = reports
    benchmark.extra_info.update(report)
    assert report["peak_rss_mb"] <= report["bound_mb"], report
    if not benchmark.disabled:
        SECTIONS["memory: 1080p events submitted into a 529 storm, in a fresh process"] = [
            f"  {report['events']:.0f} events in {report['submit_seconds']} s: peak RSS {report['peak_rss_mb']} MiB "
            f"(baseline {report['baseline_rss_mb']}, bound {report['bound_mb']}: within it); "
            f"{report['dropped']:.0f} dropped, {report['failed']:.0f} failed"
        ]
