"""The public faces: EventWriter's synchronous send, send_batch, lifecycle and fork;
AsyncEventWriter; and the settings from arguments and FASTSEND_* variables.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from typing import Any

import numpy as np
import pybase64
import pytest
import simplejpeg
from support.scripted_server import Reply

import fastsend.send.encoding
from fastsend import AsyncEventWriter, Event, EventWriter, Settings, ValidationError
from fastsend.config import SETTING_ENV_VARS

# Python 3.12 and later warn at every fork of a process that runs threads. Forking while a writer's threads
# run is the case under test: fastsend's at-fork handlers give the child fresh locks, threads and key bytes.
FORK_WITH_THREADS = "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"

pytestmark = pytest.mark.timeout(30)

FAST = {"backoff_base": 0.01, "backoff_max": 0.02, "request_timeout": 3.0, "connect_timeout": 1.0, "deadline": 10.0}
BLUE, RED = (200, 40, 30), (30, 40, 200)  # BGR


def frame(height: int = 32, width: int = 32, bgr: tuple[int, int, int] = BLUE) -> np.ndarray:
    return np.full((height, width, 3), bgr, np.uint8)


def event(external_id: object = "e") -> Event:
    return Event.quality_check(result="pass", external_id=str(external_id))


def mean_bgr(b64: str) -> np.ndarray:
    pixels = simplejpeg.decode_jpeg(pybase64.b64decode(b64, validate=True), colorspace="BGR")
    return pixels.astype(float).mean(axis=(0, 1))


@pytest.fixture
def writer_defaults() -> dict[str, Any]:
    return FAST


# ---------------------------------------------------------------- frame ownership


def test_reused_caller_buffers_and_recycled_snapshots_never_mix_frames(server, make_writer):
    server.script = Reply(201)
    writer = make_writer(server.base_url, encode_threads=1)
    colours = [(10 + 40 * i, 200 - 30 * i, 60 + 20 * i) for i in range(6)]
    buffer = frame()
    for index, colour in enumerate(colours):
        buffer[:] = colour  # one buffer, rewritten every frame, as a video loop does
        writer.submit(event(index), buffer, input_image=buffer)
        if index % 2:
            assert writer.flush(timeout=10) == 0  # snapshots go back to the pool between events
    assert writer.flush(timeout=10) == 0
    by_id = {r.json["event_data"]["externalId"]: r.json["images"][0] for r in server.requests}
    for index, colour in enumerate(colours):
        entry = by_id[str(index)]
        assert np.abs(mean_bgr(entry["base64Image"]) - colour).max() < 6
        assert entry["inputBase64Image"] == entry["base64Image"]


# ---------------------------------------------------------------- synchronous send


def test_send_encodes_distinct_output_and_input_images(server, make_writer):
    server.script = Reply(201, {"id": 77})
    result = make_writer(server.base_url).send(event(), frame(32, 32, BLUE), input_image=frame(24, 40, RED))
    assert (result.error_status, result.event_id) == (False, "77")
    (received,) = server.requests
    assert received.image_shape("base64Image") == (32, 32)
    assert received.image_shape("inputBase64Image") == (24, 40)
    entry = received.json["images"][0]
    assert np.abs(mean_bgr(entry["base64Image"]) - BLUE).max() < 6
    assert np.abs(mean_bgr(entry["inputBase64Image"]) - RED).max() < 6


@pytest.fixture
def slow_encodes(monkeypatch) -> list[tuple[str, float, float]]:
    """Each image encode takes 0.2 s more and is recorded as (thread name, start, end)."""
    calls: list[tuple[str, float, float]] = []
    real = fastsend.send.encoding.to_base64

    def slow_to_base64(source, options):
        started = time.monotonic()
        time.sleep(0.2)  # long enough that two sequential encodes could not overlap
        encoded = real(source, options)
        calls.append((threading.current_thread().name, started, time.monotonic()))
        return encoded

    monkeypatch.setattr(fastsend.send.encoding, "to_base64", slow_to_base64)
    return calls


def test_send_encodes_output_and_input_on_two_threads_at_once_before_queueing(server, make_writer, slow_encodes):
    writer = make_writer(server.base_url)
    output, original = frame(32, 32, BLUE), frame(24, 40, RED)
    assert writer.send(event(), output, input_image=original).error_status is False
    (first, second) = sorted(slow_encodes, key=lambda call: call[1])
    assert first[0] != second[0] and "fastsend-sync-encode" in first[0] + second[0]
    assert second[1] < first[2]  # overlapping in time
    stats = writer.stats()
    assert stats["snapshot_ms_per_image"] == 0 and writer.stats()["images_encoded"] == 2  # no copies
    assert writer.send(event(), output, input_image=original, copy=True).error_status is False
    assert writer.stats()["images_snapshotted"] == 2  # copies only when asked for, and counted
    entry = server.requests[0].json["images"][0]
    assert np.abs(mean_bgr(entry["inputBase64Image"]) - RED).max() < 6


def test_fire_and_forget_encodes_its_two_images_on_two_encoders_at_once(server, make_writer, slow_encodes):
    writer = make_writer(server.base_url, encode_threads=2)
    result = writer.submit(event(), frame(32, 32, BLUE), input_image=frame(24, 40, RED)).result(10)
    assert result.error_status is False
    (first, second) = sorted(slow_encodes, key=lambda call: call[1])
    assert first[0] != second[0] and second[1] < first[2]  # two encoder threads, overlapping
    entry = server.requests[0].json["images"][0]
    assert np.abs(mean_bgr(entry["base64Image"]) - BLUE).max() < 6
    assert np.abs(mean_bgr(entry["inputBase64Image"]) - RED).max() < 6


@pytest.mark.parametrize("failing", ["output", "input"])
@pytest.mark.parametrize("threads", [1, 2])
def test_an_image_that_fails_to_encode_fails_its_event_once(server, make_writer, monkeypatch, failing, threads):
    colour = BLUE if failing == "output" else RED
    real = fastsend.send.encoding.to_base64

    def fail_one(source, options):
        if np.abs(source.array.astype(float).mean(axis=(0, 1)) - colour).max() < 1:
            raise RuntimeError(f"{failing} exploded")
        return real(source, options)

    monkeypatch.setattr(fastsend.send.encoding, "to_base64", fail_one)
    writer = make_writer(server.base_url, encode_threads=threads)
    futures = [writer.submit(event(n), frame(32, 32, BLUE), input_image=frame(24, 40, RED)) for n in range(3)]
    ok = writer.submit(event("ok"), frame(16, 16, (90, 90, 90)), input_image=frame(16, 16, (60, 60, 60)))
    assert writer.flush(10) == 0
    assert all(
        f.result().error_status and f"encoding failed: {failing} exploded" in f.result().message for f in futures
    )
    assert ok.result().error_status is False
    stats = writer.stats()
    assert (stats["submitted"], stats["sent"], stats["failed_by_cause"]) == (4, 1, {"encode_error": 3})
    assert stats["in_flight"] == 0 and len(server.requests) == 1


def test_send_whose_image_fails_to_encode_is_counted_failed(server, make_writer, monkeypatch):
    def broken(source, options):
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(fastsend.send.encoding, "to_base64", broken)
    writer = make_writer(server.base_url)
    result = writer.send(event(), frame(), input_image=frame(24, 40, RED))
    assert result.error_status is True and "encoding failed: encoder exploded" in result.message
    stats = writer.stats()
    assert (stats["submitted"], stats["failed_by_cause"]) == (1, {"encode_error": 1})
    assert server.requests == []


def test_send_with_one_image_as_both_sends_it_twice_identical(server, make_writer):
    image = frame()
    writer = make_writer(server.base_url)
    assert writer.send(event(), image, input_image=image).error_status is False
    entry = server.requests[0].json["images"][0]
    assert entry["base64Image"] == entry["inputBase64Image"]
    assert server.requests[0].image_shape() == (32, 32)


def test_send_without_input_image_sends_no_input_key(server, make_writer):
    assert make_writer(server.base_url).send(event(), frame()).error_status is False
    assert "inputBase64Image" not in server.requests[0].json["images"][0]


def test_send_is_refused_inside_a_running_event_loop(make_writer):
    writer = make_writer("http://127.0.0.1:9")

    async def inside() -> None:
        with pytest.raises(RuntimeError, match="AsyncEventWriter"):
            writer.send(event(), frame())
        with pytest.raises(RuntimeError, match="AsyncEventWriter"):
            writer.send_batch([{"event": event(), "image": frame()}])

    asyncio.run(inside())
    assert writer.stats()["submitted"] == 0


# ---------------------------------------------------------------- send_batch


def batch_script(received):
    external_id = received.json["event_data"]["externalId"]
    if external_id == "fails":
        return Reply(400, {"detail": "rejected by the service"})
    return Reply(201, {"id": f"id-{external_id}"})


def test_send_batch_keeps_order_and_isolates_failures(server, make_writer):
    server.script = batch_script
    writer = make_writer(server.base_url)
    items = [
        {"event": event("a"), "image": frame()},
        {"event": event("bad"), "image": frame().astype(np.float32)},  # invalid: refused before sending
        {"event": event("fails"), "image": frame()},  # the service answers 400
        {"event": event("b"), "image": frame(), "input_image": frame(16, 16)},
        {"event": event("c"), "image": frame(), "not_an_option": 1},  # invalid: unknown argument
        {"event": event("d"), "image": frame()},
    ]
    results = writer.send_batch(items)
    assert [r.error_status for r in results] == [False, True, True, False, True, False]
    assert [r.event_id for r in results] == ["id-a", "", "", "id-b", "", "id-d"]
    assert "index 1" in results[1].message and "dtype" in results[1].message
    assert "rejected by the service" in results[2].message
    assert "index 4" in results[4].message and "not_an_option" in results[4].message
    assert sorted(r.json["event_data"]["externalId"] for r in server.requests) == ["a", "b", "d", "fails"]


# ---------------------------------------------------------------- lifecycle


def test_context_manager_flushes_and_closes(server):
    with EventWriter(server.base_url, **FAST) as writer:
        futures = [writer.submit(event(i), frame()) for i in range(5)]
    assert all(f.done() and f.result().error_status is False for f in futures)
    assert len(server.requests) == 5
    late = writer.submit(event("late"), frame()).result(timeout=1)
    assert late.error_status is True and "closed" in late.message
    assert writer.close() == 0  # a second close is harmless


def _send_from_child(writer: EventWriter, results) -> None:
    try:
        fresh = writer._dispatcher.loop.loop is None and writer.stats()["submitted"] == 0
        future = writer.submit(event("child"), frame())
        pending = writer.flush(10)
        result = future.result(timeout=10)
        results.put((fresh, pending, result.error_status, result.event_id))
        writer.close(5)
    except BaseException as exc:  # noqa: BLE001 - report it, do not hang the parent
        results.put(("error", repr(exc)))


@pytest.mark.filterwarnings(FORK_WITH_THREADS)
def test_after_fork_the_child_gets_fresh_threads_and_sends(server, make_writer):
    writer = make_writer(server.base_url)
    assert writer.send(event("parent-before"), frame()).error_status is False
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_send_from_child, args=(writer, results))
    child.start()
    try:
        outcome = results.get(timeout=20)
    finally:
        child.join(10)
    assert outcome == (True, 0, False, "2"), outcome
    assert child.exitcode == 0
    assert writer.send(event("parent-after"), frame()).event_id == "3"
    assert [r.json["event_data"]["externalId"] for r in server.requests] == ["parent-before", "child", "parent-after"]
    assert writer.stats()["sent"] == 2  # the child's counters were its own


# ---------------------------------------------------------------- AsyncEventWriter


def test_async_event_writer_inside_asyncio_run(server):
    server.script = batch_script

    async def main():
        async with AsyncEventWriter(server.base_url, **FAST) as writer:
            sent = await writer.send(event("one"), frame())
            submitted = writer.submit(event("two"), frame())
            batch = await writer.send_batch(
                [{"event": event("three"), "image": frame()}, {"event": "not an event", "image": frame()}]
            )
            pending = await writer.flush(5)
            stats = writer.stats()
            return sent, await submitted, batch, pending, stats, writer

    sent, submitted, batch, pending, stats, writer = asyncio.run(main())
    assert (sent.error_status, sent.event_id) == (False, "id-one")
    assert submitted.event_id == "id-two"
    assert batch[0].event_id == "id-three"
    assert batch[1].error_status is True and "index 1" in batch[1].message and "event" in batch[1].message
    assert pending == 0
    assert stats["sent"] == 3 and stats["submitted"] == 3
    late = asyncio.run(writer.send(event("late"), frame()))  # closed by the async with
    assert late.error_status is True and "closed" in late.message


def test_async_close_resolves_pending_events(server):
    server.script = Reply(hold=True)

    async def main():
        writer = AsyncEventWriter(server.base_url, **FAST)
        futures = [writer.submit(event(i), frame()) for i in range(3)]
        assert await writer.flush(0.1) == 3
        assert await writer.close(0.1) == 3
        return await asyncio.gather(*futures)

    results = asyncio.run(main())
    assert all(r.error_status and "closed" in r.message for r in results)


# ---------------------------------------------------------------- settings and FASTSEND_* variables

# setting -> (value in the environment, what Settings holds)
GOOD_VALUES = {
    "url": ("http://example.test:9000/", "http://example.test:9000"),
    "api_key": ("k-123", "k-123"),
    "max_connections": ("3", 3),
    "max_in_flight": ("5", 5),
    "queue_size": (" 7 ", 7),
    "queue_bytes": ("1048576", 1048576),
    "overflow": ("Drop_Newest", "drop_newest"),
    "block_timeout": ("0.5", 0.5),
    "request_timeout": ("1.5", 1.5),
    "connect_timeout": ("0.25", 0.25),
    "retries": ("0", 0),
    "backoff_base": ("0.05", 0.05),
    "backoff_max": ("2", 2.0),
    "deadline": ("12.5", 12.5),
    "jpeg_quality": ("80", 80),
    "jpeg_subsampling": ("444", "444"),
    "jpeg_max_side": ("640", 640),
    "encode_threads": ("3", 3),
    "loop": ("asyncio", "asyncio"),
    "exit_flush_timeout": ("1.5", 1.5),
    "spool_dir": ("/tmp/fastsend-spool", "/tmp/fastsend-spool"),
    "spool_max_bytes": ("2048", 2048),
    "ca_file": (__file__, __file__),
    "tls_verify": ("false", False),
    "retry_after_max": ("5", 5.0),
    "handle_sigterm": ("no", False),
    "max_writers": ("3", 3),
}

# setting -> a value its variable must refuse (api_key and spool_dir take any string)
BAD_VALUES = {
    "url": "ftp://example.test",
    "max_connections": "0",
    "max_in_flight": "1.5",
    "queue_size": "-1",
    "queue_bytes": "lots",
    "overflow": "drop_random",
    "block_timeout": "-1",
    "request_timeout": "0",
    "connect_timeout": "nan",
    "retries": "two",
    "backoff_base": "-0.1",
    "backoff_max": "inf",
    "deadline": "0",
    "jpeg_quality": "101",
    "jpeg_subsampling": "410",
    "jpeg_max_side": "0",
    "encode_threads": "0",
    "loop": "trio",
    "exit_flush_timeout": "-5",
    "spool_max_bytes": "0",
    "ca_file": "/no/such/ca.pem",
    "tls_verify": "maybe",
    "retry_after_max": "-1",
    "handle_sigterm": "sometimes",
    "max_writers": "0",
}


def test_the_tables_cover_every_setting():
    assert set(GOOD_VALUES) == set(SETTING_ENV_VARS)
    assert set(BAD_VALUES) == set(SETTING_ENV_VARS) - {"api_key", "spool_dir"}


@pytest.mark.parametrize("name", sorted(GOOD_VALUES))
def test_every_environment_variable_is_honoured(monkeypatch, name):
    raw, expected = GOOD_VALUES[name]
    monkeypatch.setenv(SETTING_ENV_VARS[name], raw)
    writer = EventWriter()
    try:
        assert getattr(writer.settings, name) == expected
        others = {field: getattr(writer.settings, field) for field in SETTING_ENV_VARS if field != name}
        defaults = {field: getattr(Settings(), field) for field in others}
        if name == "spool_dir":
            defaults["overflow"] = "spill"  # with a spool, a full queue spills unless told otherwise
        assert others == defaults
    finally:
        writer.close()


@pytest.mark.parametrize("name", sorted(BAD_VALUES))
def test_a_bad_environment_value_names_the_variable_and_the_value(monkeypatch, name):
    variable, raw = SETTING_ENV_VARS[name], BAD_VALUES[name]
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ValidationError) as raised:
        EventWriter()
    assert variable in str(raised.value) and raw in str(raised.value)


def test_an_argument_beats_the_environment(monkeypatch):
    monkeypatch.setenv("FASTSEND_QUEUE_SIZE", "not even a number")
    monkeypatch.setenv("FASTSEND_OVERFLOW", "raise")
    monkeypatch.setenv("FASTSEND_URL", "http://from-env:1")
    writer = EventWriter("http://from-argument:2", queue_size=9, overflow="block")
    assert (writer.settings.queue_size, writer.settings.overflow) == (9, "block")
    assert writer.url == "http://from-argument:2/v2/events"
    writer.close()


def test_a_bad_argument_names_the_argument_and_an_unknown_one_is_refused():
    with pytest.raises(ValidationError, match=r"max_in_flight.*'zero'"):
        EventWriter("http://h:1", max_in_flight="zero")
    with pytest.raises(ValidationError, match="url"):
        EventWriter("localhost:8001")
    with pytest.raises(TypeError, match="max_inflight"):
        EventWriter("http://h:1", max_inflight=3)


def test_environment_url_and_jpeg_settings_reach_the_wire(server, monkeypatch):
    monkeypatch.setenv("FASTSEND_URL", server.base_url + "//")
    monkeypatch.setenv("FASTSEND_JPEG_MAX_SIDE", "16")
    monkeypatch.setenv("EVENT_INGESTION_API_KEY", "env-key")
    with EventWriter(**FAST) as writer:
        assert writer.send(event(), frame(32, 32), input_image=frame(32, 24)).error_status is False
    (received,) = server.requests
    assert received.path == "/v2/events"
    assert received.headers["X-API-Key"] == "env-key"
    assert received.image_shape("base64Image") == (16, 16)
    assert max(received.image_shape("inputBase64Image")) <= 16
