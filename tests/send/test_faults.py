"""Fault injection: the sender against the reference service while it fails, and the books.

Each scenario runs a writer against the reference service on loopback (in this
process, or as a subprocess where it must be SIGKILLed) while the service is
down, killed, overloaded, slow, or cutting connections, and then checks that
the books balance exactly:

- every submitted event is either stored once at the service, or reported
  failed / dropped with a reason and not stored — never both, never neither;
- an event whose Future says it was spooled is stored once after the drain;
- ``submitted == sent + failed + dropped + spooled`` and ``drained == spooled``;
- no two rows share an ``Idempotency-Key`` and no event is stored twice.

Settings are tight (small frames, sub-second timeouts and deadlines) so each
scenario takes a few seconds.
"""

from __future__ import annotations

import json
import multiprocessing
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
import urllib.request
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.scripted_server import unused_port
from support.service_process import TIMEOUT, python_env, start_service, wait_until

from fastsend import Event, EventWriter, Result
from fastsend.send.spool import Spool, SpoolLockedError
from fastsend.server import Faults, ReferenceService

# Python 3.12 and later warn at every fork of a process that runs threads. Forking while a writer's threads
# run is the case under test: fastsend's at-fork handlers give the child fresh locks, threads and key bytes.
FORK_WITH_THREADS = "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL and flock"),
]

TIGHT: dict[str, Any] = {
    "request_timeout": 0.4,
    "connect_timeout": 0.2,
    "backoff_base": 0.03,
    "backoff_max": 0.2,
    "deadline": 1.0,
    "retries": 1000,  # the deadline, not the attempt count, ends an event's own retries
    "encode_threads": 2,
}
SPOOLED = "spooled, will be sent later"
API_KEY = "fault-suite-api-key-never-on-disk"
FRAME = np.random.default_rng(7).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
DRAIN_SECONDS = 10.0


@pytest.fixture
def writer_defaults(spool_dir: Path) -> dict[str, Any]:
    """TIGHT settings, the spool on (``make_writer(url, spool_dir=None)`` turns it off)."""
    return {**TIGHT, "spool_dir": str(spool_dir)}


# ---------------------------------------------------------------- the books


@dataclass
class Ledger:
    """The events one test submitted, by external id (unique per event)."""

    futures: dict[str, Future[Result]] = field(default_factory=dict)

    def submit(self, writer: EventWriter, prefix: str, count: int, over: float = 0.0, image: Any = FRAME) -> None:
        for number in range(count):
            external_id = f"{prefix}-{number}"
            assert external_id not in self.futures
            self.futures[external_id] = writer.submit(quality_check(external_id), image)
            if over:
                time.sleep(over / count)

    def results(self) -> dict[str, Result]:
        return {external_id: future.result(timeout=TIMEOUT) for external_id, future in self.futures.items()}


@dataclass
class Books:
    sent: set[str]
    spooled: set[str]
    failed: set[str]  # failed or dropped, with a reason
    raced: set[str]  # failed after a timeout that the service did apply (without a spool only)


def quality_check(external_id: str) -> Event:
    return Event.quality_check(result="pass", external_id=external_id)


def rows_of(source: ReferenceService | str) -> list[dict[str, Any]]:
    """Every stored event, from an in-process service or over HTTP from a base URL."""
    if isinstance(source, ReferenceService):
        rows = source.list_events(limit=1000)
        assert source.stored_count() == len(rows)
        return rows
    with urllib.request.urlopen(f"{source}/v2/events?limit=1000", timeout=TIMEOUT) as reply:
        listing = json.loads(reply.read())
    assert listing["total"] == len(listing["events"])
    return listing["events"]


