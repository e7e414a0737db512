"""Nothing lost at the edges of a writer's life: close, exit, SIGTERM (once and twice), fork, a forgotten
writer, the drainer's own failures, Retry-After, odd files in the spool, a strided gray frame.

Where an item is about signals or processes, the sender runs in a child process and gets real signals;
every service is a loopback server the test starts; every wait is bounded.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.books import adds_up
from support.scripted_server import Reply, ScriptedServer, unused_port
from support.service_process import TIMEOUT, python_env, wait_until
from test_spool import previous_layout_entry

from fastsend import Event, EventWriter
from fastsend.send.spool import QUARANTINE_DIR, Spool
from fastsend.send.wire import Request

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform != "linux", reason="needs POSIX signals, fork and FIFOs"),
]

FRAME = np.zeros((16, 16, 3), np.uint8)
FAST = {"backoff_base": 0.02, "backoff_max": 0.1, "request_timeout": 1.0, "connect_timeout": 0.5, "deadline": 2.0}

# What every child starts with: a writer's settings that keep events pending against a service that holds them.
PRELUDE = textwrap.dedent(
    """
    import atexit, gc, logging, os, signal, sys, threading, time
    import numpy as np
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(message)s")
    FRAME = np.zeros((16, 16, 3), np.uint8)
    url, spool = sys.argv[1], sys.argv[2]
    HELD = dict(request_timeout=30, deadline=60, exit_flush_timeout=5, spool_dir=spool)

    def say(*words):
        print(*words, flush=True)

    def submit(writer, count, prefix="e"):
        from fastsend import Event
        return [writer.submit(Event.custom(value=f"{prefix}-{n}"), FRAME) for n in range(count)]
    """
)


def start_child(body: str, url: str, spool: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body), url, str(spool)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
    )


def read_line(child: subprocess.Popen[str], timeout: float = TIMEOUT) -> str:
    assert child.stdout is not None
    readable, _, _ = select.select([child.stdout], [], [], timeout)
    return child.stdout.readline().strip() if readable else ""


def finish(child: subprocess.Popen[str], timeout: float = TIMEOUT) -> tuple[int, str, str]:
    """Wait (bounded) for the child; kill it if it does not end. Its exit code, the rest of stdout, stderr."""
    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        out, err = child.communicate(timeout=TIMEOUT)
        return -999, out, err
    return child.returncode, out, err


def spooled(directory: Path) -> list[Path]:
    """Entries waiting in a spool directory and in the per-URL directories below it (not the quarantine)."""
    return sorted(p for p in directory.rglob("*.event") if QUARANTINE_DIR not in p.parts)


@pytest.fixture
def holding_server():
    with ScriptedServer(Reply(hold=True)) as server:  # a service that never answers: events stay pending
        yield server


# ---------------------------------------------------------------- 2. SIGTERM while the application closes


@pytest.mark.parametrize("how", ["close", "with"])
def test_sigterm_during_close_cuts_the_flush_short_and_spools_every_pending_event(holding_server, spool_dir, how):
    body = {
        "close": """
            from fastsend import EventWriter
            writer = EventWriter(url, **HELD)
            submit(writer, 5)
            say("closing")
            writer.close()  # waits for ever on a service that never answers
            say("returned")
        """,
        "with": """
            from fastsend import EventWriter
            with EventWriter(url, **HELD) as writer:
                submit(writer, 5)
                say("closing")
            say("returned")
        """,
    }[how]
    child = start_child(body, holding_server.base_url, spool_dir)
    assert read_line(child) == "closing"
    holding_server.wait_for_requests(5)
    time.sleep(0.3)  # inside close(), waiting
    child.send_signal(signal.SIGTERM)
    code, out, err = finish(child)
    assert code == 143, err
    assert "returned" not in out  # the process exits once the close is done
    assert len(spooled(spool_dir)) == 5, err
    assert "cut short" in err


# ---------------------------------------------------------------- 3. a second SIGTERM during the exit flush


def test_a_second_sigterm_cuts_the_exit_flush_short_and_every_pending_event_of_every_writer_is_spooled(
    holding_server, spool_dir
):
    body = """
        from fastsend import EventWriter
        first = EventWriter(url, **{**HELD, "spool_dir": spool + "/a", "exit_flush_timeout": 30})
        second = EventWriter(url, **{**HELD, "spool_dir": spool + "/b", "exit_flush_timeout": 30})
        submit(first, 3)
        submit(second, 3)
        say("ready")
        time.sleep(60)
    """
    child = start_child(body, holding_server.base_url, spool_dir)
    assert read_line(child) == "ready"
    holding_server.wait_for_requests(6)
    child.send_signal(signal.SIGTERM)  # the exit flush begins: it would wait 30 s per writer
    time.sleep(1.0)
    assert child.poll() is None, "the first SIGTERM's flush is bounded by exit_flush_timeout, not cut"
    started = time.monotonic()
    child.send_signal(signal.SIGTERM)
    code, _, err = finish(child)
    assert code == 143, err
    assert time.monotonic() - started < 10
    assert len(spooled(spool_dir / "a")) == 3 and len(spooled(spool_dir / "b")) == 3, err


# ---------------------------------------------------------------- 4. SIGTERM while the main thread spills


def test_sigterm_while_the_main_thread_spills_to_the_spool_settles_every_accepted_event(holding_server, spool_dir):
    body = """
        accepted = []

        def report():  # registered before fastsend is imported: runs after its exit flush
            unsettled = [f for f in accepted if not f.done()]
            say("accepted", len(accepted), "unsettled", len(unsettled))

        atexit.register(report)
        from fastsend import EventWriter
        from fastsend.send.spool import Spool

        real_put = Spool.put

        def slow_put(self, request):  # a slow disk: the signal lands inside the spill
            time.sleep(0.01)
            return real_put(self, request)

        Spool.put = slow_put
        writer = EventWriter(url, **HELD, overflow="spill", queue_size=1, max_in_flight=1)
        say("ready")
        while True:
            accepted.extend(submit(writer, 1))
    """
    child = start_child(body, holding_server.base_url, spool_dir)
    assert read_line(child) == "ready"
    assert wait_until(lambda: len(spooled(spool_dir)) >= 20, TIMEOUT)
    child.send_signal(signal.SIGTERM)
    code, out, err = finish(child)
    assert code == 143, err
    words = out.split()
    assert words[0] == "accepted" and words[2] == "unsettled", out
    accepted, unsettled = int(words[1]), int(words[3])
    assert unsettled == 0, err
    # Every accepted one, the one on the wire too (cancelled at close, spooled); and perhaps the event whose
    # submit() the exit interrupted once it was queued: never returned to its caller, yet not lost either.
    assert accepted <= len(spooled(spool_dir)) <= accepted + 1


# ---------------------------------------------------------------- 5. the drainer is supervised


def corrupt_entry(directory: Path, name: str = "00000000000000000001.event") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(b"not a spool entry")


def spool_one(directory: Path, key: str = "k-1") -> None:
    spool = Spool(directory, 1 << 20)
    try:
        assert spool.put(Request.of(key, [b'{"eventType":"custom"}']))
    finally:
        spool.close()


def test_an_entry_that_cannot_be_quarantined_is_set_aside_and_the_drain_goes_on(server, spool_dir, caplog):
    corrupt_entry(spool_dir)
    spool_one(spool_dir)
    (spool_dir / QUARANTINE_DIR).write_text("a file where the quarantine folder goes")
    with caplog.at_level(logging.ERROR, logger="fastsend"):
        writer = EventWriter(server.base_url, spool_dir=str(spool_dir), **FAST)
        try:
            server.wait_for_requests(1, timeout=10)  # the good entry behind the bad one is sent
            assert wait_until(lambda: writer.stats()["drained"] == 1, 10), writer.stats()
            assert writer.stats()["spool_pending"] == 1  # the bad one stays, to be tried again
            assert "could not be quarantined" in caplog.text
            (spool_dir / QUARANTINE_DIR).unlink()  # the disk is fixed: the next try moves it aside
            assert wait_until(lambda: writer.stats()["quarantined"] == 1, 10), writer.stats()
            stats = writer.stats()
        finally:
            writer.close(1)
    assert stats["spool_pending"] == 0 and stats["drainer_restarts"] == 0 and adds_up(stats)
    assert len(server.requests) == 1
    assert [p.name for p in (spool_dir / QUARANTINE_DIR).iterdir()] == ["00000000000000000001.event"]


def test_an_unexpected_error_restarts_the_drainer_logged_and_counted(server, spool_dir, monkeypatch, caplog):
    import fastsend.integrations.metrics as metrics

    real_oldest, raised = Spool.oldest, []

    def oldest_failing_once(spool: Spool) -> Any:
        if not raised:
            raised.append(True)
            raise RuntimeError("a bug in the drain")
        return real_oldest(spool)

    monkeypatch.setattr(Spool, "oldest", oldest_failing_once)
    spool_one(spool_dir)
    with caplog.at_level(logging.ERROR, logger="fastsend"):
        writer = EventWriter(server.base_url, spool_dir=str(spool_dir), **FAST)
        try:
            assert wait_until(lambda: writer.stats()["drained"] == 1, 10), writer.stats()
            writer.submit(Event.custom(value="later"), FRAME).result(10)
            stats = writer.stats()
            scraped = {
                sample.name: sample.value
                for family in metrics.WriterCollector().collect()
                for sample in family.samples
                if sample.labels.get("url") == writer.url
            }
        finally:
            writer.close(1)
    assert stats["drainer_restarts"] == 1 and adds_up(stats)
    assert scraped["fastsend_drainer_restarts_total"] == 1
    restart = [r for r in caplog.records if "restarting" in r.getMessage()]
    assert restart and restart[0].exc_info is not None  # with its traceback


# ---------------------------------------------------------------- 6. Retry-After has a floor


@pytest.mark.parametrize(
    "retry_after",
    ["0", format_datetime(datetime.now(timezone.utc) - timedelta(hours=1), usegmt=True)],
    ids=["zero", "a-past-date"],
)
def test_retry_after_zero_or_past_never_makes_the_drain_a_hot_loop(spool_dir, retry_after):
    spool_one(spool_dir)
    with ScriptedServer(Reply(503, headers={"Retry-After": retry_after})) as server:
        writer = EventWriter(server.base_url, spool_dir=str(spool_dir), backoff_base=0.1, backoff_max=0.4)
        try:
            time.sleep(2.0)
            attempts = len(server.requests)
            stats = writer.stats()
        finally:
            writer.close(1)
    # Floors of 0.05, 0.1, 0.2, 0.2, …: about a dozen attempts in 2 s; without a floor, thousands.
    assert 2 <= attempts <= 20, attempts
    assert stats["spool_pending"] == 1 and adds_up(stats)


# ---------------------------------------------------------------- 7. a forgotten writer


def test_a_writer_dropped_without_close_is_closed_and_its_pending_events_spooled(holding_server, spool_dir):
    body = """
        from fastsend import EventWriter
        from fastsend.send import shutdown
        writer = EventWriter(url, **{**HELD, "exit_flush_timeout": 0.5})
        submit(writer, 3)
        del writer
        gc.collect()
        for _ in range(200):  # closed in the background: the spool holds all three
            if not shutdown.open_writers():
                break
            time.sleep(0.05)
        say("open", len(shutdown.open_writers()), "handles", shutdown.handles_sigterm())
    """
    child = start_child(body, holding_server.base_url, spool_dir)
    holding_server.wait_for_requests(3)
    code, out, err = finish(child)
    assert code == 0, err
    assert out.split() == ["open", "0", "handles", "False"], (out, err)
    assert len(spooled(spool_dir)) == 3
    assert "dropped without close()" in err


def test_a_forgotten_writer_still_referenced_by_nothing_is_flushed_at_exit(holding_server, spool_dir):
    body = """
        from fastsend import EventWriter
        def work():
            writer = EventWriter(url, **{**HELD, "exit_flush_timeout": 0.5})
            submit(writer, 3)
        work()  # its last reference is gone here; the exit comes at once
        say("exiting")
    """
    child = start_child(body, holding_server.base_url, spool_dir)
    code, out, err = finish(child)
    assert code == 0 and "exiting" in out, err
    assert len(spooled(spool_dir)) == 3, err


# ---------------------------------------------------------------- 8. drain() and a concurrent close


def test_drain_without_a_timeout_returns_when_another_thread_closes_the_writer(spool_dir):
    writer = EventWriter(f"http://127.0.0.1:{unused_port()}", spool_dir=str(spool_dir), **FAST)
    futures = [writer.submit(Event.custom(value=f"d-{n}"), FRAME) for n in range(2)]
    assert all(f.result(10).spooled for f in futures)
    returned: list[int] = []
    drainer = threading.Thread(target=lambda: returned.append(writer.drain()), daemon=True)
    drainer.start()
    time.sleep(0.3)
    writer.close(1)
    drainer.join(5)
    assert not drainer.is_alive(), "drain() did not return after close()"
    assert returned == [2]  # both still in the spool, for the next writer
    assert adds_up(writer.stats())


# ---------------------------------------------------------------- 9. SIGTERM handled only where it should be

IMMORTAL = """
    def immortal():  # a worker that catches everything: only the default disposition ends it
        while True:
            try:
                time.sleep(60)
            except BaseException:
                say("caught")
