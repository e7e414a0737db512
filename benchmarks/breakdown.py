"""Where each microsecond goes: CPU per event by thread and by function group, in one process, one run.

    python benchmarks/breakdown.py engine 1080p [--rounds 8]   # the Event Writer, fastsend's block, the bare engine
    python benchmarks/breakdown.py block [--rounds 8]          # EventWriterSink.run(): 1080p, drawn 1080p, 640×480
    python benchmarks/breakdown.py aiohttp                     # bare aiohttp's loop-thread CPU per request
    python benchmarks/breakdown.py loop 480p [--rounds 8]      # the loop thread: fastsend, its share, aiohttp in place

Per thread: ``CpuMeter`` (every thread's own CPU clock, grouped by role). Per function group: the
named functions wrapped to add their thread CPU (``time.thread_time``) to their group, by thread;
a group's figure includes what it calls. Contenders alternate round by round, as in the benchmarks.
Prints JSON: microseconds per event.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import json
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchmarks.cpu import CpuMeter
from benchmarks.frames import SIZES, event_inputs
from benchmarks.receiver import running_receiver

_SPENT: collections.defaultdict[tuple[str, str], float] = collections.defaultdict(float)


def _attribute(owner: Any, name: str, group: str) -> None:
    """Wrap ``owner.name`` so that its thread CPU goes to ``group`` under the calling thread's name."""
    function = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.thread_time()
        try:
            return function(*args, **kwargs)
        finally:
            thread = threading.current_thread().name.rstrip("_0123456789-")
            _SPENT[(thread, group)] += time.thread_time() - started

    setattr(owner, name, timed)


def _fastsend_groups() -> None:
    import aiohttp.http_writer

    from fastsend.imaging import jpeg, pair
    from fastsend.integrations import block
    from fastsend.send import delivery, encoding, ledger, transport, writer

    _attribute(block, "prepare_block_event", "block: prepare_block_event (snapshot included)")
    _attribute(jpeg, "_snapshot_of", "snapshot copy")
    _attribute(writer.EventWriter, "submit_prepared", "submit (ledger, admission, hand-off)")
    _attribute(encoding, "to_base64", "JPEG + base64, one image")
    _attribute(encoding, "_encode_pair", "pair + base64 (all)")
    _attribute(pair, "changed_segments", "pair: diff")
    _attribute(pair, "encode_with_restarts", "pair: OpenCV encodes (input whole, patches)")
    _attribute(pair, "_grid", "pair: gather patches")
    _attribute(pair, "_splice", "pair: splice")
    _attribute(encoding, "_request", "body chunks")
    _attribute(aiohttp.http_writer.StreamWriter, "_write", "socket writes (kernel)")
    _attribute(aiohttp.http_writer.StreamWriter, "_writelines", "socket writes (kernel)")
    _attribute(transport, "classify", "classify answer")
    _attribute(ledger.Ledger, "settle", "ledger settle + callbacks")
    _attribute(delivery.Delivery, "_launch", "launch tasks")


def _event_writer_groups() -> None:
    import cv2
    import requests
    import requests.models

    _attribute(cv2, "imencode", "EW: cv2.imencode")
    _attribute(base64, "b64encode", "EW: base64")
    _attribute(requests.models.complexjson, "dumps", "EW: json.dumps")
    _attribute(requests, "post", "EW: requests.post (json.dumps included)")


def _measure(runs: dict[str, tuple[Callable[[int], None], int]], rounds: int, stats: Any = None) -> dict[str, Any]:
    meters = {name: CpuMeter(stats if name.startswith("fastsend") else None) for name in runs}
    spent: dict[str, collections.Counter[tuple[str, str]]] = {name: collections.Counter() for name in runs}
    for run, events in runs.values():  # warm-up
        run(events)
    for _ in range(rounds):
        for name, (run, events) in runs.items():
            _SPENT.clear()
            meters[name].measure(run, events)
            spent[name].update(_SPENT)
    report = {}
    for name, meter in meters.items():
        cpu = meter.report()
        report[name] = {
            "process": round(cpu.process_ms * 1e3),
            "threads": {role: round(ms * 1e3) for role, ms in cpu.by_role_ms.items() if abs(ms) >= 0.005},
            "groups": {f"{t} / {g}": round(s / cpu.events * 1e6) for (t, g), s in sorted(spent[name].items())},
        }
    return report