def settle(results: dict[str, Result], rows: list[dict[str, Any]], *, at_most_once: bool = False) -> Books:
    """Match every Future's Result against the stored rows; each event lands in exactly one column.

    ``at_most_once`` (no spool): an event reported failed after a timeout may still have been
    applied by the service; its Result must then say so.
    """
    keys = [row["idempotency_key"] for row in rows]
    assert None not in keys, "a row without its Idempotency-Key"
    assert len(set(keys)) == len(rows), "two rows share an Idempotency-Key"
    stored = Counter(row["event_data"]["externalId"] for row in rows)
    assert not [x for x, times in stored.items() if times > 1], "an event is stored twice"
    assert not set(stored) - set(results), "the service holds events nobody submitted"
    row_by_id = {row["event_data"]["externalId"]: row for row in rows}

    books = Books(set(), set(), set(), set())
    for external_id, result in results.items():
        if not result.error_status:
            assert external_id in row_by_id, f"{external_id}: reported sent, not stored"
            assert row_by_id[external_id]["id"] == result.event_id, f"{external_id}: stored under another id"
            books.sent.add(external_id)
        elif result.message.endswith(SPOOLED):
            assert external_id in row_by_id, f"{external_id}: spooled, never delivered"
            books.spooled.add(external_id)
        else:
            assert result.message and not result.event_id, f"{external_id}: failed without a reason"
            if external_id in row_by_id:
                caveat = "may have applied it" in result.message
                assert at_most_once and caveat, f"{external_id}: reported failed ({result.message}) yet stored"
                books.raced.add(external_id)
            books.failed.add(external_id)
    assert len(rows) == len(books.sent) + len(books.spooled) + len(books.raced)
    return books


def assert_counters(stats: dict[str, Any], books: Books, *, drained_here: bool = True) -> None:
    """The writer's counters say what the Futures said; and its spool ran empty, unless another writer drains it."""
    assert stats["submitted"] == len(books.sent) + len(books.spooled) + len(books.failed)
    assert stats["submitted"] == stats["sent"] + stats["failed"] + stats["dropped"] + stats["spooled"], stats
    assert (stats["sent"], stats["spooled"]) == (len(books.sent), len(books.spooled)), stats
    assert stats["failed"] + stats["dropped"] == len(books.failed), stats
    assert (stats["queued"], stats["in_flight"]) == (0, 0)
    if "spool_pending" in stats:
        assert (stats["spool_evicted"], stats["quarantined"]) == (0, 0), stats
        if drained_here:
            assert (stats["spool_pending"], stats["drained"]) == (0, stats["spooled"]), stats
        else:
            assert (stats["spool_pending"], stats["drained"]) == (stats["spooled"], 0), stats


def drained(writer: EventWriter, timeout: float = DRAIN_SECONDS, *, expect: int | None = None) -> dict[str, Any]:
    """Wait (bounded) until every Future is settled and the spool has been sent; the final stats.

    ``expect``: how many entries the drainer is to send (default: what this writer spooled).
    """
    assert writer.flush(timeout) == 0, writer.stats()

    def empty() -> bool:
        stats = writer.stats()
        return stats["spool_pending"] == 0 and stats["drained"] >= (stats["spooled"] if expect is None else expect)

    assert wait_until(empty, timeout), writer.stats()
    return writer.stats()


