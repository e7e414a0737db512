"""JPEG segment reuse: CPU of an event's images when the output is the input with drawings.

Contenders, per event, on the encoder's thread (``time.thread_time``):

- ``output-only``: the output image encoded (the active backend) and base64'd;
- ``both-two-encodes``: output and input encoded separately, as without reuse;
- ``both-reuse``: ``encode_pair`` (input encoded whole with restart markers, the output's changed
  segments only) and both base64'd.

The frames are ``benchmarks/frames.py``'s: a camera-like frame and the same frame with 10 boxes
and their labels drawn. Ratios are medians of rounds that alternate the contenders, so a burst of
other work on the machine hits them alike; they are printed and kept in ``extra_info``. Run::

    pytest benchmarks/test_bench_jpeg_reuse.py --benchmark-only --no-cov
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import pybase64
import pytest

import fastsend.imaging.pair as jpeg_pair
from benchmarks.frames import SIZES, EventInputs, event_inputs
from fastsend.imaging.jpeg import JpegOptions, RawImage, prepare_image, release_frame, to_base64
from fastsend.imaging.pair import changed_segments, encode_pair, encode_with_restarts, layout_of

OPTIONS = JpegOptions()
ROUNDS = {"1080p": 40, "480p": 150}


def _frames(inputs: EventInputs) -> tuple[RawImage, RawImage]:
    # Writable C-contiguous copies, as snapshots are; the cached arrays are read-only.
    return RawImage(inputs.output_frame.copy(), "BGR"), RawImage(inputs.input_frame.copy(), "BGR")


def _contenders(output: RawImage, input: RawImage) -> dict[str, Callable[[], Any]]:
    def reuse() -> None:
        pair = encode_pair(output, input, OPTIONS)
        assert pair is not None, "reuse did not apply"
        pybase64.b64encode(pair[0]), pybase64.b64encode(pair[1])

    return {
        "output-only": lambda: to_base64(output, OPTIONS),
        "both-two-encodes": lambda: (to_base64(output, OPTIONS), to_base64(input, OPTIONS)),
        "both-reuse": reuse,
    }


def _alternating_medians(contenders: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median thread CPU seconds of each contender over ``rounds`` rounds, the order reversed every other round."""
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for index in range(rounds):
        order = list(contenders.items())
        for name, run in order if index % 2 else reversed(order):
            started = time.thread_time()
            run()
            cpu[name].append(time.thread_time() - started)
    return {name: statistics.median(seconds) for name, seconds in cpu.items()}


def _report(capsys: pytest.CaptureFixture[str], title: str, lines: list[str]) -> None:
    with capsys.disabled():
        print(f"\n{title}")
        for line in lines:
            print(f"  {line}")


def _rounds(benchmark: Any, scenario: str) -> int:
    return 2 if benchmark.disabled else ROUNDS[scenario]


@pytest.mark.benchmark(timer=time.thread_time)
@pytest.mark.parametrize("contender", ["output-only", "both-two-encodes", "both-reuse"])
def test_event_images_cpu(benchmark, scenario, inputs, contender):
    """pytest-benchmark's own table: thread CPU per event for each contender."""
    run = _contenders(*_frames(inputs))[contender]
    benchmark.group = f"jpeg-reuse-{scenario}"
    benchmark.extra_info.update(reuse=jpeg_pair.jpeg_reuse(), contender=contender)
    benchmark(run)


def test_reuse_ratios(benchmark, scenario, inputs, capsys):
    """The target: both images with reuse ≤ 1.35× the CPU of output-only (two encodes: ~2.0×)."""
    output, input = _frames(inputs)
    layout = layout_of(*input.array.shape[:2], "BGR", OPTIONS.subsampling)
    share = float(changed_segments(layout, output.array, input.array).mean())
    medians: dict[str, float] = {}

    def measure() -> None:
        medians.update(_alternating_medians(_contenders(output, input), _rounds(benchmark, scenario)))

    benchmark.pedantic(measure, rounds=1, iterations=1)
    base = medians["output-only"]
    ratios = {name: seconds / base for name, seconds in medians.items()}
    sizes = _sizes(output, input, layout.interval)
    benchmark.extra_info.update(
        changed_segment_share=round(share, 3),
        cpu_ms={name: round(seconds * 1e3, 3) for name, seconds in medians.items()},
        ratio_to_output_only={name: round(ratio, 3) for name, ratio in ratios.items()},
        **sizes,
    )
    lines = [f"{name:<18}{medians[name] * 1e3:8.2f} ms  {ratios[name]:.2f}×" for name in medians]
    lines.append(f"changed segments: {share:.1%} of {layout.rows * layout.per_row} ({layout.interval} MCUs each)")
    lines.append(f"restart markers add {sizes['restart_size_overhead_pct']:.2f} % to the output's size")
    _report(capsys, f"jpeg reuse {scenario}: thread CPU per event, median of alternating rounds", lines)