def engine(scenario: str, rounds: int) -> dict[str, Any]:
    """The Event Writer block, fastsend's block and the bare engine, as ``test_engine_interleaved`` runs them."""
    from benchmarks.engine_support import ENTERPRISE, FASTSEND, TrackedPool, import_inference, sink_workflow

    import_inference()
    from inference.core.workflows.execution_engine.core import ExecutionEngine

    import fastsend.workflows
    from fastsend.config import Settings
    from fastsend.integrations.workflows.event_writer import shared_writer

    _fastsend_groups()
    _event_writer_groups()
    pool, steps = TrackedPool(workers=4), ThreadPoolExecutor(max_workers=4, thread_name_prefix="engine-step")
    parameters = {"workflows_core.thread_pool_executor": pool}
    built = {
        name: ExecutionEngine.init(workflow_definition=sink_workflow(name), init_parameters=parameters, executor=steps)
        for name in (FASTSEND, ENTERPRISE)
    }
    inputs, events = event_inputs(*SIZES[scenario]), 24 if scenario == "1080p" else 64
    with running_receiver() as url:
        writer = shared_writer(url, Settings.one("api_key"), 5)

        def runner(block: str, disable: bool, settle: Callable[[], object]) -> Callable[[int], None]:
            given = {"image": inputs.output_frame, "url": url, "boxes": [inputs.detections], "disable": disable}

            def run(n: int) -> None:
                for _ in range(n):
                    built[block].run(runtime_parameters={**given, "boxes": list(given["boxes"])})
                settle()

            return run

        def event_writer_settled() -> None:
            assert pool.wait() == 0, "an Event Writer post failed"

        def fastsend_settled() -> None:
            assert fastsend.integrations.workflows.flush(timeout=120) == 0, "fastsend events left pending"

        runs = {
            "event-writer": (runner(ENTERPRISE, False, event_writer_settled), events),
            "fastsend": (runner(FASTSEND, False, fastsend_settled), events),
            "engine-only": (runner(FASTSEND, True, lambda: None), events),
        }
        report = _measure(runs, rounds, writer.stats)
    pool.shutdown()
    steps.shutdown()
    return report


def block(rounds: int) -> dict[str, Any]:
    """``EventWriterSink.run()`` flat out in bursts: 1080p, an output drawn over its 1080p input, 640×480."""
    from fastsend import EventWriterSink

    _fastsend_groups()
    big, small = event_inputs(*SIZES["1080p"]), event_inputs(*SIZES["480p"])
    with running_receiver() as url:
        sink = EventWriterSink()
        common = {"event_schema": "quality_check", "qc_result": "fail", "event_ingestion_url": url}
        calls = {
            "fastsend 1080p": (dict(output_image=big.output_frame, object_detections=big.detections), 24),
            "fastsend 1080p drawn": (
                dict(output_image=big.output_frame, input_image=big.input_frame, object_detections=big.detections),
                16,
            ),
            "fastsend 480p": (dict(output_image=small.output_frame, object_detections=small.detections), 48),
        }

        def runner(params: dict[str, Any]) -> Callable[[int], None]:
            def run(n: int) -> None:
                for _ in range(n):
                    sink.run(**params, **common)
                assert sink.flush(120) == 0

            return run

        report = _measure({name: (runner(p), n) for name, (p, n) in calls.items()}, rounds)
        sink.close(60)
    return report