def entries(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.event"))


# ---------------------------------------------------------------- outages


def test_service_down_at_start_then_up(tmp_path, spool_dir, make_writer):
    port = unused_port()
    writer = make_writer(f"http://127.0.0.1:{port}", api_key=API_KEY)
    ledger = Ledger()
    ledger.submit(writer, "early", 10)
    # Past their deadline with nobody listening: they go to the spool, without the key.
    assert wait_until(lambda: writer.stats()["spooled"] == 10, 5), writer.stats()
    assert len(entries(spool_dir)) == 10
    assert not [p for p in spool_dir.rglob("*") if p.is_file() and API_KEY.encode() in p.read_bytes()]
    ledger.submit(writer, "waiting", 5)
    time.sleep(0.3)
    with ReferenceService(tmp_path / "service", port=port, api_key=API_KEY) as service:
        ledger.submit(writer, "late", 5)
        stats = drained(writer)
        books = settle(ledger.results(), rows_of(service))
    assert_counters(stats, books)
    assert {f"early-{n}" for n in range(10)} <= books.spooled
    assert {f"late-{n}" for n in range(5)} <= books.sent
    assert not books.failed


def test_service_sigkilled_mid_run_and_restarted(tmp_path, make_writer, processes):
    data_dir = tmp_path / "service"
    process, url = start_service(data_dir)
    processes.append(process)
    port = int(url.rsplit(":", 1)[1])
    writer = make_writer(url)
    ledger = Ledger()
    ledger.submit(writer, "before", 10)
    assert wait_until(lambda: writer.stats()["sent"] == 10, 5), writer.stats()
    ledger.submit(writer, "killed", 10)  # some of these are on the wire when the service dies
    process.send_signal(signal.SIGKILL)
    process.wait(TIMEOUT)
    ledger.submit(writer, "down", 5, over=0.3)
    down = [ledger.futures[f"down-{n}"] for n in range(5)]
    assert wait_until(lambda: all(future.done() for future in down), 5)  # the outage outlives their deadline
    process, url = start_service(data_dir, port)
    processes.append(process)
    ledger.submit(writer, "after", 10)
    stats = drained(writer)
    books = settle(ledger.results(), rows_of(url))
    assert_counters(stats, books)
    assert {f"down-{n}" for n in range(5)} <= books.spooled
    assert not books.failed


# ---------------------------------------------------------------- service-side faults


def test_529_storm_then_calm(tmp_path, make_writer):
    with ReferenceService(tmp_path / "service", faults=Faults(error_rate=1.0, error_status=529)) as service:
        writer = make_writer(service.url, deadline=0.6)
        ledger = Ledger()
        ledger.submit(writer, "storm", 15, over=0.5)
        assert wait_until(lambda: writer.stats()["spooled"] == 15, 5), writer.stats()
        assert service.stored_count() == 0
        service.set_faults(None)
        ledger.submit(writer, "calm", 5)
        stats = drained(writer)
        books = settle(ledger.results(), rows_of(service))
    assert_counters(stats, books)
    assert books.spooled == {f"storm-{n}" for n in range(15)}
    assert stats["retried"] > 0 and not books.failed


def test_half_the_requests_answered_503(tmp_path, make_writer):
    faults = Faults(error_rate=0.5, error_status=503, seed=20261126)
    with ReferenceService(tmp_path / "service", faults=faults) as service:
        writer = make_writer(service.url, deadline=1.5)
        ledger = Ledger()
        ledger.submit(writer, "flaky", 40, over=0.4)
        stats = drained(writer)  # the drainer meets the same 503s
        books = settle(ledger.results(), rows_of(service))
    assert_counters(stats, books)
    assert len(books.sent) + len(books.spooled) == 40 and not books.failed
    assert stats["retried"] >= 5


def test_latency_past_the_request_timeout(tmp_path, make_writer):
    # Each timed-out attempt is still applied by the service after its latency: the retries
    # (and the drain) carry the same Idempotency-Key, so each event is stored once.
    with ReferenceService(tmp_path / "service", faults=Faults(latency=0.6)) as service:
        writer = make_writer(service.url, request_timeout=0.25, deadline=0.9)
        ledger = Ledger()
        ledger.submit(writer, "slow", 10, over=0.2)
        assert wait_until(lambda: writer.stats()["spooled"] == 10, 5), writer.stats()
        assert wait_until(lambda: service.stored_count() == 10, 5)  # applied although every attempt timed out
        service.set_faults(None)
        ledger.submit(writer, "quick", 5)
        stats = drained(writer)
        books = settle(ledger.results(), rows_of(service))
    assert_counters(stats, books)
    assert books.spooled == {f"slow-{n}" for n in range(10)}
    assert stats["failed_by_cause"] == {} and stats["retried"] >= 10


def test_connections_reset_mid_body(tmp_path, make_writer):
    image = np.random.default_rng(3).integers(0, 256, size=(96, 96, 3), dtype=np.uint8)  # a body of several packets
    with ReferenceService(tmp_path / "service", faults=Faults(drop_rate=1.0)) as service:
        writer = make_writer(service.url, deadline=0.6)
        ledger = Ledger()
        ledger.submit(writer, "cut", 8, image=image)
        assert wait_until(lambda: writer.stats()["spooled"] == 8, 5), writer.stats()
        service.set_faults(Faults(drop_rate=0.5, seed=5))
        ledger.submit(writer, "half", 12, over=0.3, image=image)
        assert writer.flush(5) == 0
        service.set_faults(None)
        stats = drained(writer)
        books = settle(ledger.results(), rows_of(service))
    assert_counters(stats, books)
    assert {f"cut-{n}" for n in range(8)} <= books.spooled and not books.failed


# ---------------------------------------------------------------- without a spool: at most once


def test_without_a_spool_given_up_events_fail_with_a_reason_and_are_not_stored(tmp_path, make_writer):
    with ReferenceService(tmp_path / "service", faults=Faults(error_rate=1.0, error_status=529)) as service:
        writer = make_writer(service.url, spool_dir=None, deadline=0.5)
        ledger = Ledger()
        ledger.submit(writer, "storm", 10, over=0.2)
        assert writer.flush(5) == 0
        service.set_faults(None)
        ledger.submit(writer, "calm", 5)
        assert writer.flush(5) == 0
        stats = writer.stats()
        results = ledger.results()
        books = settle(results, rows_of(service), at_most_once=True)
    assert_counters(stats, books)
    assert books.failed == {f"storm-{n}" for n in range(10)}
    assert books.sent == {f"calm-{n}" for n in range(5)} and not books.spooled
    # The last attempt may get only a sliver of the deadline and time out instead; the service may
    # then still apply it once the storm is over (books.raced), and that Result says it may have.
    assert set(stats["failed_by_cause"]) <= {"http_529", "timeout"} and stats["failed_by_cause"]["http_529"] >= 5
    assert all("529" in results[x].message or "timed out" in results[x].message for x in books.failed)


# ---------------------------------------------------------------- overflow, close, memory


def test_spill_with_a_slow_service_spools_instead_of_dropping(tmp_path, make_writer):
    with ReferenceService(tmp_path / "service", faults=Faults(latency=0.3)) as service:
        writer = make_writer(
            service.url, overflow="spill", queue_size=2, max_in_flight=2, request_timeout=2.0, deadline=5.0
        )
        ledger = Ledger()
        ledger.submit(writer, "burst", 20)
        assert writer.stats()["spooled"] >= 10  # pushed out of the tiny queue, onto the disk
        assert writer.flush(5) == 0
        service.set_faults(None)
        stats = drained(writer)
        books = settle(ledger.results(), rows_of(service))
    assert_counters(stats, books)
    assert stats["dropped"] == 0 and len(books.sent) + len(books.spooled) == 20


@pytest.mark.parametrize("service_state", ["down", "slow"])
def test_close_spools_what_is_queued_and_the_next_writer_delivers_it(tmp_path, spool_dir, make_writer, service_state):
    port = unused_port()
    service = ReferenceService(tmp_path / "service", port=port, faults=Faults(latency=0.5))
    if service_state == "slow":  # requests on the wire at close() may already be applied
        service.start()
    try:
        first = make_writer(
            f"http://127.0.0.1:{port}", max_in_flight=2, queue_size=64, request_timeout=2.0, deadline=10.0
        )
        ledger = Ledger()
        ledger.submit(first, "queued", 12)
        time.sleep(0.1)
        spooled_before_close = first.stats()["spooled"]  # an unreachable service sends events to the spool at once
        # close() counts what it spooled itself; events meeting a refused connection meanwhile spool on their own.
        assert 0 <= first.close(timeout=0.1) <= first.stats()["spooled"] - spooled_before_close
        first_stats = first.stats()
        assert first_stats["spooled"] + first_stats["sent"] == 12 and first_stats["spooled"] >= 10
        assert len(entries(spool_dir)) == first_stats["spooled"]
        results = ledger.results()  # every Future was settled by close()

        if service_state == "down":
            service.start()
        service.set_faults(None)
        second = make_writer(f"http://127.0.0.1:{port}")
        stats = drained(second, expect=first_stats["spooled"])
        books = settle(results, rows_of(service))
    finally:
        service.stop()
    assert_counters(first_stats, books, drained_here=False)
    assert stats["drained"] == first_stats["spooled"] and stats["submitted"] == 0
    assert not books.failed and entries(spool_dir) == []


def test_memory_stays_bounded_through_a_storm(tmp_path, make_writer):
    # 150 frames of 192 KiB (28 MiB) submitted into a 1 MiB queue during a 529 storm; spilled
    # and given-up events go to disk, so the heap holds about one queue's worth at a time.
    frame = np.random.default_rng(11).integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    bound = 8 * 2**20
    with ReferenceService(tmp_path / "service", faults=Faults(error_rate=1.0, error_status=529)) as service:
        writer = make_writer(
            service.url,
            overflow="spill",
            queue_size=8,
            queue_bytes=2**20,
            max_in_flight=4,
            deadline=0.3,
            jpeg_quality=50,
        )
        ledger = Ledger()
        ledger.submit(writer, "warm", 4, image=frame)
        assert writer.flush(5) == 0
        tracemalloc.start()
        try:
            baseline, _ = tracemalloc.get_traced_memory()
            ledger.submit(writer, "storm", 150, image=frame)
            assert writer.flush(10) == 0
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        service.set_faults(None)
        stats = drained(writer, timeout=15)
        books = settle(ledger.results(), rows_of(service))
    assert peak - baseline < bound, f"peak {(peak - baseline) / 2**20:.1f} MiB over the baseline"
    assert_counters(stats, books)
    assert len(books.spooled) + len(books.sent) == 154 and stats["dropped"] == 0


# ---------------------------------------------------------------- the sending process dies


SENDER = textwrap.dedent(
    """
    import atexit, os, signal, sys, time

    state = {}

    @atexit.register  # registered before fastsend's handler, so it runs after the exit flush
    def report():
        if "exit" in state:
            stats = state["exit"].stats()
            print("exit", stats["spooled"], stats["failed"] + stats["dropped"], stats["submitted"], flush=True)

    import numpy as np
    from fastsend import Event, EventWriter

    mode, url, spool_dir, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    settings = dict(spool_dir=spool_dir, request_timeout=0.3, connect_timeout=0.1, deadline=0.3,
                    retries=1000, backoff_base=0.02, backoff_max=0.05)
    if mode == "exit":  # some give up during the exit flush, the rest are still queued when it ends
        settings.update(deadline=0.5, max_in_flight=2, exit_flush_timeout=0.7)
    writer = EventWriter(url, **settings)
    frame = np.random.default_rng(7).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    for number in range(count):
        writer.submit(Event.quality_check(result="pass", external_id=f"{mode}-{number}"), frame)
    if mode == "exit":
        state["exit"] = writer
        sys.exit(0)  # no close(): interpreter exit must spool what is left
    for _ in range(1000):
        if writer.stats()["spooled"] == count:
            break
        time.sleep(0.01)
    print(mode, writer.stats()["spooled"], flush=True)
    if mode == "spool":
        os.kill(os.getpid(), signal.SIGKILL)  # no close(), no atexit: the spool is all that is left
    time.sleep(60)  # draining until the test kills it
    """
)


def run_sender(tmp_path: Path, mode: str, url: str, spool_dir: Path, count: int) -> tuple[subprocess.Popen[str], str]:
    script = tmp_path / "sender.py"
    script.write_text(SENDER)
    process = subprocess.Popen(
        [sys.executable, str(script), mode, url, str(spool_dir), str(count)],
        stdout=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], TIMEOUT)
    return process, process.stdout.readline().strip() if readable else ""


