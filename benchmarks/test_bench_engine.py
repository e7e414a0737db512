"""fastsend's block against the Event Writer block, run by inference's Execution Engine as users run them.

Needs the ``inference`` extra; skipped with the reason without it.

- ``test_engine_interleaved`` (1080p and 640×480): one engine per block, each with the
  4-worker pool InferencePipeline gives its workflows (``workflows_core.thread_pool_executor``,
  where the Event Writer block posts fire-and-forget) and a 4-worker step executor; one
  ``engine.run()`` per frame, 10 detections, fire-and-forget, to the minimal receiver in another
  process. Rounds alternate the contenders: the Event Writer block, fastsend's block, and
  the same engine with the block disabled (what the engine itself costs per frame). A round
  ends when every event of the round is delivered. Reported: events/s at each contender's
  median round, process CPU per event and its split by thread, the cost around fastsend's
  encoder, and nothing lost: the receiver counted every event each sending contender sent.
- ``test_inference_pipeline`` (1080p): ``InferencePipeline.init_with_workflow`` on a 1080p
  video file with the workflow ending in each block, alternating; frames/s from ``start()``
  until ``join()`` returns, i.e. until the pipeline's pools and the blocks' ``close()`` have
  delivered every event (``cancel_thread_pool_tasks_on_exit=False``, so the Event Writer's
  queued posts are sent, not cancelled).

Both print their numbers in the terminal summary at the end of the run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from benchmarks.cpu import AROUND_ENCODER_TARGET_MS, CpuMeter, CpuReport, cpu_lines
from benchmarks.engine_support import ENTERPRISE, FASTSEND, TrackedPool, import_inference, sink_workflow, write_video
from benchmarks.frames import SIZES, event_inputs
from benchmarks.harness import SECTIONS, batch_size
from benchmarks.receiver import receiver_stats

import_inference()

from inference.core.workflows.execution_engine.core import ExecutionEngine  # noqa: E402

import fastsend.workflows  # noqa: E402
from fastsend.config import Settings  # noqa: E402
from fastsend.integrations.workflows.event_writer import shared_writer  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")

EVENT_WRITER = "event-writer-block"
FASTSEND_BLOCK = "fastsend-block"
ENGINE_ONLY = "engine-only (block disabled)"
ENGINE_ROUNDS = 15
PIPELINE_FRAMES = 300
PIPELINE_ROUNDS = 3
#: The targets: fastsend's CPU per event ≤ this × the Event Writer's, and its events/s ≥ 0.9 / that ratio × its.
TARGET_CPU_RATIO = {"1080p": 0.62, "480p": 0.5}
TARGET_PIPELINE_SPEEDUP = 1.6


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[dict[str, Any], TrackedPool]]:
    """One engine per block, set up as InferencePipeline sets up a workflow's engine."""
    pool = TrackedPool(workers=4)
    steps = ThreadPoolExecutor(max_workers=4, thread_name_prefix="engine-step")

    def engine(block: str) -> Any:
        definition, parameters = sink_workflow(block), {"workflows_core.thread_pool_executor": pool}
        return ExecutionEngine.init(workflow_definition=definition, init_parameters=parameters, executor=steps)

    built = {EVENT_WRITER: engine(ENTERPRISE), FASTSEND_BLOCK: engine(FASTSEND)}
    yield built, pool
    for running in built.values():
        running.close()
    pool.shutdown()
    steps.shutdown()


def _engine_runs(engine: Any, parameters: dict[str, Any], settle: Callable[[], None]) -> Callable[[int], None]:
    def run(n: int) -> None:
        for _ in range(n):
            # A fresh dict each run, as a host builds one per frame: the engine replaces the image in the dict
            # it is given by its WorkflowImageData, which caches the JPEG the Event Writer block makes of it.
            (output,) = engine.run(runtime_parameters={**parameters, "boxes": list(parameters["boxes"])})
            assert output["sent"]["error_status"] is False, output["sent"]["message"]
        settle()

    return run


