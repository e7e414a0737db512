"""The sending side against a scripted loopback server: responses, retries, timeouts,
headers, the body on the wire, overflow policies, flush / close, and the counters.

Every server is started and stopped by its test; settings keep frames tiny and
timeouts and backoffs short.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from email.utils import formatdate
from typing import Any

import numpy as np
import pybase64
import pytest
import simplejpeg
import supervision as sv
from support.scripted_server import Reply, ScriptedServer, unused_port

from fastsend import Event, QueueFullError, RetryPolicy

pytestmark = pytest.mark.timeout(30)

FAST = {"backoff_base": 0.01, "backoff_max": 0.02, "request_timeout": 3.0, "connect_timeout": 1.0, "deadline": 10.0}
TIMESTAMP = "2026-11-26T04:44:12.123456+00:00"


def frame(height: int = 32, width: int = 32) -> np.ndarray:
    return np.full((height, width, 3), (40, 90, 200), np.uint8)


def event(external_id: object = "e") -> Event:
    return Event.quality_check(result="pass", external_id=str(external_id))


def external_ids(server: ScriptedServer) -> list[str]:
    return [r.json["event_data"]["externalId"] for r in server.requests]


@pytest.fixture
def writer_defaults() -> dict[str, Any]:
    return FAST


# ---------------------------------------------------------------- responses


@pytest.mark.parametrize("server_id", [42, "evt-7f3a"])
def test_201_returns_the_servers_id_as_a_string(server, make_writer, server_id):
    server.script = Reply(201, {"id": server_id})
    result = make_writer(server.base_url).send(event(), frame())
    assert result.error_status is False
    assert result.event_id == str(server_id)
    assert len(server.requests) == 1


def test_529_then_201_succeeds_after_exactly_one_retry(server, make_writer):
    server.script = [Reply(529, {"detail": "draining uploads"}), Reply(201, {"id": 5})]
    writer = make_writer(server.base_url, retries=4)
    result = writer.send(event(), frame())
    assert (result.error_status, result.event_id) == (False, "5")
    assert len(server.requests) == 2
    stats = writer.stats()
    assert (stats["retried"], stats["sent"], stats["failed"]) == (1, 1, 0)


def test_529_every_time_reports_the_service_at_capacity(server, make_writer):
    server.script = Reply(529, {"detail": "draining uploads"})
    writer = make_writer(server.base_url, retries=2)
    result = writer.send(event(), frame())
    assert result.error_status is True and result.event_id == ""
    assert "capacity" in result.message and "backpressure" in result.message
    assert "draining uploads" in result.message
    assert len(server.requests) == 3
    stats = writer.stats()
    assert stats["retried"] == 2
    assert stats["failed_by_cause"] == {"http_529": 1}


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_transient_statuses_are_retried(server, make_writer, status):
    server.script = [Reply(status, {"detail": "later"}), Reply(201, {"id": 1})]
    writer = make_writer(server.base_url)
    assert writer.send(event(), frame()).event_id == "1"
    assert len(server.requests) == 2
    assert writer.stats()["retried"] == 1


def test_retry_after_seconds_delays_the_retry(server, make_writer):
    server.script = [Reply(503, headers={"Retry-After": "1"}), Reply(201, {"id": 9})]
    writer = make_writer(server.base_url, backoff_base=0.001, backoff_max=0.001)
    assert writer.send(event(), frame()).event_id == "9"
    first, second = server.requests
    assert 0.95 <= second.at - first.at < 3.0  # only Retry-After explains the wait: backoff is ≤ 1 ms


def test_retry_after_http_date_delays_the_retry(server, make_writer):
    def script(received):
        if received.index == 0:  # an HTTP date 2 s ahead, truncated to whole seconds: a wait in (1, 2]
            return Reply(529, {"detail": "busy"}, headers={"Retry-After": formatdate(time.time() + 2, usegmt=True)})
        return Reply(201, {"id": 3})

    server.script = script
    writer = make_writer(server.base_url, backoff_base=0.001, backoff_max=0.001)
    assert writer.send(event(), frame()).event_id == "3"
    first, second = server.requests
    assert 0.9 <= second.at - first.at < 3.5


def test_400_returns_the_detail_and_is_not_retried(server, make_writer):
    detail = "event_data.result: 'maybe' must be one of pass, fail"
    server.script = Reply(400, {"detail": detail})
    writer = make_writer(server.base_url, retries=4)
    result = writer.send(event(), frame())
    assert result.error_status is True and result.event_id == ""
    assert detail in result.message and "400" in result.message
    assert len(server.requests) == 1
    stats = writer.stats()
    assert stats["retried"] == 0
    assert stats["failed_by_cause"] == {"http_400": 1}


@pytest.mark.parametrize("body", ["<html>upstream exploded</html>", '{"error": "no detail key"}'])
def test_an_error_body_without_detail_is_carried_as_raw_text(server, make_writer, body):
    server.script = Reply(422, body)
    result = make_writer(server.base_url).send(event(), frame())
    assert result.error_status is True
    assert body in result.message and "422" in result.message
    assert len(server.requests) == 1


def test_a_dropped_connection_is_retried(server, make_writer):
    server.script = [Reply(drop=True), Reply(201, {"id": 11})]
    writer = make_writer(server.base_url)
    assert writer.send(event(), frame()).event_id == "11"
    assert len(server.requests) == 2
    assert writer.stats()["retried"] == 1


def test_a_server_that_never_answers_fails_after_the_documented_bound(server, make_writer):
    server.script = Reply(delay=60)
    settings = {"request_timeout": 0.3, "retries": 1, "backoff_base": 0.01, "backoff_max": 0.01, "deadline": 5.0}
    writer = make_writer(server.base_url, **settings)
    bound = RetryPolicy(1, 0.01, 0.01, 5.0).worst_case_seconds(0.3)
    started = time.monotonic()
    result = writer.send(event(), frame())
    elapsed = time.monotonic() - started
    assert result.error_status is True
    assert "timed out" in result.message
    assert len(server.requests) == 2
    assert writer.stats()["retried"] == 1
    assert writer.stats()["failed_by_cause"] == {"timeout": 1}
    assert 0.6 <= elapsed <= bound + 1.0  # + thread start and encoding


def test_the_deadline_bounds_a_synchronous_send_whatever_the_retries(server, make_writer):
    server.script = Reply(delay=60)
    writer = make_writer(server.base_url, request_timeout=0.4, retries=50, deadline=1.0)
    started = time.monotonic()
    result = writer.send(event(), frame())
    elapsed = time.monotonic() - started
    assert result.error_status is True
    assert "timed out" in result.message and "deadline" in result.message
    assert 0.9 <= elapsed <= 1.0 + 0.5


def test_connection_refused_is_retried_then_reported(make_writer):
    port = unused_port()
    writer = make_writer(f"http://127.0.0.1:{port}", retries=2)
    result = writer.send(event(), frame())
    assert result.error_status is True
    assert "connection error" in result.message.lower() and f"127.0.0.1:{port}" in result.message
    assert "3 attempts" in result.message
    stats = writer.stats()
    assert stats["retried"] == 2
    assert stats["failed_by_cause"] == {"connection": 1}


# ---------------------------------------------------------------- headers and body


def test_idempotency_key_is_kept_across_retries_and_new_per_event(server, make_writer):
    server.script = lambda received: Reply(529) if received.index < 2 else Reply(201)
    writer = make_writer(server.base_url)
    assert writer.send(event("a"), frame()).error_status is False
    assert writer.send(event("b"), frame()).error_status is False
    keys = [r.headers["Idempotency-Key"] for r in server.requests]
    assert len(keys) == 4
    assert keys[0] == keys[1] == keys[2] != keys[3]
    for key in keys:
        assert uuid.UUID(key).version == 4 and str(uuid.UUID(key)) == key


@pytest.mark.parametrize(
    ("argument", "environment", "expected"),
    [
        ("s3cret", None, "s3cret"),
        (None, "from-env", "from-env"),
        ("argument-wins", "from-env", "argument-wins"),
        (None, "", None),
        (None, None, None),
    ],
)
def test_api_key_header_present_only_when_a_key_is_set(
    server, make_writer, monkeypatch, argument, environment, expected
):
    if environment is not None:
        monkeypatch.setenv("EVENT_INGESTION_API_KEY", environment)
    writer = make_writer(server.base_url, api_key=argument)
    assert writer.send(event(), frame()).error_status is False
    (received,) = server.requests
    if expected is None:
        assert "X-API-Key" not in received.headers
    else:
        assert received.headers.getall("X-API-Key") == [expected]


def test_the_body_on_the_wire_has_the_exact_structure(server, make_writer):
    detections = sv.Detections(
        xyxy=np.array([[10, 20, 20, 40]], float), confidence=np.array([0.75]), data={"class_name": np.array(["bolt"])}
    )
    evt = Event.quality_check(
        result="fail", external_id="cam-1/42", custom_metadata={"line": "A", "shift": 2}, inference_timestamp=TIMESTAMP
    )
    writer = make_writer(server.base_url)
    output, original = frame(32, 32), frame(24, 40)
    future = writer.submit(evt, output, input_image=original, label="frame-42", object_detections=detections)
    assert future.result(timeout=10).error_status is False
    (received,) = server.requests
    assert (received.method, received.path) == ("POST", "/v2/events")
    assert received.headers["Content-Type"] == "application/json"
    assert int(received.headers["Content-Length"]) == len(received.raw)
    body = dict(received.json)
    images = body.pop("images")
    assert body == {
        "inference_timestamp": TIMESTAMP,
        "event_schema": "quality_check",
        "event_data": {"result": "fail", "externalId": "cam-1/42"},
        "displayImagePosition": 0,
        "custom_metadata": {"line": "A", "shift": 2},
    }
    assert len(images) == 1
    entry = images[0]
    assert set(entry) == {"base64Image", "inputBase64Image", "label", "objectDetections"}
    assert entry["label"] == "frame-42"
    assert entry["objectDetections"] == [
        {"class": "bolt", "x": 15.0, "y": 30.0, "width": 10.0, "height": 20.0, "confidence": 0.75}
    ]
    assert received.image_shape("base64Image") == (32, 32)
    assert received.image_shape("inputBase64Image") == (24, 40)
    pixels = simplejpeg.decode_jpeg(pybase64.b64decode(entry["base64Image"]), colorspace="BGR")
    assert np.abs(pixels.astype(int).mean(axis=(0, 1)) - (40, 90, 200)).max() < 6  # BGR kept BGR


# ---------------------------------------------------------------- overflow policies


def held_writer(make_writer, server, **settings):
    """One event in flight (held by the server), so the queue alone takes the next ones."""
    server.script = Reply(hold=True)
    writer = make_writer(server.base_url, max_in_flight=1, encode_threads=1, **{"queue_size": 3, **settings})
    first = writer.submit(event(0), frame())
    server.wait_for_requests(1)
    return writer, first


def test_drop_oldest_drops_the_oldest_queued_events(server, make_writer):
    writer, first = held_writer(make_writer, server, overflow="drop_oldest")
    futures = [first] + [writer.submit(event(i), frame()) for i in range(1, 6)]
    dropped = [f.result(timeout=1) for f in futures[1:3]]  # resolved at once, while the server holds
    for result in dropped:
        assert result.error_status is True and "drop_oldest" in result.message and "queue full" in result.message
    assert not any(f.done() for f in futures[3:])
    stats = writer.stats()
    assert stats["dropped_by_reason"] == {"queue_full_drop_oldest": 2}
    assert (stats["queued"], stats["in_flight"]) == (3, 1)
    server.release()
    assert writer.flush(10) == 0
    assert all(futures[i].result().error_status is False for i in (0, 3, 4, 5))
    assert external_ids(server) == ["0", "3", "4", "5"]


def test_drop_newest_drops_the_incoming_events(server, make_writer):
    writer, first = held_writer(make_writer, server, overflow="drop_newest")
    futures = [first] + [writer.submit(event(i), frame()) for i in range(1, 6)]
    for future in futures[4:]:
        result = future.result(timeout=1)
        assert result.error_status is True and "drop_newest" in result.message
    assert writer.stats()["dropped_by_reason"] == {"queue_full_drop_newest": 2}
    server.release()
    assert writer.flush(10) == 0
    assert external_ids(server) == ["0", "1", "2", "3"]


def test_a_burst_of_drops_is_logged_once_with_its_count(server, make_writer, caplog):
    writer, _ = held_writer(make_writer, server, overflow="drop_newest")
    for i in range(1, 4):
        writer.submit(event(i), frame())
    with caplog.at_level("WARNING", logger="fastsend"):
        for i in range(4, 14):
            writer.submit(event(i), frame())
    drop_lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(drop_lines) == 1  # within a second: one line, not ten
    assert writer.stats()["dropped_by_reason"] == {"queue_full_drop_newest": 10}
    server.release()
    assert writer.flush(10) == 0


def test_raise_refuses_with_queue_full_error(server, make_writer):
    writer, first = held_writer(make_writer, server, overflow="raise")
    futures = [first] + [writer.submit(event(i), frame()) for i in range(1, 4)]
    for i in (4, 5):
        with pytest.raises(QueueFullError, match="queue full"):
            writer.submit(event(i), frame())
    assert writer.stats()["dropped_by_reason"] == {"queue_full_raise": 2}
    server.release()
    assert writer.flush(10) == 0
    assert all(f.result().error_status is False for f in futures)
    assert external_ids(server) == ["0", "1", "2", "3"]
    stats = writer.stats()
    assert stats["submitted"] == stats["sent"] + stats["failed"] + stats["dropped"] == 6


def test_block_gives_up_after_block_timeout(server, make_writer):
    writer, _ = held_writer(make_writer, server, overflow="block", block_timeout=0.2)
    for i in range(1, 4):
        writer.submit(event(i), frame())
    started = time.monotonic()
    future = writer.submit(event(4), frame())
    waited = time.monotonic() - started
    assert 0.18 <= waited < 2.0
    result = future.result(timeout=0)
    assert result.error_status is True and "block" in result.message and "0.2s" in result.message
    assert writer.stats()["dropped_by_reason"] == {"queue_full_block_timeout": 1}
    server.release()
    assert writer.flush(10) == 0
    assert external_ids(server) == ["0", "1", "2", "3"]


def test_block_waits_for_room_and_then_admits(server, make_writer):
    writer, _ = held_writer(make_writer, server, overflow="block", block_timeout=10)
    for i in range(1, 4):
        writer.submit(event(i), frame())
    submitted: list = []
    blocked = threading.Thread(target=lambda: submitted.append(writer.submit(event(4), frame())))
    started = time.monotonic()
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive(), "submit should wait while the queue is full"
    server.release()  # the held event completes, one queued event moves on: room
    blocked.join(5)
    assert not blocked.is_alive() and time.monotonic() - started < 5
    assert submitted[0].result(timeout=10).error_status is False
    assert writer.flush(10) == 0
    assert writer.stats()["dropped_by_reason"] == {}
    assert external_ids(server) == ["0", "1", "2", "3", "4"]


def test_queue_bytes_bounds_the_queue(server, make_writer):
    size = frame().nbytes
    writer, first = held_writer(make_writer, server, overflow="drop_newest", queue_size=100, queue_bytes=2 * size)
    futures = [first] + [writer.submit(event(i), frame()) for i in range(1, 6)]
    assert [f.done() for f in futures] == [False, False, False, True, True, True]
    stats = writer.stats()
    assert stats["dropped_by_reason"] == {"queue_full_drop_newest": 3}
    assert (stats["queued"], stats["queued_bytes"]) == (2, 2 * size)
    server.release()
    assert writer.flush(10) == 0
    assert external_ids(server) == ["0", "1", "2"]


def test_an_event_larger_than_queue_bytes_still_goes_alone(server, make_writer):
    writer, first = held_writer(make_writer, server, overflow="drop_newest", queue_bytes=100)
    alone = writer.submit(event(1), frame())
    refused = writer.submit(event(2), frame())
    assert refused.result(timeout=1).error_status is True
    server.release()
    assert first.result(timeout=10).error_status is False
    assert alone.result(timeout=10).error_status is False
    assert external_ids(server) == ["0", "1"]


def test_an_event_queued_past_its_deadline_is_given_up_unsent(server, make_writer):
    writer, first = held_writer(make_writer, server)
    late = writer.submit(event(1), frame(), deadline=0.2)
    result = late.result(timeout=10)  # settled at its deadline, while the first is still held on the wire
    assert not first.done()
    assert result.error_status is True and result.spooled is False
    assert result.message == "deadline of 0.2s passed while the event was queued (not sent)"
    server.release()
    assert first.result(timeout=10).error_status is False
    assert external_ids(server) == ["0"]
    assert writer.stats()["failed_by_cause"] == {"deadline": 1}


# ---------------------------------------------------------------- flush, close, accounting


def test_flush_returns_the_pending_count(server, make_writer):
    server.script = Reply(hold=True)
    writer = make_writer(server.base_url)
    futures = [writer.submit(event(i), frame()) for i in range(3)]
    assert writer.flush(0.2) == 3
    server.release()
    assert writer.flush(10) == 0
    assert all(f.done() and f.result().error_status is False for f in futures)


def test_close_with_events_pending_resolves_every_future(server, make_writer):
    server.script = Reply(hold=True)
    writer = make_writer(server.base_url, max_in_flight=2, queue_size=10)
    futures = [writer.submit(event(i), frame()) for i in range(5)]
    server.wait_for_requests(2)
    started = time.monotonic()
    assert writer.close(timeout=0.2) == 5
    assert time.monotonic() - started < 3
    assert all(f.done() for f in futures)
    for future in futures:
        result = future.result()
        assert result.error_status is True and "closed" in result.message
    late = writer.submit(event("late"), frame()).result(timeout=1)
    assert late.error_status is True and "closed" in late.message
    stats = writer.stats()
    assert stats["dropped_by_reason"] == {"closed": 6}
    assert stats["submitted"] == 6 and stats["queued"] == stats["in_flight"] == 0


def test_close_right_after_a_burst_leaves_no_future_unresolved(server, make_writer):
    writer = make_writer(server.base_url, max_in_flight=64, queue_size=256, encode_threads=2)
    futures = [writer.submit(event(i), frame(64, 64)) for i in range(200)]
    unsent = writer.close(timeout=0)  # events are queued, encoding, being handed to the loop and in flight
    not_done = [f for f in futures if not f.done()]
    assert not not_done, f"{len(not_done)} future(s) unresolved when close() returned"
    stats = writer.stats()
    assert stats["submitted"] == stats["sent"] + stats["failed"] + stats["dropped"] == 200
    assert unsent == stats["dropped_by_reason"]["closed"] > 0
    assert unsent == sum(f.result().error_status for f in futures)


def test_nothing_is_lost_in_a_mixed_run(server, make_writer):
    def script(received):
        number = int(received.json["event_data"]["externalId"])
        if received.index == 0:
            return Reply(hold=True)
        return Reply(400, {"detail": "no"}) if number % 3 == 0 else Reply(201)

    server.script = script
    writer = make_writer(server.base_url, max_in_flight=2, queue_size=4, overflow="drop_oldest")
    futures = [writer.submit(event(i), frame()) for i in range(30)]
    server.wait_for_requests(1)
    server.release()
    assert writer.flush(10) == 0
    assert all(f.done() for f in futures)
    stats = writer.stats()
    assert stats["submitted"] == 30
    assert stats["sent"] > 0 and stats["failed"] > 0 and stats["dropped"] > 0
    assert stats["submitted"] == stats["sent"] + stats["failed"] + stats["dropped"]
    outcomes = [f.result() for f in futures]
    assert sum(not r.error_status for r in outcomes) == stats["sent"]


def test_stats_count_what_happened(server, make_writer):
    def script(received):
        external_id = received.json["event_data"]["externalId"]
        if external_id == "bad":
            return Reply(400, {"detail": "bad event"})
        if external_id == "flaky" and received.index == 2:
            return Reply(503)
        return Reply(201)

    server.script = script
    writer = make_writer(server.base_url)
    assert writer.stats()["submitted"] == 0
    results = [writer.send(event(name), frame()) for name in ("ok", "bad", "flaky", "ok")]
    assert [r.error_status for r in results] == [False, True, False, False]
    stats = writer.stats()
    assert stats["submitted"] == 4
    assert stats["sent"] == 3
    assert stats["failed"] == 1 and stats["failed_by_cause"] == {"http_400": 1}
    assert stats["dropped"] == 0 and stats["dropped_by_reason"] == {}
    assert stats["retried"] == 1
    assert stats["bytes_sent"] == sum(len(r.raw) for r in server.requests) > 0
    assert 0 < stats["latency_p50_ms"] <= stats["latency_p95_ms"] <= stats["latency_p99_ms"]
    assert stats["encode_ms_per_image"] > 0
    assert stats["queued"] == 0 and stats["in_flight"] == 0


def test_stats_report_the_cpu_spent_snapshotting_and_encoding_per_image(server, make_writer):
    writer = make_writer(server.base_url)
    big = frame(720, 1280)
    writer.submit(event(), big, input_image=big, copy=False).result(10)  # handed over: nothing copied
    assert writer.stats()["snapshot_ms_per_image"] == 0 and writer.stats()["encode_ms_per_image"] > 0
    writer.submit(event(), big, input_image=frame(720, 1280)).result(10)  # two snapshots
    writer.submit(event(), simplejpeg.encode_jpeg(frame(), colorspace="BGR")).result(10)  # encoded: none
    stats = writer.stats()
    assert stats["snapshot_ms_per_image"] > 0
    assert writer.stats()["images_snapshotted"] == 2
    assert writer.stats()["images_encoded"] == 3  # the shared image once, then two


# ---------------------------------------------------------------- the loop thread


def test_threads_start_with_the_writer_and_the_default_loop_is_uvloop(server, make_writer):
    uvloop = pytest.importorskip("uvloop")
    writer = make_writer(server.base_url)
    assert writer._dispatcher.loop.wait_ready(timeout=10)  # started by the constructor: no event was submitted
    assert any(thread.name == "fastsend-loop" for thread in threading.enumerate())
    assert any(thread.name.startswith("fastsend-encode-") for thread in threading.enumerate())
    assert isinstance(writer._dispatcher.loop.loop, uvloop.Loop)
    assert writer.send(event(), frame()).error_status is False


def test_submit_never_waits_for_the_loop_to_start(server, make_writer, monkeypatch):
    import fastsend.send.loop

    may_start = threading.Event()
    real = fastsend.send.loop.new_event_loop

    def slow_loop(kind):
        may_start.wait(10)  # the loop thread is held here until the test lets it go
        return real(kind)

    monkeypatch.setattr(fastsend.send.loop, "new_event_loop", slow_loop)
    writer = make_writer(server.base_url)
    futures = [writer.submit(event(n), frame()) for n in range(3)]  # would hang here if submit waited
    assert not writer._dispatcher.loop.wait_ready(timeout=0)
    may_start.set()
    assert [f.result(timeout=10).error_status for f in futures] == [False] * 3
    assert sorted(external_ids(server)) == ["0", "1", "2"]


def test_a_loop_that_cannot_start_fails_each_event_with_the_reason(server, make_writer, monkeypatch):
    import fastsend.send.loop

    def no_loop(kind):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(fastsend.send.loop, "new_event_loop", no_loop)
    writer = make_writer(server.base_url)
    results = [writer.submit(event(n), frame()).result(timeout=10) for n in range(2)]
    for result in results:
        assert result.error_status is True
        assert result.message == "fastsend could not start its event loop: [Errno 24] Too many open files"
    stats = writer.stats()
    assert stats["failed_by_cause"] == {"internal_error": 2} and stats["pending"] == 0
    assert server.requests == []


@pytest.mark.parametrize("how", ["environment", "argument"])
def test_fastsend_loop_asyncio_forces_plain_asyncio(server, make_writer, monkeypatch, how):
    if how == "environment":
        monkeypatch.setenv("FASTSEND_LOOP", "asyncio")
        writer = make_writer(server.base_url)
    else:
        writer = make_writer(server.base_url, loop="asyncio")
    assert writer.send(event(), frame()).error_status is False
    loop = writer._dispatcher.loop.loop
    assert isinstance(loop, asyncio.BaseEventLoop)
    assert type(loop).__module__.startswith("asyncio")