def test_sender_sigkilled_with_a_full_spool_then_new_processes_deliver_exactly_once(tmp_path, spool_dir, processes):
    count = 15
    port = unused_port()
    url = f"http://127.0.0.1:{port}"

    # 1. A sender with nobody to talk to spools everything and is killed.
    process, line = run_sender(tmp_path, "spool", url, spool_dir, count)
    processes.append(process)
    assert line == f"spool {count}"
    assert process.wait(TIMEOUT) == -signal.SIGKILL
    assert len(entries(spool_dir)) == count and not list(spool_dir.glob(".tmp-*"))

    with ReferenceService(tmp_path / "service", port=port, faults=Faults(latency=0.05)) as service:
        # 2. A new process drains part of it, holding the lock while it runs, and is killed too.
        process, line = run_sender(tmp_path, "drain", url, spool_dir, 0)
        processes.append(process)
        assert line == "drain 0"
        with pytest.raises(SpoolLockedError, match=str(process.pid)):
            EventWriter(url, spool_dir=str(spool_dir))
        assert wait_until(lambda: service.stored_count() >= 3, 10)
        process.send_signal(signal.SIGKILL)
        assert process.wait(TIMEOUT) == -signal.SIGKILL
        left = len(entries(spool_dir))
        assert 0 < left < count

        # 3. A writer here finishes the job; a stored-but-not-removed entry is answered with its first id.
        service.set_faults(None)
        writer = EventWriter(url, spool_dir=str(spool_dir), **{k: TIGHT[k] for k in ("backoff_base", "backoff_max")})
        try:
            assert wait_until(lambda: writer.stats()["spool_pending"] == 0 and writer.stats()["drained"] == left, 10)
            stats = writer.stats()
        finally:
            writer.close(timeout=1)
        rows = rows_of(service)
    assert (stats["submitted"], stats["drained"], stats["quarantined"], stats["spool_evicted"]) == (0, left, 0, 0)
    assert sorted(row["event_data"]["externalId"] for row in rows) == sorted(f"spool-{n}" for n in range(count))
    assert len({row["idempotency_key"] for row in rows}) == count
    assert entries(spool_dir) == []


