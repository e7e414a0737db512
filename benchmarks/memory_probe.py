"""Peak memory of a sender whose service answers 529 to everything.

Run by ``test_bench_fastsend.test_memory_bounded`` in a fresh process (so its peak
RSS is its own): submits ``--events`` 1080p events (output + input frame, default
snapshot) as fast as it can, then reports one JSON line with the peak RSS and the
bound it must stay within::

    baseline + queue_bytes + (max_in_flight + 1) × (raw frame bytes of one event) + overhead

The queue holds at most ``queue_bytes`` of frames; events past it hold their frames
until encoded, then only their body; one more event's frames are snapshotted before
the queue makes room for it. Encoded snapshots go back to the frame pool, which keeps
idle no more than was out at once at its peak: buffers out and idle together stay within
those same bytes. ``OVERHEAD_MB`` covers allocator slack, thread stacks and the
connection pool.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import fastsend
from benchmarks.frames import SIZES, event_inputs
from benchmarks.receiver import running_receiver

OVERHEAD_MB = 128
MiB = 1024 * 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / MiB


def _peak_rss_mb() -> float:
    """This process's own peak RSS. ``ru_maxrss`` is not: Linux carries it over ``fork`` and ``exec``,
    so a probe started from a large pytest process would report that process's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000)
    args = parser.parse_args()
    inputs = event_inputs(*SIZES["1080p"])
    out, inp, dets = inputs.output_frame, inputs.input_frame, inputs.detections
    event_frame_mb = (out.nbytes + inp.nbytes) / MiB
    with running_receiver(status=529) as url:
        writer = fastsend.EventWriter(url, exit_flush_timeout=0)
        baseline = _rss_mb()
        started = time.perf_counter()
        for _ in range(args.events):
            writer.submit(fastsend.Event.custom(value="memory"), out, input_image=inp, object_detections=dets)
        seconds = time.perf_counter() - started
        stats = writer.stats()
        writer.close(timeout=0)
    peak = _peak_rss_mb()
    settings = writer.settings
    bound = baseline + settings.queue_bytes / MiB + (settings.max_in_flight + 1) * event_frame_mb + OVERHEAD_MB
    report = {
        "events": args.events,
        "submit_seconds": round(seconds, 2),
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "bound_mb": round(bound, 1),
        "queue_bytes_mb": settings.queue_bytes / MiB,
        "max_in_flight": settings.max_in_flight,
        "event_frames_mb": round(event_frame_mb, 2),
        "overhead_mb": OVERHEAD_MB,
        "dropped": stats["dropped"],
        "failed": stats["failed"],
        "retried": stats["retried"],
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
