"""Nothing lost under pressure: the sender with a spool when the queue, the service or the disk gives out.

Each scenario pushes a writer (in this process, in a forked worker, or in a sender
subprocess) past one of its limits and then checks the books:

- every submitted event is stored once at the service, or reported failed or
  dropped with a reason and not stored, or counted evicted from a full spool;
- ``submitted == sent + failed + dropped + spooled + cancelled + pending``, with
  nothing pending at the end;
- no two rows share an ``Idempotency-Key`` and no event is stored twice.

The service runs on loopback: ``ReferenceService`` in this process (started on a
fixed port once the outage is over), ``ScriptedServer`` where each answer is
chosen per request, or a small HTTPS endpoint with a certificate of its own. The
small-disk cases mount a 4 MiB tmpfs, and are skipped where mounting is not
allowed (it needs root). Settings are tight so that each scenario takes a few seconds.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import multiprocessing
import multiprocessing.util
import os
import queue
import shutil
import signal
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trustme
from aiohttp import web
from support.scripted_server import Received, Reply, ScriptedServer, unused_port
from support.service_process import TIMEOUT, python_env, wait_until
from test_faults import FRAME, SPOOLED, TIGHT, Ledger, entries, quality_check, rows_of, settle

import fastsend.send.spool
from fastsend import EventWriter, EventWriterSink
from fastsend.send.spool import Spool
from fastsend.send.wire import Request
from fastsend.server import Faults, ReferenceService

# Python 3.12 and later warn at every fork of a process that runs threads. Forking while a writer's threads
# run is the case under test: fastsend's at-fork handlers give the child fresh locks, threads and key bytes.
FORK_WITH_THREADS = "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform != "linux", reason="needs fork, SIGKILL, flock and tmpfs"),
]

DRAIN_SECONDS = 15.0
# A frame of noise whose spool entry is about 230 KB: a 4 MiB disk holds about fifteen of them.
LARGE_FRAME = np.random.default_rng(23).integers(0, 256, size=(384, 384, 3), dtype=np.uint8)
SMALL_DISK = "4m"

WriterFactory = Callable[..., EventWriter]


@pytest.fixture
def writer_defaults(spool_dir: Path) -> dict[str, Any]:
    """TIGHT settings and the spool on."""
    return {**TIGHT, "spool_dir": str(spool_dir)}


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted for the test (skipped where mounting is not allowed); unmounted after it."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    command = ["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(mount_point)]
    try:
        mounted = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True, timeout=TIMEOUT).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=TIMEOUT)


# ---------------------------------------------------------------- the books


def assert_balanced(stats: dict[str, Any]) -> None:
    """The writer's own books add up, with nothing left pending."""
    outcomes = ("sent", "failed", "dropped", "spooled", "cancelled", "pending")
    assert stats["submitted"] == sum(stats[name] for name in outcomes), stats
    assert (stats["pending"], stats["queued"], stats["in_flight"]) == (0, 0, 0), stats


def stored_once(rows: list[dict[str, Any]]) -> set[str]:
    """The external ids of the stored rows, after checking that none is stored twice."""
    keys = [row["idempotency_key"] for row in rows]
    assert None not in keys and len(set(keys)) == len(keys), "two rows share an Idempotency-Key"
    stored = Counter(row["event_data"]["externalId"] for row in rows)
    assert not [x for x, times in stored.items() if times > 1], f"stored twice: {stored.most_common(3)}"
    return set(stored)


def drain_all(writer: EventWriter, expect: int) -> dict[str, Any]:
    """``drain()`` to zero, then the stats once the drainer has counted its ``expect`` sends."""
    assert writer.drain(DRAIN_SECONDS) == 0, writer.stats()
    assert wait_until(lambda: writer.stats()["drained"] >= expect, TIMEOUT), writer.stats()
    return writer.stats()


def spool_files(directory: Path) -> list[Path]:
    return [path for path in directory.rglob("*") if path.is_file()]


class LineReader:
    """A subprocess's stdout, line by line, read on a thread so that every wait is bounded."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        self._stream = process.stdout
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self._stream:
            self._lines.put(line.strip())
        self._lines.put(None)

    def next(self, timeout: float = TIMEOUT) -> str | None:
        """The next line; None at the end of the stream or after ``timeout`` seconds."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def rest(self) -> list[str]:
        """Every line still to come, once the process has ended."""
        self._thread.join(TIMEOUT)
        lines = []
        while (line := self.next(timeout=0)) is not None:
            lines.append(line)
        return lines


