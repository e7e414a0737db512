"""fastsend benchmarks (pytest-benchmark). Not part of the default test run.

Run the suite (a few minutes; every comparison is made within one run, so read
ratios and medians, not absolute numbers, on a shared machine)::

    .venv/bin/python -m pytest benchmarks/ --benchmark-only --no-cov

Smoke-run every benchmark once with tiny batches, plus the harness's own checks::

    .venv/bin/python -m pytest benchmarks/ --benchmark-disable --no-cov -q

Save the numbers: add ``--benchmark-json=bench.json`` (events/s of the
throughput scenarios are in each benchmark's ``extra_info`` and, with the
encode+transfer bounds, under ``fastsend_throughput``). A plain test run in the
repo root never collects this directory (``testpaths = ["tests"]``).

Layout:
- ``receiver.py``: ``running_receiver(status=201)`` — the minimal HTTP/1.1 receiver in
  a child process; ``receiver_stats(url)``.
- ``frames.py``: deterministic 1080p / 640×480 frames and detections;
  ``event_inputs(width, height)``.
- ``reference_sender.py``: ``ReferenceSender`` — the Event Writer block's way
  of sending (cv2 → base64 → dict → ``requests.post(json=…)``).
- ``harness.py``: ``measure_throughput(...)`` — events/s for any contender,
  same batch per scenario; ``RESULTS`` feeds the summary printed at the end.
- ``test_bench_core.py``: JPEG encode, annotations, body build micro-benchmarks.
- ``test_bench_bounds.py``: encode-only, transfer-only, the reference sender.
- ``test_bench_fastsend.py``: fastsend end to end; the interleaved ratios to quote.
- ``test_bench_caller.py``: what the caller's thread pays per ``EventWriterSink.run()`` and
  ``EventWriter.submit()``, paced and flat out, and a drawn frame against one image.
- ``caller_probe.py`` and ``compare.py``: two checkouts measured alternately (before/after).
- ``test_bench_engine.py``: the two Event Writer blocks in inference's Execution
  Engine and InferencePipeline (``engine_support.py``); skipped without inference.
- ``cpu.py``: CPU per event by thread, and the cost around fastsend's encoder.
- ``test_harness.py``: checks of the receiver, frames and reference sender.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmarks.frames import SIZES, EventInputs, event_inputs
from benchmarks.harness import (
    ENCODE_ONLY,
    NOTES,
    REFERENCE_FIRE_AND_FORGET,
    RESULTS,
    SECTIONS,
    TRANSFER_ONLY,
    encode_transfer_bound,
)
from benchmarks.receiver import running_receiver


@pytest.fixture(scope="session")
def receiver_url() -> Iterator[str]:
    """Base URL of the one 201 receiver every end-to-end contender posts to."""
    with running_receiver() as url:
        yield url


@pytest.fixture(scope="session", params=list(SIZES), ids=list(SIZES))
def scenario(request: pytest.FixtureRequest) -> str:
    """``"1080p"`` or ``"480p"``."""
    return request.param


@pytest.fixture(scope="session")
def inputs(scenario: str) -> EventInputs:
    """The scenario's event: annotated output frame, input frame, 10 detections (read-only arrays)."""
    width, height = SIZES[scenario]
    return event_inputs(width, height)


# ---------------------------------------------------------------- summary


def _summary() -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for scenario, rates in RESULTS.items():
        table[scenario] = {name: round(rate, 1) for name, rate in rates.items()}
        bound = encode_transfer_bound(scenario)
        if bound is not None:
            table[scenario]["encode+transfer bound"] = round(bound, 1)
    return table


def pytest_benchmark_update_json(config, benchmarks, output_json) -> None:
    output_json["fastsend_throughput"] = _summary()


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if RESULTS:
        terminalreporter.section("throughput: events/s at the median round (same run)")
        for scenario, rates in RESULTS.items():
            _write_rates(terminalreporter, scenario, rates)
    for title, lines in SECTIONS.items():
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)


def _write_rates(terminalreporter, scenario: str, rates: dict[str, float]) -> None:
    """One scenario's rates with their ratios; rates from separate tests are labelled as such."""
    bound = encode_transfer_bound(scenario)
    reference = rates.get(REFERENCE_FIRE_AND_FORGET)
    # Separate tests ran at different moments of a shared machine: a contender may even beat that bound.
    separate = "interleaved" not in scenario
    bound_name = "the separate tests' bound" if separate else "bound"
    heading = f"{scenario}, separate tests (ratios across moments: rough; quote the interleaved ones)"
    terminalreporter.write_line(f"{heading if separate else scenario}:")
    for name, rate in rates.items():
        notes = []
        if name not in (ENCODE_ONLY, TRANSFER_ONLY):
            if bound:
                notes.append(f"{rate / bound:.2f}× {bound_name}")
            if reference and name != REFERENCE_FIRE_AND_FORGET:
                notes.append(f"{rate / reference:.2f}× reference fire-and-forget")
        terminalreporter.write_line(f"  {name:<34}{rate:>10.1f}   {', '.join(notes)}".rstrip())
    if bound is not None:
        label = "encode+transfer bound, separate tests" if separate else "encode+transfer bound"
        terminalreporter.write_line(f"  {label:<34}{bound:>10.1f}")
    for note in NOTES.get(scenario, []):
        terminalreporter.write_line(f"  {note}")
