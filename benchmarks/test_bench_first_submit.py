"""The first ``submit()`` of a new writer against the ones after it (the video loop's view).

A writer starts its loop thread, encoders and connection pool when it is built, off the
caller's path, so the first call should cost what the others do. Each round builds a
writer, makes one call right away (as a pipeline does on its first frame), then twenty
more; ``extra_info`` holds the medians and their ratio.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import fastsend
from benchmarks.frames import event_inputs

ROUNDS = 15
LATER_CALLS = 20


def _one_round(receiver_url: str, inputs: Any) -> tuple[float, float]:
    writer = fastsend.EventWriter(receiver_url, encode_threads=2)
    try:
        event = fastsend.Event.custom(value="first")
        started = time.perf_counter()
        writer.submit(event, inputs.output_frame, input_image=inputs.input_frame, object_detections=inputs.detections)
        first = time.perf_counter() - started
        later = []
        for _ in range(LATER_CALLS):
            time.sleep(1 / 30)  # paced as a video loop calls it
            started = time.perf_counter()
            writer.submit(
                event, inputs.output_frame, input_image=inputs.input_frame, object_detections=inputs.detections
            )
            later.append(time.perf_counter() - started)
        writer.flush(30)
        return first, statistics.median(later)
    finally:
        writer.close(5)


def test_first_submit_costs_what_later_ones_do(benchmark, receiver_url):
    inputs = event_inputs(640, 480)
    firsts: list[float] = []
    laters: list[float] = []

    def one() -> None:
        first, later = _one_round(receiver_url, inputs)
        firsts.append(first)
        laters.append(later)

    benchmark.pedantic(one, rounds=ROUNDS, iterations=1)
    first_ms, later_ms = statistics.median(firsts) * 1e3, statistics.median(laters) * 1e3
    benchmark.extra_info.update(
        {"first_submit_ms_p50": first_ms, "later_submit_ms_p50": later_ms, "ratio": first_ms / later_ms}
    )
    print(
        f"\nfirst submit {first_ms:.3f} ms, later submits {later_ms:.3f} ms (median), ratio {first_ms / later_ms:.2f}"
    )