def test_concurrent_submitters_through_an_outage_balance(tmp_path, make_writer):
    port = unused_port()
    writer = make_writer(f"http://127.0.0.1:{port}", deadline=0.5)
    ledger = Ledger()

    def submit_from_thread(prefix: str) -> None:
        for number in range(10):
            external_id = f"{prefix}-{number}"
            ledger.futures[external_id] = writer.submit(quality_check(external_id), FRAME)
            time.sleep(0.05)

    threads = [threading.Thread(target=submit_from_thread, args=(f"thread{t}",)) for t in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    with ReferenceService(tmp_path / "service", port=port) as service:
        for thread in threads:
            thread.join(TIMEOUT)
        stats = drained(writer)
        books = settle(ledger.results(), rows_of(service))
    assert_counters(stats, books)
    assert len(books.sent) + len(books.spooled) == 40 and not books.failed


def test_events_left_at_interpreter_exit_are_spooled_and_delivered_by_the_next_writer(tmp_path, spool_dir, processes):
    count = 10
    port = unused_port()
    url = f"http://127.0.0.1:{port}"
    process, line = run_sender(tmp_path, "exit", url, spool_dir, count)
    processes.append(process)
    assert process.wait(TIMEOUT) == 0
    assert line == f"exit {count} 0 {count}"  # all spooled, none failed: not even those whose deadline passed at exit
    assert len(entries(spool_dir)) == count

    with ReferenceService(tmp_path / "service", port=port) as service:
        writer = EventWriter(url, spool_dir=str(spool_dir), **{k: TIGHT[k] for k in ("backoff_base", "backoff_max")})
        try:
            assert wait_until(lambda: writer.stats()["spool_pending"] == 0 and writer.stats()["drained"] == count, 10)
        finally:
            writer.close(timeout=1)
        rows = rows_of(service)
    assert sorted(row["event_data"]["externalId"] for row in rows) == sorted(f"exit-{n}" for n in range(count))
    assert len({row["idempotency_key"] for row in rows}) == count


# ---------------------------------------------------------------- rejections, eviction, fork


def test_permanent_rejections_fail_with_the_detail_and_are_not_spooled(tmp_path, spool_dir, make_writer):
    large = np.random.default_rng(5).integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
    with ReferenceService(tmp_path / "service", max_body_bytes=20_000) as service:
        writer = make_writer(service.url)
        ledger = Ledger()
        ledger.submit(writer, "small", 5)
        ledger.submit(writer, "large", 5, image=large)
        stats = drained(writer)
        results = ledger.results()
        books = settle(results, rows_of(service))
    assert_counters(stats, books)
    assert books.failed == {f"large-{n}" for n in range(5)} and not books.spooled
    assert all("HTTP 413" in results[x].message and "20000 bytes" in results[x].message for x in books.failed)
    assert stats["failed_by_cause"] == {"http_413": 5} and entries(spool_dir) == []


def test_entry_rejected_at_drain_is_quarantined_not_retried(tmp_path, spool_dir, make_writer):
    port = unused_port()
    large = np.random.default_rng(5).integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
    writer = make_writer(f"http://127.0.0.1:{port}", deadline=0.3)
    ledger = Ledger()
    ledger.submit(writer, "small", 3)
    ledger.submit(writer, "large", 2, image=large)
    assert wait_until(lambda: writer.stats()["spooled"] == 5, 5), writer.stats()
    with ReferenceService(tmp_path / "service", port=port, max_body_bytes=20_000) as service:

        def settled() -> bool:
            stats = writer.stats()
            return (stats["spool_pending"], stats["drained"], stats["quarantined"]) == (0, 3, 2)

        assert wait_until(settled, DRAIN_SECONDS), writer.stats()
        time.sleep(0.3)  # a drainer that retried a rejected entry would be sending it again by now
        stats = writer.stats()
        rows = rows_of(service)
    assert sorted(row["event_data"]["externalId"] for row in rows) == ["small-0", "small-1", "small-2"]
    assert (stats["spooled"], stats["drained"], stats["quarantined"]) == (5, 3, 2)
    assert len(list((spool_dir / "quarantine").glob("*.event"))) == 2


def test_spool_full_during_an_outage_evicts_the_oldest_and_counts_them(tmp_path, spool_dir, make_writer):
    port = unused_port()
    probe = make_writer(f"http://127.0.0.1:{port}", spool_dir=str(tmp_path / "probe"), deadline=0.1)
    probe.submit(quality_check("old-99"), FRAME).result(TIMEOUT)
    entry_size = probe.stats()["spool_bytes"]  # the size of one of the entries below
    probe.close(timeout=0)
    writer = make_writer(
        f"http://127.0.0.1:{port}", deadline=0.3, backoff_max=0.05, spool_max_bytes=int(entry_size * 5.5)
    )
    ledger = Ledger()
    ledger.submit(writer, "old", 12, over=1.2)  # spaced, so they reach the spool in submission order
    assert wait_until(lambda: writer.stats()["spooled"] == 12, 5), writer.stats()
    with ReferenceService(tmp_path / "service", port=port) as service:
        assert wait_until(lambda: writer.stats()["spool_pending"] == 0 and writer.stats()["drained"] == 5, 10)
        stats = writer.stats()
        rows = rows_of(service)
    results = ledger.results()
    assert all(result.message.endswith(SPOOLED) for result in results.values())
    assert len(rows) == 5 and {row["event_data"]["externalId"] for row in rows} == {f"old-{n}" for n in range(7, 12)}
    assert (stats["spooled"], stats["drained"], stats["spool_evicted"], stats["spool_pending"]) == (12, 5, 7, 0)


def _child_closes_its_copy(writer: EventWriter, results: Any) -> None:
    try:
        has_spool = "spool_pending" in writer.stats()
        result = writer.submit(quality_check("child"), FRAME).result(TIMEOUT)
        writer.close(1)
        results.put((has_spool, result.error_status, result.message.endswith(SPOOLED)))
    except BaseException as exc:  # noqa: BLE001 - report it, do not hang the parent
        results.put(("error", repr(exc)))


@pytest.mark.filterwarnings(FORK_WITH_THREADS)
def test_forked_child_neither_drains_nor_unlocks_the_parents_spool(tmp_path, spool_dir, make_writer):
    port = unused_port()
    writer = make_writer(f"http://127.0.0.1:{port}", deadline=0.3)
    ledger = Ledger()
    ledger.submit(writer, "parent", 3)
    assert wait_until(lambda: writer.stats()["spooled"] == 3, 5), writer.stats()
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_child_closes_its_copy, args=(writer, results))
    child.start()
    try:
        outcome = results.get(timeout=TIMEOUT)
    finally:
        child.join(TIMEOUT)
    assert outcome == (False, True, False), outcome  # the child sent without the spool, and closed
    with pytest.raises(SpoolLockedError):  # the parent still holds the directory
        Spool(spool_dir, 1 << 20)
    assert len(entries(spool_dir)) == 3
    with ReferenceService(tmp_path / "service", port=port) as service:
        stats = drained(writer)
        books = settle(ledger.results(), rows_of(service))
    assert_counters(stats, books)
    assert books.spooled == {"parent-0", "parent-1", "parent-2"}


def test_a_disk_error_while_draining_does_not_stop_the_drain(tmp_path, spool_dir, make_writer, monkeypatch, caplog):
    port = unused_port()
    writer = make_writer(f"http://127.0.0.1:{port}", deadline=0.3)
    ledger = Ledger()
    ledger.submit(writer, "spooled", 3)
    assert wait_until(lambda: writer.stats()["spooled"] == 3, 5), writer.stats()
    real_remove, failures = Spool.remove, []

    def remove_failing_once(spool: Spool, entry: Any, removed: Any) -> None:
        if not failures:
            failures.append(entry)
            raise PermissionError(13, "Permission denied", str(spool.directory / entry.name))
        real_remove(spool, entry, removed)

    monkeypatch.setattr(Spool, "remove", remove_failing_once)
    with ReferenceService(tmp_path / "service", port=port) as service:
        stats = drained(writer)
        books = settle(ledger.results(), rows_of(service))
    assert_counters(stats, books)  # the entry it could not remove was sent again: the same id, one row
    assert len(failures) == 1 and "Permission denied" in caplog.text