"""


def test_a_forked_child_gets_the_default_sigterm_back(holding_server, spool_dir):
    body = textwrap.dedent(IMMORTAL) + textwrap.dedent(
        """
        import multiprocessing, warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        from fastsend import EventWriter
        from fastsend.send import shutdown
        writer = EventWriter(url, **HELD)
        assert shutdown.handles_sigterm()
        worker = multiprocessing.get_context("fork").Process(target=immortal)
        worker.start()
        time.sleep(0.5)
        worker.terminate()
        worker.join(5)
        say("worker", worker.exitcode)
        if worker.exitcode is None:
            worker.kill()
        writer.close(0)
        """
    )
    child = start_child(body, holding_server.base_url, spool_dir)
    code, out, err = finish(child)
    assert code == 0, err
    assert "worker -15" in out and "caught" not in out, (out, err)


def test_closing_the_last_spooled_writer_from_a_thread_gives_sigterm_its_default_back(holding_server, spool_dir):
    body = textwrap.dedent(IMMORTAL) + textwrap.dedent(
        """
        from fastsend import EventWriter
        writer = EventWriter(url, **HELD)
        closer = threading.Thread(target=writer.close, args=(0,))
        closer.start()
        closer.join(10)
        say("closed")
        immortal()
        """
    )
    child = start_child(body, holding_server.base_url, spool_dir)
    assert read_line(child) == "closed"
    time.sleep(0.3)
    child.send_signal(signal.SIGTERM)
    code, out, err = finish(child, timeout=5)
    assert code == -signal.SIGTERM, (code, out, err)
    assert "caught" not in out


# ---------------------------------------------------------------- 10. the spool reads only regular files


def test_a_dangling_symlink_named_like_an_entry_is_set_aside_with_one_warning(server, spool_dir, caplog):
    spool_one(spool_dir)
    (spool_dir / "00000000000000000002.event").symlink_to(spool_dir / "nowhere")
    with caplog.at_level(logging.WARNING, logger="fastsend"):
        writer = EventWriter(server.base_url, spool_dir=str(spool_dir), **FAST)
        try:
            assert wait_until(lambda: writer.stats()["drained"] == 1, 10), writer.stats()
            stats = writer.stats()
        finally:
            writer.close(1)
    warnings = [r for r in caplog.records if "not regular files" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].exc_info is None
    assert (spool_dir / QUARANTINE_DIR / "00000000000000000002.event").is_symlink()
    assert stats["spool_pending"] == 0 and adds_up(stats)


def test_a_fifo_named_like_an_entry_never_hangs_the_writer(server, spool_dir):
    spool_one(spool_dir)
    os.mkfifo(spool_dir / "00000000000000000000.event")  # the oldest name: read first
    writer = EventWriter(server.base_url, spool_dir=str(spool_dir), **FAST)
    try:
        assert wait_until(lambda: writer.stats()["drained"] == 1, 10), writer.stats()
    finally:
        closed = threading.Thread(target=writer.close, args=(1,), daemon=True)
        closed.start()
        closed.join(10)
    assert not closed.is_alive(), "close() hung on a FIFO"
    assert (spool_dir / QUARANTINE_DIR / "00000000000000000000.event").exists()


def test_a_fifo_that_replaces_an_entry_is_quarantined_unopened(server, spool_dir):
    spool = Spool(spool_dir, 1 << 20)
    try:
        assert spool.put(Request.of("k-fifo", [b"{}"]))
        entry = spool.oldest()
        assert entry is not None
        os.unlink(spool_dir / entry.name)
        os.mkfifo(spool_dir / entry.name)
        assert spool.load_or_quarantine(entry) is None  # would block for ever if opened for reading
        assert spool.stats()["quarantined"] == 1
    finally:
        spool.close()


def test_a_previous_layout_entry_without_its_url_is_quarantined_at_once_without_a_traceback(server, spool_dir, caplog):
    import zlib

    import orjson

    previous_layout_entry(spool_dir, "00000000000000000001.event", "http://elsewhere:1/v2/events", "old-1", b"{}")
    path = spool_dir / "00000000000000000001.event"
    headers = {"Idempotency-Key": "old-1"}
    crc = zlib.crc32(b"{}", zlib.crc32(orjson.dumps([None, headers, 2])))
    path.write_bytes(b"FASTSEND-SPOOL 2\n" + orjson.dumps({"headers": headers, "size": 2, "crc32": crc}) + b"\n{}")
    with caplog.at_level(logging.WARNING, logger="fastsend"):
        writer = EventWriter(server.base_url, spool_dir=str(spool_dir), **FAST)
        try:
            assert wait_until(lambda: writer.stats()["quarantined"] == 1, 10), writer.stats()
            stats = writer.stats()
        finally:
            writer.close(1)
    assert not [r for r in caplog.records if r.exc_info is not None]
    assert "damaged header" in caplog.text and "unexpected error" not in caplog.text
    assert len(server.requests) == 0 and stats["drainer_restarts"] == 0 and adds_up(stats)


# ---------------------------------------------------------------- 11. a strided gray frame, handed over


def test_a_strided_gray_frame_handed_over_reuses_segments_without_a_traceback(server, caplog):
    pytest.importorskip("cv2")
    wide = np.random.default_rng(11).integers(0, 256, size=(96, 256), dtype=np.uint8)
    frame = wide[:, ::2]  # 96×128, not contiguous
    drawn = frame.copy()
    drawn[:8, :8] = 0
    with caplog.at_level(logging.WARNING, logger="fastsend"):
        writer = EventWriter(server.base_url)
        try:
            sent = writer.send(Event.custom(value="sync"), drawn, input_image=frame, copy=False)
            queued = writer.submit(Event.custom(value="async"), drawn, input_image=frame, copy=False).result(10)
            stats = writer.stats()
        finally:
            writer.close(1)
    assert not sent.error_status and not queued.error_status
    assert not [r for r in caplog.records if r.exc_info is not None], caplog.text
    assert server.requests[0].image_shape("inputBase64Image") == (96, 128)
    assert adds_up(stats)