def _sizes(output: RawImage, input: RawImage, interval: int) -> dict[str, float]:
    plain = len(encode_with_restarts(output.array, "BGR", OPTIONS, 0))
    marked = len(encode_with_restarts(output.array, "BGR", OPTIONS, interval))
    return {"output_bytes": marked, "restart_size_overhead_pct": round(100 * (marked / plain - 1), 2)}


def test_reuse_stages(benchmark, scenario, inputs, capsys):
    """Where the time of ``encode_pair`` goes: diff, input encode, packed patches, splice."""
    output, input = _frames(inputs)
    layout = layout_of(*input.array.shape[:2], "BGR", OPTIONS.subsampling)
    changed = changed_segments(layout, output.array, input.array)
    input_jpeg = encode_with_restarts(input.array, "BGR", OPTIONS, layout.interval)
    patches = jpeg_pair._encode_patches(layout, changed, output, OPTIONS)
    stages = {
        "output-only": lambda: to_base64(output, OPTIONS),
        "diff": lambda: changed_segments(layout, output.array, input.array),
        "input encode": lambda: encode_with_restarts(input.array, "BGR", OPTIONS, layout.interval),
        "patches": lambda: jpeg_pair._encode_patches(layout, changed, output, OPTIONS),
        "splice": lambda: jpeg_pair._splice(layout, input_jpeg, patches),
    }
    medians: dict[str, float] = {}
    benchmark.pedantic(
        lambda: medians.update(_alternating_medians(stages, _rounds(benchmark, scenario))), rounds=1, iterations=1
    )
    base = medians["output-only"]
    benchmark.extra_info.update(cpu_ms={name: round(seconds * 1e3, 3) for name, seconds in medians.items()})
    lines = [
        f"{name:<14}{seconds * 1e3:8.3f} ms  {seconds / base:.3f}× output-only" for name, seconds in medians.items()
    ]
    _report(capsys, f"jpeg reuse {scenario}: stages, median of alternating rounds", lines)


def test_caller_thread_cost(benchmark, scenario, inputs, capsys):
    """Where the diff should run. Today the caller snapshots both frames (``copy=True``); with the diff
    on its thread it would snapshot the input, diff, and copy only the changed segments of the output."""
    output, input = inputs.output_frame, inputs.input_frame
    layout = layout_of(*input.shape[:2], "BGR", OPTIONS.subsampling)
    height, width = layout.mcu_height * layout.whole_rows, layout.segment_width * layout.whole_per_row

    def both_snapshots() -> None:
        for frame in (output, input):
            release_frame(prepare_image(frame, copy=True))

    def diff_then_snapshot_input() -> None:
        changed = changed_segments(layout, output, input)
        snapshot = prepare_image(input, copy=True)
        rows, columns = np.nonzero(changed[: layout.whole_rows, : layout.whole_per_row])
        tiles = output[:height, :width].reshape(layout.whole_rows, layout.mcu_height, layout.whole_per_row, -1, 3)
        tiles[rows, :, columns].copy()
        release_frame(snapshot)

    def diff_only() -> None:
        changed_segments(layout, output, input)

    contenders = {"two snapshots (today)": both_snapshots, "diff + input snapshot + tiles": diff_then_snapshot_input}
    contenders["diff alone"] = diff_only
    medians: dict[str, float] = {}
    benchmark.pedantic(
        lambda: medians.update(_alternating_medians(contenders, _rounds(benchmark, scenario))), rounds=1, iterations=1
    )
    benchmark.extra_info.update(cpu_ms={name: round(seconds * 1e3, 3) for name, seconds in medians.items()})
    lines = [f"{name:<32}{seconds * 1e3:8.3f} ms" for name, seconds in medians.items()]
    _report(capsys, f"jpeg reuse {scenario}: caller's thread CPU with copy=True", lines)


