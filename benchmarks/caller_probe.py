"""One process's view of the block's cost: caller thread CPU and process CPU per ``EventWriterSink.run()``.

Run by ``benchmarks/compare.py`` once per checkout and round, with only the public API, so that any two
versions of fastsend can be measured the same way::

    python benchmarks/caller_probe.py http://127.0.0.1:PORT

For 1080p output, an output drawn over its 1080p input and 640×480 output, paced (2 ms of this
thread's own CPU work between frames) and flat out, four bursts each: the median of every call's
thread CPU (after the first burst) and the median of the bursts' process CPU per event until
delivered (own work excluded). Prints one JSON line.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable

from benchmarks.frames import SIZES, event_inputs
from fastsend import EventWriterSink

BURSTS = 4
PACE_CPU_S = 0.002


def _own_work(seconds: float) -> None:
    until = time.thread_time() + seconds
    while time.thread_time() < until:
        pass


def _measure(sink: EventWriterSink, call: Callable[[], object], events: int, paced: bool) -> dict[str, float]:
    caller: list[float] = []
    process: list[float] = []
    for burst in range(BURSTS):
        started_process, own = time.process_time(), 0.0
        for _ in range(events):
            if paced:
                started = time.thread_time()
                _own_work(PACE_CPU_S)
                own += time.thread_time() - started
            started = time.thread_time()
            call()
            if burst:  # the first burst warms the threads, the connections and the frame pool
                caller.append(time.thread_time() - started)
        assert sink.flush(120) == 0
        if burst:
            process.append((time.process_time() - started_process - own) / events)
    return {"caller": statistics.median(caller) * 1e3, "process": statistics.median(process) * 1e3}


def main(url: str) -> None:
    sink = EventWriterSink()
    big, small = event_inputs(*SIZES["1080p"]), event_inputs(*SIZES["480p"])
    common = {"event_schema": "quality_check", "qc_result": "fail", "event_ingestion_url": url}

    def drawn() -> object:
        return sink.run(
            output_image=big.output_frame, input_image=big.input_frame, object_detections=big.detections, **common
        )

    calls: dict[str, tuple[Callable[[], object], int]] = {
        "1080p": (lambda: sink.run(output_image=big.output_frame, object_detections=big.detections, **common), 24),
        "1080p drawn": (drawn, 16),
        "480p": (lambda: sink.run(output_image=small.output_frame, object_detections=small.detections, **common), 48),
    }
    report = {
        f"{name} {'paced' if paced else 'flat'}": _measure(sink, call, events, paced)
        for name, (call, events) in calls.items()
        for paced in (True, False)
    }
    sink.close(60)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
