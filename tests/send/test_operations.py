"""Promises kept where operations touch them: where spooled entries go, what SIGTERM does, what a deadline
bounds, how many writers a block keeps, and which settings mistakes are caught when a writer is built.

Every test runs against servers on loopback that it starts itself; the signal and descriptor-limit tests
run the sender in a child process.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.books import adds_up
from support.hostile_server import RawServer, answer
from support.scripted_server import Received, Reply, ScriptedServer
from support.service_process import TIMEOUT, python_env, wait_until
from test_spool import previous_layout_entry

from fastsend import Event, EventWriter, ValidationError
from fastsend.send.spool import Spool
from fastsend.send.wire import Request

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(sys.platform != "linux", reason="needs SIGTERM, /proc and RLIMIT_NOFILE"),
]

FRAME = np.random.default_rng(18).integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
DRAIN_SECONDS = 15.0


@pytest.fixture
def writer_defaults(spool_dir: Path) -> dict[str, Any]:
    return {
        "spool_dir": str(spool_dir),
        "request_timeout": 1.0,
        "connect_timeout": 0.5,
        "backoff_base": 0.02,
        "backoff_max": 0.1,
        "deadline": 2.0,
    }


def custom(value: str) -> Event:
    return Event.custom(value=value)


def value_of(received: Received) -> str:
    return str(received.json["event_data"]["value"])


def away_then(script: dict[str, Any], answer_for: Any) -> Any:
    """A script that drops every connection until ``script["phase"]`` is set, then answers with ``answer_for``."""

    def reply(received: Received) -> Reply:
        if script.get("phase") is None:
            return Reply(drop=True)
        return answer_for(received)

    return reply


def settled_count(server: ScriptedServer) -> int:
    """The requests ``server`` recorded, once the count holds still for 0.3 s (at most 3 s): a drain attempt
    sent just before a ``close()`` returned may be recorded by the server a moment after."""
    count, ends = len(server.requests), time.monotonic() + 3
    while time.monotonic() < ends:
        time.sleep(0.3)
        if len(server.requests) == count:
            break
        count = len(server.requests)
    return count


def spool_while_away(writer: EventWriter, values: list[str]) -> None:
    for value in values:  # one at a time, so they reach the spool in this order
        assert writer.submit(custom(value), FRAME).result(TIMEOUT).spooled, value


# ---------------------------------------------------------------- the spool: where entries go


def test_spooled_entries_go_where_the_draining_writer_points_with_its_key(spool_dir, make_writer):
    with ScriptedServer(Reply(503)) as old_target, ScriptedServer(Reply(201)) as new_target:
        first = make_writer(old_target.base_url, api_key="K-old", retries=0)
        for number in range(5):
            first.submit(custom(f"e-{number}"), FRAME)
        assert first.flush(TIMEOUT) == 0 and first.stats()["spooled"] == 5, first.stats()
        first.close(1)
        asked_before = settled_count(old_target)
        keys = {value_of(r): r.headers["Idempotency-Key"] for r in old_target.requests}

        second = make_writer(new_target.base_url, api_key="K-new")
        assert second.drain(DRAIN_SECONDS) == 0, second.stats()
        stats = second.stats()
    assert len(old_target.requests) == asked_before  # nothing went back to the old URL
    assert sorted(value_of(r) for r in new_target.requests) == [f"e-{n}" for n in range(5)]
    assert {r.headers.getall("X-API-Key")[0] for r in new_target.requests} == {"K-new"}
    assert {value_of(r): r.headers["Idempotency-Key"] for r in new_target.requests} == keys  # the same events
    assert stats["drained"] == 5 and stats["quarantined"] == 0


def test_entries_of_the_previous_layout_go_to_the_current_writers_url(spool_dir, make_writer):
    body = b'{"event_schema":"custom"}'
    for number in range(3):
        name = f"{number + 1:020d}.event"
        previous_layout_entry(spool_dir, name, "http://198.51.100.7:9/v2/events", f"old-{number}", body)
    with ScriptedServer(Reply(201)) as current:
        writer = make_writer(current.base_url, api_key="K-now")
        assert writer.drain(DRAIN_SECONDS) == 0, writer.stats()
    assert [r.headers["Idempotency-Key"] for r in current.requests] == ["old-0", "old-1", "old-2"]
    assert all(r.headers["X-API-Key"] == "K-now" and r.raw == body for r in current.requests)


def test_an_entry_failing_with_connection_errors_moves_behind_the_others(make_writer):
    script: dict[str, Any] = {}
    poison = away_then(script, lambda r: Reply(drop=True) if value_of(r) == "poison" else Reply(201))
    with ScriptedServer(poison) as server:
        writer = make_writer(server.base_url)
        spool_while_away(writer, ["poison", *[f"ok-{n}" for n in range(5)]])
        script["phase"] = "up"
        assert writer.drain(DRAIN_SECONDS) == 1, writer.stats()  # all went but the one that cannot
        stats = writer.stats()
        created = [value_of(r) for r in server.requests if value_of(r) != "poison" and script.get("phase")]
    assert sorted(set(created)) == [f"ok-{n}" for n in range(5)]
    assert (stats["spool_pending"], stats["drained"], stats["quarantined"]) == (1, 5, 0), stats


def test_the_order_is_kept_while_the_service_is_away_for_everyone(spool_dir, make_writer):
    script: dict[str, Any] = {}
    with ScriptedServer(away_then(script, lambda r: Reply(201))) as server:
        writer = make_writer(server.base_url)
        spool_while_away(writer, [f"e-{n}" for n in range(4)])
        before = sorted(p.name for p in spool_dir.glob("*.event"))
        assert wait_until(lambda: len(server.requests) >= 4 + 8, TIMEOUT)  # the drainer failed many times
        assert sorted(p.name for p in spool_dir.glob("*.event")) == before  # nothing was moved
        script["phase"] = "up"
        assert writer.drain(DRAIN_SECONDS) == 0
        drained = [value_of(r) for r in server.requests][-4:]
    assert drained == [f"e-{n}" for n in range(4)]


def test_an_entry_that_cannot_become_a_request_is_quarantined_with_its_reason(spool_dir, make_writer, caplog):
    spool = Spool(spool_dir, 1 << 20)
    spool.put(Request.of("bad\r\nX-Injected: yes", [b"{}"]))
    spool.put(Request.of("good-1", [b"{}"]))
    spool.close()
    with ScriptedServer(Reply(201)) as server, caplog.at_level(logging.ERROR, logger="fastsend"):
        writer = make_writer(server.base_url)
        assert writer.drain(DRAIN_SECONDS) == 0, writer.stats()
        stats = writer.stats()
    assert [r.headers["Idempotency-Key"] for r in server.requests] == ["good-1"]
    assert (stats["quarantined"], stats["drained"]) == (1, 1)
    assert any("quarantined" in r.getMessage() and "cannot be sent" in r.getMessage() for r in caplog.records)
    assert len(list((spool_dir / "quarantine").iterdir())) == 1


@pytest.mark.parametrize("retry_after", ["86400", "Fri, 31 Dec 2100 23:59:59 GMT"])
def test_a_long_retry_after_is_capped_and_logged(make_writer, caplog, retry_after):
    script: dict[str, Any] = {}
    answers = iter([Reply(503, {"detail": "come back tomorrow"}, headers={"Retry-After": retry_after})])
    with ScriptedServer(away_then(script, lambda r: next(answers, Reply(201)))) as server:
        writer = make_writer(server.base_url, retry_after_max=0.3)
        spool_while_away(writer, ["a", "b", "c"])
        with caplog.at_level(logging.WARNING, logger="fastsend"):
            script["phase"] = "up"
            assert wait_until(lambda: writer.stats()["drained"] == 3, DRAIN_SECONDS), writer.stats()
    assert any("asked to wait" in r.getMessage() and "0.3s" in r.getMessage() for r in caplog.records)


def test_drain_wakes_a_drainer_told_to_wait(make_writer):
    script: dict[str, Any] = {}
    answers = iter([Reply(503, {"detail": "busy"}, headers={"Retry-After": "86400"})])
    answered: list[Received] = []

    def up(received: Received) -> Reply:
        answered.append(received)
        return next(answers, Reply(201))

    with ScriptedServer(away_then(script, up)) as server:
        writer = make_writer(server.base_url)  # retry_after_max: the default 60 s
        spool_while_away(writer, ["a", "b"])
        script["phase"] = "up"
        assert wait_until(lambda: len(answered) == 1, TIMEOUT)  # the 503: the drainer now waits 60 s
        time.sleep(0.2)
        assert writer.drain(5.0) == 0, writer.stats()  # drain() ends the wait
        assert writer.stats()["drained"] == 2


# ---------------------------------------------------------------- SIGTERM

CHILD = textwrap.dedent(
    """
    import signal, sys, time
    import numpy as np
    from fastsend import Event, EventWriter

    url, spool, mode, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if mode == "own-handler":
        def stop(signum, frame):
            print("own handler", flush=True)
            sys.exit(3)  # what the README says to call in a handler of one's own
        signal.signal(signal.SIGTERM, stop)
    settings = {"spool_dir": spool} if mode != "no-spool" else {}
    writer = EventWriter(
        url, exit_flush_timeout=0.5, request_timeout=30, deadline=60, handle_sigterm=(mode != "off"), **settings
    )
    frame = np.zeros((16, 16, 3), np.uint8)
    for number in range(count):
        writer.submit(Event.custom(value=f"e-{number}"), frame)
    print("ready", flush=True)
    time.sleep(60)
    """
)


def run_until_sigterm(url: str, spool_dir: Path, mode: str, server: ScriptedServer) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, str(spool_dir), mode, "60"],
        stdout=subprocess.PIPE,
        text=True,
        env=python_env(),
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    server.wait_for_requests(8, timeout=TIMEOUT)  # max_connections requests are on the wire, the rest wait
    child.send_signal(signal.SIGTERM)
    child.wait(TIMEOUT)
    return child


@pytest.mark.parametrize(
    "mode, exit_code, spooled",
    [("default", 143, 60), ("own-handler", 3, 60), ("off", -signal.SIGTERM, 0), ("no-spool", -signal.SIGTERM, 0)],
)
def test_sigterm_ends_the_process_with_every_pending_event_in_the_spool(spool_dir, mode, exit_code, spooled):
    with ScriptedServer(Reply(hold=True)) as server:  # a service that never answers: all 60 stay pending
        child = run_until_sigterm(server.base_url, spool_dir, mode, server)
        output = child.stdout.read() if child.stdout else ""
    assert child.returncode == exit_code, output
    assert len(list(spool_dir.glob("*.event"))) == spooled
    if mode == "own-handler":
        assert "own handler" in output


# ---------------------------------------------------------------- deadlines and synchronous sends


@pytest.mark.parametrize("spooled", [False, True])
def test_a_send_whose_deadline_passes_in_the_queue_is_reported_once_and_truly(make_writer, spooled):
    with ScriptedServer(Reply(hold=True)) as server:
        extra = {} if spooled else {"spool_dir": None}
        writer = make_writer(server.base_url, max_in_flight=1, request_timeout=30, deadline=60, **extra)
        held = writer.submit(custom("held"), FRAME)
        server.wait_for_requests(1)
        started = time.monotonic()
        result = writer.send(custom("late"), FRAME, deadline=1.0)
        took = time.monotonic() - started
        assert result.error_status and result.spooled is spooled, result
        assert result.message.startswith("deadline of 1s passed while the event was queued (not sent)")
        assert took < 4.0, f"send(deadline=1) took {took:.1f}s"
        server.release()
        assert held.result(TIMEOUT).error_status is False
        assert writer.drain(DRAIN_SECONDS) == 0
        sent = Counter(value_of(r) for r in server.requests)
    assert sent == Counter({"held": 1, "late": 1 if spooled else 0}) - Counter()


def test_a_send_on_the_wire_at_its_deadline_is_spooled_and_says_so(make_writer):
    with ScriptedServer(Reply(hold=True)) as server:
        writer = make_writer(server.base_url, request_timeout=30, deadline=60)
        result = writer.send(custom("slow"), FRAME, deadline=1.0)
        assert result.error_status and result.spooled, result
        assert "timed out" in result.message and "spooled" in result.message
        server.release()
        server.script = Reply(201)
        assert writer.drain(DRAIN_SECONDS) == 0
        keys = {r.headers["Idempotency-Key"] for r in server.requests}
    assert len(keys) == 1  # one event, one key, however often it was sent


def test_a_201_whose_body_is_cut_off_is_not_retried_nor_spooled(make_writer):
    cut = b'HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 10\r\n\r\n{"'

    async def close(writer: Any) -> None:
        writer.close()

    with RawServer(answer(cut, then=close)) as server:
        writer = make_writer(server.base_url, retries=5)
        result = writer.send(custom("stored"), FRAME)
        stats = writer.stats()
    assert result.error_status and not result.spooled
    assert "201" in result.message and "probably stored" in result.message
    assert len(server.requests) == 1
    assert stats["failed_by_cause"] == {"bad_response": 1} and stats["spooled"] == 0 and adds_up(stats)


# ---------------------------------------------------------------- writers kept by the block

MANY_URLS = textwrap.dedent(
    """
    import json, os, resource, sys, threading
    import numpy as np
    from fastsend import EventWriterSink

    base, count = sys.argv[1], int(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    sink = EventWriterSink(retries=0)
    frame = np.zeros((16, 16, 3), np.uint8)
    errors, peak_threads, peak_fds = [], 0, 0
    for number in range(count):
        output = sink.run(
            event_schema="custom", custom_value=f"u-{number}", output_image=frame,
            event_ingestion_url=f"{base}/u{number}", fire_and_forget=True,
        )
        if output["error_status"]:
            errors.append(output["message"])
        peak_threads = max(peak_threads, threading.active_count())
        peak_fds = max(peak_fds, len(os.listdir("/proc/self/fd")))
    pending = sink.close(30)
    print(json.dumps({"errors": errors, "threads": peak_threads, "fds": peak_fds, "pending": pending}))
    """
)


def test_three_hundred_urls_under_a_low_descriptor_limit_keep_a_bounded_set_of_writers():
    with ScriptedServer(Reply(201)) as server:
        done = subprocess.run(
            [sys.executable, "-c", MANY_URLS, server.base_url, "300"],
            capture_output=True,
            text=True,
            env={**python_env(), "FASTSEND_MAX_WRITERS": "8"},
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout.strip().splitlines()[-1])
        assert wait_until(lambda: len(server.requests) == 300, TIMEOUT), len(server.requests)
        paths = Counter(r.path for r in server.requests)
    assert report["errors"] == [] and report["pending"] == 0, report
    assert len(paths) == 300 and set(paths.values()) == {1}  # every URL got its event, once
    # 8 writers of a few threads each, plus closers at work: nowhere near one set per URL.
    assert report["threads"] < 120 and report["fds"] < 400, report


# ---------------------------------------------------------------- settings checked when the writer is built


def test_an_unknown_jpeg_backend_is_refused_when_the_writer_is_built(monkeypatch):
    monkeypatch.setenv("FASTSEND_JPEG_BACKEND", "libjpeg")
    with pytest.raises(ValidationError) as refused:
        EventWriter("http://127.0.0.1:9")
    assert refused.value.field == "FASTSEND_JPEG_BACKEND" and refused.value.value == "libjpeg"


def test_a_misspelt_variable_is_named_when_the_writer_is_built(monkeypatch, caplog, make_writer):
    monkeypatch.setenv("FASTSEND_DEADLINES", "3")
    with caplog.at_level(logging.WARNING, logger="fastsend"):
        make_writer("http://127.0.0.1:9")
    (line,) = [r.getMessage() for r in caplog.records if "FASTSEND_DEADLINES" in r.getMessage()]
    assert "is not a fastsend setting" in line and "did you mean FASTSEND_DEADLINE" in line