@pytest.mark.parametrize("interval", [1, 2, 4, 8])
def test_restart_interval(benchmark, scenario, inputs, capsys, monkeypatch, interval):
    """Smaller segments change less of the frame but every marker costs bytes and CPU: reuse per interval."""
    output, input = _frames(inputs)
    monkeypatch.setattr(jpeg_pair, "_INTERVALS", (interval,))
    layout = layout_of(*input.array.shape[:2], "BGR", OPTIONS.subsampling)
    share = float(changed_segments(layout, output.array, input.array).mean())
    contenders = _contenders(output, input)
    del contenders["both-two-encodes"]
    medians: dict[str, float] = {}
    benchmark.pedantic(
        lambda: medians.update(_alternating_medians(contenders, _rounds(benchmark, scenario))), rounds=1, iterations=1
    )
    ratio = medians["both-reuse"] / medians["output-only"]
    sizes = _sizes(output, input, interval)
    benchmark.extra_info.update(changed_segment_share=round(share, 3), reuse_ratio=round(ratio, 3), **sizes)
    line = f"{share:.1%} of segments changed, +{sizes['restart_size_overhead_pct']:.2f} % size, reuse {ratio:.2f}×"
    _report(capsys, f"jpeg reuse {scenario}: restart every {interval} MCUs", [line])


@pytest.mark.parametrize("share", [0.2, 0.4, 0.6, 0.8])
def test_reuse_by_changed_share(benchmark, capsys, share):
    """Where reuse stops paying (1080p): drawings over ``share`` of the segments, reuse against two encodes."""
    inputs = event_inputs(*SIZES["1080p"])
    output, input = _frames(inputs)
    layout = layout_of(*input.array.shape[:2], "BGR", OPTIONS.subsampling)
    rng = np.random.default_rng(7)
    picked = rng.random((layout.rows, layout.per_row)) < share
    for row, column in zip(*np.nonzero(picked), strict=True):  # a short label in each picked segment
        x, y = int(column) * layout.segment_width, int(row) * layout.mcu_height + 12
        cv2.putText(output.array, "id 7", (x + 2, min(y, layout.height - 1)), cv2.FONT_HERSHEY_PLAIN, 0.8, (0, 255, 0))
    measured = float(changed_segments(layout, output.array, input.array).mean())
    contenders = _contenders(output, input)

    def reuse_any_share() -> None:
        pair = encode_pair(output, input, OPTIONS, max_changed_share=1.0)
        assert pair is not None

    contenders["both-reuse"] = reuse_any_share
    medians: dict[str, float] = {}
    benchmark.pedantic(
        lambda: medians.update(_alternating_medians(contenders, _rounds(benchmark, "1080p") // 2)),
        rounds=1,
        iterations=1,
    )
    ratio = medians["both-reuse"] / medians["both-two-encodes"]
    benchmark.extra_info.update(changed_segment_share=round(measured, 3), reuse_over_two_encodes=round(ratio, 3))
    _report(capsys, f"jpeg reuse 1080p, {measured:.0%} of segments changed", [f"reuse / two encodes: {ratio:.2f}"])


def test_writer_cpu_per_event(benchmark, scenario, inputs, receiver_url, capsys, monkeypatch):
    """The whole process's CPU per event through an EventWriter to the receiver (caller, encoders, transport):
    output image only, both images as two encodes (reuse turned off), both images with reuse."""
    import fastsend
    import fastsend.send.encoding

    out, inp, dets = inputs.output_frame, inputs.input_frame, inputs.detections
    n = 2 if benchmark.disabled else {"1080p": 8, "480p": 32}[scenario]
    writer = fastsend.EventWriter(receiver_url, overflow="block", block_timeout=60)
    reuse_applies = fastsend.send.encoding.reuse_applies

    def batch(input_image: Any, reuse: bool) -> Callable[[], None]:
        def run() -> None:
            monkeypatch.setattr(fastsend.send.encoding, "reuse_applies", reuse_applies if reuse else lambda *a: False)
            for _ in range(n):
                writer.submit(
                    fastsend.Event.quality_check(result="fail"), out, input_image=input_image, object_detections=dets
                )
            assert writer.flush(timeout=120) == 0

        return run

    contenders = {
        "output-only": batch(None, True),
        "both-two-encodes": batch(inp, False),
        "both-reuse": batch(inp, True),
    }
    cpu: dict[str, list[float]] = {name: [] for name in contenders}

    def rounds() -> None:
        for index in range(2 if benchmark.disabled else 12):
            order = list(contenders.items())
            for name, run in order if index % 2 else reversed(order):
                started = time.process_time()
                run()
                cpu[name].append((time.process_time() - started) / n)

    try:
        benchmark.pedantic(rounds, rounds=1, iterations=1)
    finally:
        writer.close(timeout=30)
    medians = {name: statistics.median(seconds) for name, seconds in cpu.items()}
    base = medians["output-only"]
    benchmark.extra_info.update(process_cpu_ms_per_event={k: round(v * 1e3, 3) for k, v in medians.items()})
    lines = [f"{name:<18}{seconds * 1e3:8.2f} ms  {seconds / base:.2f}×" for name, seconds in medians.items()]
    _report(capsys, f"jpeg reuse {scenario}: process CPU per event through EventWriter", lines)