def test_engine_interleaved(benchmark, scenario, receiver_url, engines):
    """The two blocks and the bare engine, round after round; events/s, CPU per event, nothing lost."""
    built, pool = engines
    inputs = event_inputs(*SIZES[scenario])
    n = batch_size(benchmark, scenario)
    parameters = {"image": inputs.output_frame, "url": receiver_url, "boxes": [inputs.detections], "disable": False}
    # The block's writer for this URL, created here with the block's own key so the block reuses it.
    writer = shared_writer(receiver_url, Settings.one("api_key"))
    failures = {EVENT_WRITER: 0}

    def event_writer_settled() -> None:
        failures[EVENT_WRITER] += pool.wait()

    def fastsend_settled() -> None:
        assert fastsend.integrations.workflows.flush(timeout=120) == 0

    contenders = {
        EVENT_WRITER: _engine_runs(built[EVENT_WRITER], parameters, event_writer_settled),
        FASTSEND_BLOCK: _engine_runs(built[FASTSEND_BLOCK], parameters, fastsend_settled),
        ENGINE_ONLY: _engine_runs(built[FASTSEND_BLOCK], {**parameters, "disable": True}, lambda: None),
    }
    meters = {name: CpuMeter(writer.stats) if name == FASTSEND_BLOCK else CpuMeter() for name in contenders}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    delivered = dict.fromkeys(contenders, 0)
    for run in contenders.values():  # warm-up: threads, connections, the engine's first-run work
        run(2)

    def one_round() -> None:
        for name, run in contenders.items():
            before = receiver_stats(receiver_url)["requests"]
            times[name].append(meters[name].measure(run, n))
            delivered[name] += receiver_stats(receiver_url)["requests"] - before

    benchmark.group = f"engine-{scenario}"
    rounds = 1 if benchmark.disabled else ENGINE_ROUNDS
    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)

    sent = n * rounds
    stats = writer.stats()
    assert delivered == {EVENT_WRITER: sent, FASTSEND_BLOCK: sent, ENGINE_ONLY: 0}, delivered
    assert failures[EVENT_WRITER] == 0, failures
    assert stats["failed"] == 0 and stats["dropped"] == 0 and stats["pending"] == 0, stats
    rates = {name: n / statistics.median(samples) for name, samples in times.items()}
    cpu = {name: meter.report() for name, meter in meters.items()}
    benchmark.extra_info.update(
        events_per_round=n,
        events_per_s={name: round(rate, 1) for name, rate in rates.items()},
        cpu_ms_per_event={name: round(report.process_ms, 3) for name, report in cpu.items()},
        cpu_split_ms_per_event={
            name: {role: round(ms, 3) for role, ms in report.by_role_ms.items()} for name, report in cpu.items()
        },
        delivered=delivered,
    )
    if not benchmark.disabled:
        SECTIONS[f"engine, {scenario}: events/s at the median round, CPU per event (same run)"] = _engine_lines(
            scenario, rates, cpu, delivered, sent
        )


def _engine_lines(
    scenario: str, rates: dict[str, float], cpu: dict[str, CpuReport], delivered: dict[str, int], sent: int
) -> list[str]:
    ours, theirs, bare = cpu[FASTSEND_BLOCK], cpu[EVENT_WRITER], cpu[ENGINE_ONLY]
    speedup = rates[FASTSEND_BLOCK] / rates[EVENT_WRITER]
    cpu_ratio = ours.process_ms / theirs.process_ms
    lines = [f"  {name:<30}{rate:>8.1f} events/s" for name, rate in rates.items()]
    lines += [
        f"  fastsend / Event Writer: {speedup:.2f}× the events/s (target ≥ 0.9 / CPU ratio = {0.9 / cpu_ratio:.2f}), "
        f"{cpu_ratio:.2f}× the CPU per event (target ≤ {TARGET_CPU_RATIO[scenario]:g})",
        f"  delivered (counted by the receiver): {delivered[EVENT_WRITER]} of {sent} Event Writer, "
        f"{delivered[FASTSEND_BLOCK]} of {sent} fastsend; nothing lost"
        if delivered[EVENT_WRITER] == delivered[FASTSEND_BLOCK] == sent
        else f"  LOST: delivered {delivered}, sent {sent} each",
    ]
    lines += [f"  {line}" for line in cpu_lines(cpu, AROUND_ENCODER_TARGET_MS[scenario])]
    around = ours.around_encoder_ms
    if around is not None:
        lines.append(
            f"  around fastsend's encoder without the engine's own {bare.process_ms:.2f} ms per frame: "
            f"{around - bare.process_ms:.2f} ms per event"
        )
    return lines