def run_script(
    tmp_path: Path, name: str, source: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    script = tmp_path / name
    script.write_text(source)
    return subprocess.Popen(
        [sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True, env={**python_env(), **(env or {})}
    )


# ---------------------------------------------------------------- 1. a burst while the service is down


def test_a_burst_larger_than_the_queue_while_the_service_is_down_is_spilled_then_stored_once(
    tmp_path: Path, spool_dir: Path, make_writer: WriterFactory
) -> None:
    port = unused_port()
    # overflow unset: with a spool a full queue spills. A long deadline: an unreachable service
    # must cost each event its slot at once (it goes to the spool), not its 30 s deadline.
    writer = make_writer(f"http://127.0.0.1:{port}", queue_size=8, max_in_flight=2, deadline=30.0)
    assert writer.settings.overflow == "spill"
    ledger = Ledger()
    ledger.submit(writer, "burst", 60)
    assert writer.flush(DRAIN_SECONDS) == 0, writer.stats()  # 60 events × 30 s over 2 slots if they kept them
    outage = writer.stats()
    assert (outage["spooled"], outage["dropped"], outage["failed"]) == (60, 0, 0), outage
    spilled = [result.message for result in ledger.results().values() if "queue full" in result.message]
    assert spilled and all("(spill)" in message and message.endswith(SPOOLED) for message in spilled)  # it overflowed
    assert len(entries(spool_dir)) == 60

    with ReferenceService(tmp_path / "service", port=port) as service:
        ledger.submit(writer, "fresh", 5)  # the service is back: fresh events go out while the spool drains
        stats = drain_all(writer, 60)
        books = settle(ledger.results(), rows_of(service))
    assert_balanced(stats)
    assert books.spooled == {f"burst-{n}" for n in range(60)}
    assert books.sent == {f"fresh-{n}" for n in range(5)} and not books.failed
    assert (stats["drained"], stats["spool_pending"], stats["spool_evicted"], stats["dropped"]) == (60, 0, 0, 0)
    assert entries(spool_dir) == []


# ---------------------------------------------------------------- 2. a new key and timeout drain the old spool


SINK_SENDER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    import numpy as np
    from fastsend import EventWriterSink

    url, spool_dir, prefix, count, request_timeout, wait_for_empty = sys.argv[1:]
    sink = EventWriterSink(spool_dir=spool_dir, connect_timeout=0.2, backoff_base=0.03, backoff_max=0.2,
                           deadline=5.0, retries=1000)
    frame = np.random.default_rng(7).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    results = {}
    for number in range(int(count)):
        external_id = f"{prefix}-{number}"
        results[external_id] = sink.run(
            event_schema="quality_check", output_image=frame, qc_result="pass", external_id=external_id,
            event_ingestion_url=url, fire_and_forget=False, request_timeout=float(request_timeout),
        )
    for _ in range(500):  # bounded: 10 s for the writer to drain what an earlier process spooled
        if wait_for_empty == "no" or not list(Path(spool_dir).glob("*/*.event")):
            break
        time.sleep(0.02)
    left = sink.close(timeout=2)
    print(json.dumps({"results": results, "left": left}), flush=True)
    """
)


def run_sink_sender(
    tmp_path: Path,
    url: str,
    spool_dir: Path,
    prefix: str,
    count: int,
    *,
    api_key: str,
    request_timeout: float,
    wait: bool,
) -> dict[str, Any]:
    process = run_script(
        tmp_path,
        "sink_sender.py",
        SINK_SENDER,
        url,
        str(spool_dir),
        prefix,
        str(count),
        str(request_timeout),
        "yes" if wait else "no",
        env={"EVENT_INGESTION_API_KEY": api_key},
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
    assert process.returncode == 0, output
    report: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return report


def test_entries_spooled_under_an_old_key_and_timeout_are_drained_by_the_next_process_with_its_own(
    tmp_path: Path,
) -> None:
    old_key, new_key = "old-key-that-was-rotated-out", "new-key-the-service-wants"
    port = unused_port()
    url = f"http://127.0.0.1:{port}"
    spool_root = tmp_path / "sink-spool"

    first = run_sink_sender(tmp_path, url, spool_root, "first", 8, api_key=old_key, request_timeout=0.5, wait=False)
    assert all(r["error_status"] and r["message"].endswith(SPOOLED) for r in first["results"].values()), first
    (spool_dir,) = [path for path in spool_root.iterdir() if path.is_dir()]
    assert len(entries(spool_dir)) == 8
    assert not [p for p in spool_files(spool_root) if old_key.encode() in p.read_bytes()], "the API key is on disk"

    with ReferenceService(tmp_path / "service", port=port, api_key=new_key) as service:
        second = run_sink_sender(
            tmp_path, url, spool_root, "second", 2, api_key=new_key, request_timeout=2.0, wait=True
        )
        rows = rows_of(service)
    assert all(not r["error_status"] and r["event_id"] for r in second["results"].values()), second
    assert stored_once(rows) == {f"first-{n}" for n in range(8)} | {"second-0", "second-1"}
    # One directory for the URL, whatever the key or the timeout; drained empty, and neither key on disk.
    assert [path for path in spool_root.iterdir() if path.is_dir()] == [spool_dir]
    assert entries(spool_dir) == [] and not list(spool_dir.glob("quarantine/*"))
    keys_on_disk = [
        p for p in spool_files(spool_root) if old_key.encode() in p.read_bytes() or new_key.encode() in p.read_bytes()
    ]
    assert not keys_on_disk


def test_a_sink_whose_key_changes_hands_its_spool_to_the_new_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_key, new_key = "sink-key-before", "sink-key-after"
    port = unused_port()
    url = f"http://127.0.0.1:{port}"
    sink = EventWriterSink(spool_dir=str(tmp_path / "sink-spool"), **TIGHT)
    call: dict[str, Any] = {
        "event_schema": "quality_check",
        "output_image": FRAME,
        "qc_result": "pass",
        "event_ingestion_url": url,
        "fire_and_forget": False,
    }
    try:
        monkeypatch.setenv("EVENT_INGESTION_API_KEY", old_key)
        before = [sink.run(external_id=f"before-{n}", request_timeout=0.4, **call) for n in range(4)]
        assert all(result["message"].endswith(SPOOLED) for result in before), before
        with ReferenceService(tmp_path / "service", port=port, api_key=new_key) as service:
            monkeypatch.setenv("EVENT_INGESTION_API_KEY", new_key)
            after = sink.run(external_id="after-0", request_timeout=1.5, **call)  # a new writer, on the same spool
            assert not after["error_status"], after
            assert wait_until(lambda: service.stored_count() == 5, DRAIN_SECONDS), service.stored_count()
            rows = rows_of(service)
    finally:
        sink.close(timeout=1)
    assert stored_once(rows) == {f"before-{n}" for n in range(4)} | {"after-0"}
    assert not [p for p in spool_files(tmp_path / "sink-spool") if old_key.encode() in p.read_bytes()]


# ---------------------------------------------------------------- 3. the sender is SIGKILLed mid-burst


KILLED_SENDER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from fastsend import Event, EventWriter

    url, spool_dir = sys.argv[1:]
    writer = EventWriter(url, spool_dir=spool_dir, request_timeout=0.3, connect_timeout=0.1, deadline=5.0,
                         retries=1000, backoff_base=0.02, backoff_max=0.05, queue_size=8, max_in_flight=2)
    frame = np.random.default_rng(7).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    waiting = {}
    for number in range(5000):  # far more than the test lets it submit: it is killed mid-burst
        external_id = f"killed-{number}"
        waiting[external_id] = writer.submit(Event.quality_check(result="pass", external_id=external_id), frame)
        for done in [x for x, future in waiting.items() if future.done()]:
            result = waiting.pop(done).result()
            print("spooled" if result.spooled else "other", done, result.message, flush=True)
        time.sleep(0.002)
    """
)


def test_a_sender_killed_mid_burst_loses_nothing_it_reported_spooled(
    tmp_path: Path, spool_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    port = unused_port()
    url = f"http://127.0.0.1:{port}"
    process = run_script(tmp_path, "killed_sender.py", KILLED_SENDER, url, str(spool_dir))
    processes.append(process)
    reader = LineReader(process)
    lines: list[str] = []
    for _ in range(10_000):  # bounded: each wait is bounded too
        line = reader.next()
        assert line is not None, f"the sender stopped early: {lines[-3:]}"
        lines.append(line)
        if sum(entry.startswith("spooled ") for entry in lines) >= 40:
            break
    process.send_signal(signal.SIGKILL)
    assert process.wait(TIMEOUT) == -signal.SIGKILL
    lines += reader.rest()  # printed before the kill, read after it
    reported = {line.split()[1] for line in lines if line.startswith("spooled ")}
    assert not [line for line in lines if not line.startswith("spooled ")], lines  # no other outcome while down
    assert len(reported) >= 40 and len(entries(spool_dir)) >= len(reported)

    with ReferenceService(tmp_path / "service", port=port) as service:
        writer = EventWriter(url, spool_dir=str(spool_dir), backoff_base=0.03, backoff_max=0.2)
        try:
            on_disk = writer.stats()["spool_pending"]  # complete entries; a half-written one is deleted at open
            assert not list(spool_dir.glob(".tmp-*"))
            stats = drain_all(writer, on_disk)
        finally:
            writer.close(timeout=1)
        rows = rows_of(service)
    stored = stored_once(rows)
    assert reported <= stored, sorted(reported - stored)[:5]
    assert stored <= {f"killed-{n}" for n in range(5000)}
    assert len(stored) == on_disk == stats["drained"] and (stats["quarantined"], stats["spool_evicted"]) == (0, 0)


# ---------------------------------------------------------------- 4. the spool's disk fills up


def test_a_spool_on_a_small_disk_evicts_the_oldest_and_accounts_for_every_event(
    tmp_path: Path, small_disk: Path
) -> None:
    count = 30  # about 7 MB of entries on a 4 MiB disk
    port = unused_port()
    url = f"http://127.0.0.1:{port}"
    spool_dir = small_disk / "spool"
    # One slot: events reach the spool one at a time, in submission order.
    writer = EventWriter(url, **{**TIGHT, "spool_dir": str(spool_dir), "max_in_flight": 1})
    try:
        ledger = Ledger()
        ledger.submit(writer, "large", count, image=LARGE_FRAME)
        assert writer.flush(DRAIN_SECONDS) == 0, writer.stats()
        outage = writer.stats()
        results = ledger.results()
        spooled = {x for x, result in results.items() if result.spooled and result.message.endswith(SPOOLED)}
        failed = {x for x, result in results.items() if not result.spooled}
        assert len(spooled) + len(failed) == count
        assert all(results[x].error_status and "spool write failed" in results[x].message for x in failed)
        failures = outage["failed_by_cause"].get("spool_write_failed", 0)
        assert (outage["failed"], outage["spool_write_failures"], outage["dropped"]) == (failures, failures, 0), outage
        assert outage["spooled"] == len(spooled) and outage["spool_evicted"] > 0, outage
        assert outage["spooled"] == outage["spool_pending"] + outage["spool_evicted"], outage
        # The bound follows the free space: the oldest are evicted, the newest are not failed.
        assert failures == 0, f"{failures} events failed to spool instead of evicting older ones"
        kept = outage["spool_pending"]
        assert len(entries(spool_dir)) == kept

        with ReferenceService(tmp_path / "service", port=port) as service:
            stats = drain_all(writer, kept)
            rows = rows_of(service)
    finally:
        writer.close(timeout=1)
    assert_balanced(stats)
    stored = stored_once(rows)
    assert stored <= spooled and len(stored) == kept == stats["drained"]
    assert stored == {f"large-{n}" for n in range(count - kept, count)}  # the newest ones
    assert entries(spool_dir) == []


def test_a_spool_write_that_finds_no_room_fails_the_event_with_its_cause(tmp_path: Path, small_disk: Path) -> None:
    port = unused_port()
    url = f"http://127.0.0.1:{port}"
    spool_dir = small_disk / "spool"
    writer = EventWriter(url, **{**TIGHT, "spool_dir": str(spool_dir), "max_in_flight": 1})
    filler = small_disk / "filler"
    try:
        free = shutil.disk_usage(small_disk).free
        with open(filler, "wb") as file:  # leaves less room than one entry, and no entry to evict
            file.write(b"\0" * (free - 64 * 1024))
        ledger = Ledger()
        ledger.submit(writer, "nospace", 3, image=LARGE_FRAME)
        assert writer.flush(DRAIN_SECONDS) == 0, writer.stats()
        full = writer.stats()
        results = ledger.results()
        assert all(r.error_status and not r.spooled and "spool write failed" in r.message for r in results.values())
        assert (full["failed_by_cause"], full["spool_write_failures"]) == ({"spool_write_failed": 3}, 3), full
        assert list(spool_dir.glob(".tmp-*")) == [] and entries(spool_dir) == []  # no half-written entry left

        filler.unlink()
        ledger.submit(writer, "room", 3, image=LARGE_FRAME)
        assert wait_until(lambda: writer.stats()["spooled"] == 3, DRAIN_SECONDS), writer.stats()
        with ReferenceService(tmp_path / "service", port=port) as service:
            stats = drain_all(writer, 3)
            books = settle(ledger.results(), rows_of(service))
    finally:
        writer.close(timeout=1)
    assert_balanced(stats)
    assert books.failed == {f"nospace-{n}" for n in range(3)} and books.spooled == {f"room-{n}" for n in range(3)}
    assert stats["failed_by_cause"] == {"spool_write_failed": 3}
    assert (stats["spool_write_failures"], stats["drained"]) == (3, 3)


def test_concurrent_spool_writes_on_a_nearly_full_disk_evict_the_oldest_rather_than_fail(
    small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers = 5
    body = np.random.default_rng(5).integers(0, 256, size=230_000, dtype=np.uint8).tobytes()

    def request(number: int) -> Request:
        return Request.of(f"key-{number}", [body])

    spool = Spool(small_disk / "spool", max_bytes=1 << 30)
    try:
        for number in range(6):
            assert spool.put(request(number))
        entry_size = spool.stats()["spool_bytes"] // 6
        margin = shutil.disk_usage(small_disk).total // 10
        with open(small_disk / "filler", "wb") as file:  # free: the margin and half an entry
            file.write(b"\0" * (shutil.disk_usage(small_disk).free - margin - entry_size // 2))
        # Every writer has chosen what to evict before any of them writes: the way a slow write
        # (an fsync) overlaps the next event's eviction, made certain.
        everyone_chose = threading.Barrier(writers)

        def open_after_the_others(path: Any, mode: str = "r") -> Any:
            everyone_chose.wait(TIMEOUT)
            return builtins.open(path, mode)

        monkeypatch.setattr(fastsend.send.spool, "open", open_after_the_others, raising=False)
        failures: list[OSError] = []

        def put(number: int) -> None:
            try:
                spool.put(request(number))
            except OSError as exc:
                failures.append(exc)

        threads = [threading.Thread(target=put, args=(100 + n,)) for n in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        stats = spool.stats()
    finally:
        spool.close()
    assert not failures, f"{len(failures)} of {writers} writes failed ({failures[0]}); evicted {stats['spool_evicted']}"
    assert stats["spool_pending"] + stats["spool_evicted"] == 6 + writers


def test_concurrent_spool_writes_stay_within_the_spools_bound(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writers, body = 2, b"x" * 10_000

    def request(number: int) -> Request:
        return Request.of(f"key-{number}", [body])

    probe = Spool(tmp_path / "probe", max_bytes=1 << 20)
    probe.put(request(0))
    entry_size = probe.stats()["spool_bytes"]
    probe.close()
    spool = Spool(tmp_path / "spool", max_bytes=int(entry_size * 2.5))  # room for two entries
    for number in range(2):  # full: each new entry must evict one of these
        assert spool.put(request(number))
    everyone_chose = threading.Barrier(writers)  # as in the test above: both evict, then both write

    def open_after_the_others(path: Any, mode: str = "r") -> Any:
        everyone_chose.wait(TIMEOUT)
        return builtins.open(path, mode)

    monkeypatch.setattr(fastsend.send.spool, "open", open_after_the_others, raising=False)
    try:
        threads = [threading.Thread(target=spool.put, args=(request(100 + n),)) for n in range(writers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT)
        stats = spool.stats()
    finally:
        spool.close()
    assert stats["spool_bytes"] <= spool.max_bytes, stats  # the first evicts one old entry, the second none
    assert (stats["spool_pending"], stats["spool_evicted"]) == (2, 2), stats


# ---------------------------------------------------------------- 5. forked workers that never close


BOOKS = ("submitted", "sent", "failed", "dropped", "spooled", "cancelled", "pending", "failed_by_cause")


def _submit_and_return(writer: EventWriter, prefix: str, count: int, reports: Any) -> None:
    # Runs after the writer's own exit hook (a lower priority runs later): the books as the worker ends.
    multiprocessing.util.Finalize(
        None, lambda: reports.put({name: writer.stats()[name] for name in BOOKS}), exitpriority=0
    )
    for number in range(count):
        writer.submit(quality_check(f"{prefix}-{number}"), FRAME)
    # No close(): the worker ends with os._exit, its events still on the wire.


def run_forked_workers(writer: EventWriter, workers: int, count: int) -> list[dict[str, Any]]:
    """Fork ``workers`` processes that each submit ``count`` events on ``writer`` and return; their books."""
    context = multiprocessing.get_context("fork")
    reports = context.SimpleQueue()
    children = [
        context.Process(target=_submit_and_return, args=(writer, f"worker{w}", count, reports)) for w in range(workers)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(TIMEOUT)
    assert [child.exitcode for child in children] == [0] * workers
    books: list[dict[str, Any]] = []
    for _ in range(workers):  # each worker reported before it ended: nothing to wait for
        assert not reports.empty(), f"{len(books)} of {workers} workers reported"
        books.append(reports.get())
    return books


@pytest.mark.filterwarnings(FORK_WITH_THREADS)
def test_forked_workers_that_exit_without_close_deliver_what_they_submitted(
    tmp_path: Path, spool_dir: Path, make_writer: WriterFactory
) -> None:
    workers, count = 3, 8
    # A slow service: when a worker returns, its events are still being sent.
    with ReferenceService(tmp_path / "service", faults=Faults(latency=0.3)) as service:
        writer = make_writer(service.url, request_timeout=2.0, deadline=10.0)
        ledger = Ledger()
        ledger.submit(writer, "parent", 3)  # the parent's threads are running when it forks
        books = run_forked_workers(writer, workers, count)
        children_rows = {x for x in stored_once(rows_of(service)) if x.startswith("worker")}
        assert writer.flush(DRAIN_SECONDS) == 0
        stats = writer.stats()
        rows = rows_of(service)
    # Every worker's events were stored before it ended, and its books say so.
    assert children_rows == {f"worker{w}-{n}" for w in range(workers) for n in range(count)}
    assert all((b["submitted"], b["sent"], b["pending"]) == (count, count, 0) for b in books), books
    assert stored_once(rows) == children_rows | {f"parent-{n}" for n in range(3)}
    assert_balanced(stats)
    assert (stats["submitted"], stats["sent"], stats["spool_pending"]) == (3, 3, 0)  # the children's are theirs
    assert entries(spool_dir) == []


@pytest.mark.filterwarnings(FORK_WITH_THREADS)
def test_forked_workers_facing_an_outage_report_every_event_and_leave_the_parents_spool_alone(
    tmp_path: Path, spool_dir: Path, make_writer: WriterFactory
) -> None:
    workers, count = 2, 5
    port = unused_port()
    writer = make_writer(f"http://127.0.0.1:{port}", exit_flush_timeout=3.0)
    ledger = Ledger()
    ledger.submit(writer, "parent", 3)
    assert wait_until(lambda: writer.stats()["spooled"] == 3, DRAIN_SECONDS), writer.stats()
    books = run_forked_workers(writer, workers, count)
    # Without the spool (it stays with the parent) a worker's events fail, each with its reason, by the exit.
    for book in books:
        assert (book["submitted"], book["pending"], book["spooled"], book["sent"]) == (count, 0, 0, 0), book
        assert book["failed"] + book["dropped"] + book["cancelled"] == count, book
        assert book["failed"] == sum(book["failed_by_cause"].values()), book
    assert len(entries(spool_dir)) == 3 and writer.stats()["spool_pending"] == 3
    with ReferenceService(tmp_path / "service", port=port) as service:
        stats = drain_all(writer, 3)
        books_here = settle(ledger.results(), rows_of(service))
    assert_balanced(stats)
    assert books_here.spooled == {"parent-0", "parent-1", "parent-2"}


FORKING_SENDER = textwrap.dedent(
    """
    import multiprocessing, os, signal, sys, time
    import numpy as np
    from fastsend import Event, EventWriter

    url, spool_dir = sys.argv[1:]
    writer = EventWriter(url, spool_dir=spool_dir, connect_timeout=0.1, deadline=0.5)
    frame = np.zeros((16, 16, 3), np.uint8)
    result = writer.submit(Event.quality_check(result="pass", external_id="parent-0"), frame).result(10)
    assert result.spooled, result

    def worker():
        time.sleep(20)  # a long-lived worker; the test kills it sooner

    child = multiprocessing.get_context("fork").Process(target=worker)
    child.start()
    print(child.pid, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # the parent dies; its worker lives on
    """
)


def test_a_restarted_parent_reopens_its_spool_while_the_dead_parents_workers_live_on(
    tmp_path: Path, spool_dir: Path, processes: list[subprocess.Popen[str]]
) -> None:
    port = unused_port()
    url = f"http://127.0.0.1:{port}"
    parent = run_script(tmp_path, "forking_sender.py", FORKING_SENDER, url, str(spool_dir))
    processes.append(parent)
    reader = LineReader(parent)
    worker_pid = reader.next()
    assert parent.wait(TIMEOUT) == -signal.SIGKILL
    assert worker_pid is not None and worker_pid.isdigit(), reader.rest()
    try:
        assert len(entries(spool_dir)) == 1
        with ReferenceService(tmp_path / "service", port=port) as service:
            writer = EventWriter(url, spool_dir=str(spool_dir), backoff_base=0.03, backoff_max=0.2)
            try:
                stats = drain_all(writer, 1)
            finally:
                writer.close(timeout=1)
            rows = rows_of(service)
        assert stored_once(rows) == {"parent-0"} and stats["drained"] == 1
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(worker_pid), signal.SIGKILL)


# ---------------------------------------------------------------- 6. answers during a drain


class Phases:
    """A scripted service whose answer depends on the phase the test sets, and that records every answer."""

    def __init__(self, answer: Callable[[str, str], Reply]) -> None:
        self.phase = "away"
        self._answer = answer
        self.answers: list[tuple[str, str, str, int]] = []  # (phase, externalId, Idempotency-Key, status or 0)
        self._lock = threading.Lock()

    def __call__(self, received: Received) -> Reply:
        external_id = received.json["event_data"]["externalId"]
        phase = self.phase
        # "away": the connection is cut unanswered, so the events go to the spool.
        reply = Reply(drop=True) if phase == "away" else self._answer(phase, external_id)
        status = 0 if reply.drop else reply.status
        with self._lock:
            self.answers.append((phase, external_id, received.headers["Idempotency-Key"], status))
        return reply

    def asked(self, phase: str) -> Counter[str]:
        """How many times each event was posted during ``phase``."""
        with self._lock:
            return Counter(x for p, x, _, _ in self.answers if p == phase)

    def created(self) -> Counter[str]:
        with self._lock:
            return Counter(x for _, x, _, status in self.answers if status == 201)


class HttpsService:
    """A loopback HTTPS endpoint on ``port`` that answers every POST 201, recording each event's external id."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        self.port, self._context = port, context
        self.received: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> HttpsService:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(TIMEOUT)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(TIMEOUT)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(TIMEOUT)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v2/events", self._post)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._context).start()

    async def _post(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(body["event_data"]["externalId"])
        return web.json_response({"id": len(self.received)}, status=201)


def test_a_tls_failure_during_a_drain_keeps_the_entry_for_a_writer_that_trusts_the_service(
    tmp_path: Path, make_writer: WriterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    port = unused_port()
    url = f"https://127.0.0.1:{port}"
    untrusting = make_writer(url)  # the system's CAs: the service's certificate is not trusted
    ledger = Ledger()
    ledger.submit(untrusting, "tls", 3)
    assert wait_until(lambda: untrusting.stats()["spooled"] == 3, DRAIN_SECONDS), untrusting.stats()
    with HttpsService(port, context) as service:
        paused = "spool drain paused: TLS certificate verification failed"
        assert wait_until(lambda: caplog.text.count(paused) >= 2, DRAIN_SECONDS), caplog.text[-500:]  # asked again
        refused = untrusting.stats()
        assert (refused["spool_pending"], refused["quarantined"], refused["drained"]) == (3, 0, 0), refused
        untrusting.close(timeout=1)
        trusting = make_writer(url, ca_file=str(ca_file))  # the same spool, now with the service's CA
        stats = drain_all(trusting, 3)
        received = list(service.received)
    assert sorted(received) == ["tls-0", "tls-1", "tls-2"]
    assert (stats["quarantined"], stats["spool_pending"]) == (0, 0)
    assert all(result.spooled for result in ledger.results().values())


@pytest.mark.parametrize("status", [301, 307, 308, 401, 403, 404, 405, 407])
def test_an_answer_blaming_the_sender_during_a_drain_keeps_the_entry(status: int, make_writer: WriterFactory) -> None:
    def answer(phase: str, external_id: str) -> Reply:
        if phase == "refusing":
            return Reply(status, {"detail": "not here"}, headers={"Location": "http://127.0.0.1:9/elsewhere"})
        return Reply(201)

    script = Phases(answer)
    with ScriptedServer(script) as server:
        writer = make_writer(server.base_url, deadline=0.4)
        ledger = Ledger()
        ledger.submit(writer, "kept", 3)
        assert wait_until(lambda: writer.stats()["spooled"] == 3, DRAIN_SECONDS), writer.stats()
        script.phase = "refusing"
        # The drain pauses on the spool's oldest entry, then asks for it again: it was kept.
        assert wait_until(lambda: max(script.asked("refusing").values(), default=0) >= 2, DRAIN_SECONDS)
        refusing = writer.stats()
        assert (refusing["spool_pending"], refusing["quarantined"], refusing["drained"]) == (3, 0, 0), refusing
        script.phase = "open"
        stats = drain_all(writer, 3)
    assert_balanced(stats)
    assert (stats["drained"], stats["quarantined"], stats["spooled"]) == (3, 0, 3), stats
    assert script.created() == Counter({"kept-0": 1, "kept-1": 1, "kept-2": 1})
    assert all(result.spooled for result in ledger.results().values())


def test_an_entry_the_service_keeps_refusing_moves_behind_the_others(make_writer: WriterFactory) -> None:
    def answer(phase: str, external_id: str) -> Reply:
        if phase == "stuck" and external_id == "stuck-0":
            return Reply(500, {"detail": "this one entry cannot be stored right now"})
        return Reply(201)

    script = Phases(answer)
    with ScriptedServer(script) as server:
        writer = make_writer(server.base_url, deadline=0.4)
        ledger = Ledger()
        ledger.submit(writer, "stuck", 1)  # spooled first: it is the spool's oldest entry
        assert wait_until(lambda: writer.stats()["spooled"] == 1, DRAIN_SECONDS), writer.stats()
        ledger.submit(writer, "other", 4)
        assert wait_until(lambda: writer.stats()["spooled"] == 5, DRAIN_SECONDS), writer.stats()
        script.phase = "stuck"
        others = [f"other-{n}" for n in range(4)]
        assert wait_until(lambda: all(script.created()[x] == 1 for x in others), DRAIN_SECONDS), script.answers[-5:]
        assert wait_until(lambda: writer.stats()["drained"] == 4, TIMEOUT), writer.stats()  # the 201s have been read
        stuck = writer.stats()
        assert (stuck["spool_pending"], stuck["drained"], stuck["quarantined"]) == (1, 4, 0), stuck
        # It was the oldest: tried first, and failed a few times in a row (unanswered, then refused),
        # before the others went by.
        answers = script.answers
        first_other = min(i for i, (phase, x, _, _) in enumerate(answers) if phase == "stuck" and x != "stuck-0")
        stuck_phase = [(x, status) for phase, x, _, status in answers[:first_other] if phase == "stuck"]
        assert set(stuck_phase) <= {("stuck-0", 500)}, stuck_phase  # empty if the switch met a probe of the next
        assert sum(x == "stuck-0" for _, x, _, _ in answers[:first_other]) >= 3, answers[:first_other]
        script.phase = "open"
        stats = drain_all(writer, 5)
    assert_balanced(stats)
    assert script.created() == Counter({x: 1 for x in ["stuck-0", *others]})
    assert (stats["drained"], stats["quarantined"], stats["spool_evicted"]) == (5, 0, 0), stats


def test_an_entry_evicted_while_it_is_being_drained_is_counted_once(tmp_path: Path, make_writer: WriterFactory) -> None:
    port = unused_port()
    probe = make_writer(f"http://127.0.0.1:{port}", spool_dir=str(tmp_path / "probe"))
    probe.submit(quality_check("first-9"), FRAME).result(TIMEOUT)
    entry_size = probe.stats()["spool_bytes"]  # the size of each entry below
    probe.close(timeout=0)

    def answer(phase: str, external_id: str) -> Reply:
        if phase == "held":  # the drainer's post of the oldest entry waits; fresh events find no answer
            return Reply(hold=True) if external_id == "first-0" else Reply(drop=True)
        return Reply(201)

    script = Phases(answer)
    with ScriptedServer(script) as server:
        writer = make_writer(server.base_url, request_timeout=5.0, spool_max_bytes=int(entry_size * 2.5))
        ledger = Ledger()
        ledger.submit(writer, "first", 1)
        assert wait_until(lambda: writer.stats()["spooled"] == 1, DRAIN_SECONDS), writer.stats()
        script.phase = "held"
        assert wait_until(lambda: script.asked("held")["first-0"] == 1, DRAIN_SECONDS)  # on the wire, from the spool
        ledger.submit(writer, "later", 1)  # one at a time: the second one spooled evicts the oldest entry, first-0
        assert wait_until(lambda: writer.stats()["spooled"] == 2, DRAIN_SECONDS), writer.stats()
        ledger.submit(writer, "later-after", 1)
        assert wait_until(lambda: writer.stats()["spooled"] == 3, DRAIN_SECONDS), writer.stats()
        assert writer.stats()["spool_evicted"] == 1, writer.stats()
        assert script.asked("held")["first-0"] == 1  # still on the wire
        script.phase = "open"
        server.release()  # first-0 is stored after all
        stats = drain_all(writer, 3)  # first-0 is delivered after all: counted drained, no longer evicted
    assert script.created() == Counter({"first-0": 1, "later-0": 1, "later-after-0": 1})
    assert_balanced(stats)
    assert stats["spooled"] == stats["drained"] + stats["spool_evicted"] + stats["spool_pending"], stats


# ---------------------------------------------------------------- 7. drain(timeout)


def test_drain_waits_bounded_while_the_service_is_down_and_returns_zero_once_sent(
    tmp_path: Path, spool_dir: Path, make_writer: WriterFactory
) -> None:
    port = unused_port()
    writer = make_writer(f"http://127.0.0.1:{port}")
    ledger = Ledger()
    ledger.submit(writer, "waiting", 4)
    assert wait_until(lambda: writer.stats()["spooled"] == 4, DRAIN_SECONDS), writer.stats()
    started = time.monotonic()
    assert writer.drain(0.5) == 4  # nothing pending, four still in the spool
    waited = time.monotonic() - started
    assert 0.45 <= waited < TIMEOUT, waited  # it waited for the spool, and not for ever
    assert len(entries(spool_dir)) == 4

    with ReferenceService(tmp_path / "service", port=port) as service:
        assert writer.drain(DRAIN_SECONDS) == 0, writer.stats()
        assert entries(spool_dir) == []  # drain() returned once the spool was sent, not before
        assert wait_until(lambda: writer.stats()["drained"] == 4, TIMEOUT), writer.stats()
        stats = writer.stats()
        books = settle(ledger.results(), rows_of(service))
    assert_balanced(stats)
    assert books.spooled == {f"waiting-{n}" for n in range(4)} and stats["drained"] == 4


def test_drain_counts_the_events_still_on_the_wire_and_returns_zero_once_answered(make_writer: WriterFactory) -> None:
    with ScriptedServer(Reply(hold=True)) as server:
        writer = make_writer(server.base_url, request_timeout=5.0, deadline=10.0)
        ledger = Ledger()
        ledger.submit(writer, "held", 3)
        server.wait_for_requests(3)
        assert writer.drain(0.3) == 3  # pending, none spooled
        assert writer.stats()["spooled"] == 0
        server.release()
        assert writer.drain(DRAIN_SECONDS) == 0
        stats = writer.stats()
    assert_balanced(stats)
    assert stats["sent"] == 3 and all(not result.error_status for result in ledger.results().values())