def bare_aiohttp() -> dict[str, int]:
    """Loop-thread CPU per POST of bare aiohttp on uvloop, fastsend's session settings, 4 in flight."""
    import aiohttp
    import uvloop

    async def per_request(url: str, size: int, requests: int = 2000) -> float:
        body, limit = b"x" * size, asyncio.Semaphore(4)
        connector = aiohttp.TCPConnector(limit=4, limit_per_host=4, ttl_dns_cache=300)
        settings = dict(auto_decompress=False, skip_auto_headers=("Accept-Encoding",))
        async with aiohttp.ClientSession(connector=connector, **settings) as session:
            timeout = aiohttp.ClientTimeout(total=5, sock_connect=5)

            async def one() -> None:
                async with limit, session.post(url + "/v2/events", data=body, timeout=timeout) as response:
                    await response.read()

            await asyncio.gather(*(one() for _ in range(100)))
            samples = []
            for _ in range(5):
                started = time.thread_time()
                await asyncio.gather(*(one() for _ in range(requests // 5)))
                samples.append((time.thread_time() - started) / (requests // 5))
            return statistics.median(samples) * 1e6

    with running_receiver() as url:
        return {f"{size} bytes": round(uvloop.run(per_request(url, size))) for size in (1_000, 150_000, 700_000)}


class _InstantTransport:
    """Answers every POST at once with a 201 and hands its body to ``forward``: fastsend's loop without
    the network, while bare aiohttp posts the same bodies on a loop of its own."""

    def __init__(self, forward: Callable[[bytes], None]) -> None:
        self._forward = forward

    async def post(self, request: Any, timeout: float) -> Any:
        from fastsend.results import Outcome

        self._forward(max(request.chunks, key=len))  # the image's base64: fresh, nearly the whole body, not copied
        return Outcome(None, "event created", event_id="instant", status=201)

    async def close(self) -> None:
        pass


class _BareLoop:
    """Bare aiohttp (fastsend's session settings) on a uvloop thread of its own; ``post`` hands it one
    body from another thread, as fastsend's encoders hand their requests to its loop."""

    def __init__(self, url: str) -> None:
        import aiohttp
        import uvloop

        self.loop, self.url = uvloop.new_event_loop(), url + "/v2/events"
        self.timeout = aiohttp.ClientTimeout(total=5, sock_connect=5)
        self.pending = threading.Semaphore(0)
        started = threading.Event()

        def run() -> None:
            async def open_session() -> None:
                connector = aiohttp.TCPConnector(limit=8, limit_per_host=8, ttl_dns_cache=300)
                self.session = aiohttp.ClientSession(
                    connector=connector, auto_decompress=False, skip_auto_headers=("Accept-Encoding",)
                )

            self.loop.run_until_complete(open_session())
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, name="bare-aiohttp", daemon=True)
        self.thread.start()
        started.wait()

    def post(self, body: bytes) -> None:
        self.loop.call_soon_threadsafe(lambda: self.loop.create_task(self._post(body)))

    async def _post(self, body: bytes) -> None:
        async with self.session.post(self.url, data=body, timeout=self.timeout) as response:
            await response.read()
        self.pending.release()

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.session.close(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)


def _cpu_clock(thread: threading.Thread | None) -> int:
    assert thread is not None and thread.ident is not None
    return time.pthread_getcpuclockid(thread.ident)


def loop_in_place(scenario: str, rounds: int) -> dict[str, int]:
    """Loop-thread CPU per event, contenders alternating: fastsend; fastsend with a transport that answers
    at once (its own share: hand-offs, the event's task, the books, the slots); and bare aiohttp posting
    those same bodies from a uvloop thread of its own, handed one by one while fastsend encodes (aiohttp's
    share in place: the same threads busy, a fresh body each time)."""
    import fastsend

    inputs, events = event_inputs(*SIZES[scenario]), 64 if scenario == "480p" else 24
    with running_receiver() as url:
        bare = _BareLoop(url)

        class InstantWriter(fastsend.EventWriter):
            transport_factory = staticmethod(lambda settings: _InstantTransport(bare.post))

        writers = {"fastsend": fastsend.EventWriter(url, api_key="k"), "instant": InstantWriter(url, api_key="k")}
        clocks = {name: _cpu_clock(writer._dispatcher.loop._thread) for name, writer in writers.items()}
        bare_clock = _cpu_clock(bare.thread)
        event = fastsend.Event.custom(value="loop")
        samples: dict[str, list[float]] = {"fastsend": [], "fastsend, no network": [], "bare aiohttp in place": []}

        def burst(name: str) -> tuple[float, float]:
            writer = writers[name]
            started, bare_started = time.clock_gettime(clocks[name]), time.clock_gettime(bare_clock)
            for _ in range(events):
                writer.submit(event, inputs.output_frame, object_detections=inputs.detections)
            assert writer.flush(120) == 0
            if name == "instant":
                for _ in range(events):
                    assert bare.pending.acquire(timeout=120)
            return time.clock_gettime(clocks[name]) - started, time.clock_gettime(bare_clock) - bare_started

        for name in writers:  # warm-up
            burst(name)
        for index in range(rounds):
            for name in writers if index % 2 == 0 else reversed(list(writers)):
                own, bare_spent = burst(name)
                if name == "fastsend":
                    samples["fastsend"].append(own / events)
                else:
                    samples["fastsend, no network"].append(own / events)
                    samples["bare aiohttp in place"].append(bare_spent / events)
        for writer in writers.values():
            writer.close(60)
        bare.close()
    return {name: round(statistics.median(values) * 1e6) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("engine", "block", "aiohttp", "loop"))
    parser.add_argument("scenario", nargs="?", default="1080p", choices=tuple(SIZES))
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    if args.what == "engine":
        report: Any = engine(args.scenario, args.rounds)
    elif args.what == "loop":
        report = loop_in_place(args.scenario, args.rounds)
    elif args.what == "block":
        report = block(args.rounds)
    else:
        report = bare_aiohttp()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