# ---------------------------------------------------------------- InferencePipeline


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> tuple[Path, int]:
    """A 1080p MPEG-4 file, and its number of frames (a handful when benchmarks are disabled)."""
    disabled = request.config.getoption("benchmark_disable", False)
    frames = 8 if disabled else PIPELINE_FRAMES
    path = tmp_path_factory.mktemp("video") / "camera-1080p.mp4"
    return write_video(path, event_inputs(*SIZES["1080p"]).input_frame, frames), frames


def _run_pipeline(block: str, video: Path, receiver_url: str) -> tuple[float, float, int]:
    """Wall seconds and process CPU seconds from ``start()`` to ``join()``, and the frames it predicted on."""
    from inference import InferencePipeline

    predicted = []

    def on_prediction(prediction: dict[str, Any], frame: Any) -> None:
        predicted.append(prediction["sent"]["error_status"])

    detections = event_inputs(*SIZES["1080p"]).detections
    pipeline = InferencePipeline.init_with_workflow(
        video_reference=str(video),
        workflow_specification=sink_workflow(block),
        workflows_parameters={"url": receiver_url, "boxes": [detections]},
        on_prediction=on_prediction,
        cancel_thread_pool_tasks_on_exit=False,
    )
    cpu, started = time.process_time(), time.perf_counter()
    pipeline.start()
    pipeline.join()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert not any(predicted), "a block reported an error"
    return wall, cpu, len(predicted)


def test_inference_pipeline(benchmark, receiver_url, video):
    """InferencePipeline on a 1080p video, the workflow ending in each block, alternating: frames/s."""
    path, frames = video
    results: dict[str, list[tuple[float, float]]] = {EVENT_WRITER: [], FASTSEND_BLOCK: []}
    blocks = {EVENT_WRITER: ENTERPRISE, FASTSEND_BLOCK: FASTSEND}

    def one_round() -> None:
        for name, block in blocks.items():
            before = receiver_stats(receiver_url)["requests"]
            wall, cpu, predicted = _run_pipeline(block, path, receiver_url)
            assert predicted == frames, f"{name}: {predicted} of {frames} frames predicted on"
            assert receiver_stats(receiver_url)["requests"] - before == frames, f"{name}: events lost"
            results[name].append((wall, cpu))

    benchmark.group = "inference-pipeline-1080p"
    rounds = 1 if benchmark.disabled else PIPELINE_ROUNDS
    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    fps = {name: frames / statistics.median(w for w, _ in runs) for name, runs in results.items()}
    cpu_ms = {name: statistics.median(c for _, c in runs) / frames * 1e3 for name, runs in results.items()}
    benchmark.extra_info.update(frames=frames, frames_per_s=fps, cpu_ms_per_frame=cpu_ms)
    if benchmark.disabled:
        return
    speedup = fps[FASTSEND_BLOCK] / fps[EVENT_WRITER]
    lines = [f"  {name:<30}{fps[name]:>8.1f} frames/s, {cpu_ms[name]:.2f} ms CPU per frame" for name in fps]
    lines.append(
        f"  fastsend / Event Writer: {speedup:.2f}× the frames/s (target ≥ {TARGET_PIPELINE_SPEEDUP:g}); "
        f"{frames} frames per run, every event delivered (counted by the receiver), median of {rounds} runs each"
    )
    SECTIONS["InferencePipeline, 1080p video: frames/s start() to join(), every event delivered"] = lines
