"""The block's pool of writers: eviction never costs an event, and one writer per URL whatever a call's timeout."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import Future
from typing import Any

import numpy as np
import pytest
from support.books import adds_up
from support.scripted_server import ScriptedServer
from support.service_process import wait_until

from fastsend import EventWriterSink, Result

pytestmark = pytest.mark.timeout(90)

FRAME = np.full((16, 16, 3), 90, np.uint8)
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "deadline": 10.0}


def call(sink: EventWriterSink, url: str, value: str, **params: Any) -> tuple[Result, Future[Result] | None]:
    return sink.dispatch(
        event_schema="custom", custom_value=value, output_image=FRAME, event_ingestion_url=url, **params
    )


def values(server: ScriptedServer) -> Counter[str]:
    return Counter(str(r.json["event_data"]["value"]) for r in server.requests)


def test_twenty_cameras_round_robin_through_sixteen_spooled_writers_lose_and_refuse_nothing(server, tmp_path):
    sink = EventWriterSink(**FAST, spool_dir=str(tmp_path / "spool"))  # max_writers: 16 by default
    answers, futures = [], []
    try:
        for number in range(200):
            result, future = call(sink, f"{server.base_url}/cam{number % 20}", f"e-{number}")
            answers.append(result)
            futures.append(future)
        results = [future.result(20) for future in futures if future is not None]
        books = [writer.stats() for writer in sink.pool.writers()]
    finally:
        sink.close(5)
    assert [a.message for a in answers if a.error_status] == []
    assert len(results) == 200 and [r.message for r in results if r.error_status] == []
    assert wait_until(lambda: len(server.requests) >= 200, 10)
    assert values(server) == Counter({f"e-{n}": 1 for n in range(200)})
    assert len(books) == 16 and all(adds_up(stats) for stats in books)


def test_a_writer_evicted_while_a_call_uses_it_still_takes_that_calls_event(server):
    sink = EventWriterSink(**FAST, max_writers=1)  # every call to the other URL evicts the writer in use
    futures: list[Future[Result]] = []
    lock = threading.Lock()

    def camera(name: str) -> None:
        for number in range(15):
            result, future = call(sink, f"{server.base_url}/{name}", f"{name}-{number}")
            assert not result.error_status and future is not None
            with lock:
                futures.append(future)

    threads = [threading.Thread(target=camera, args=(f"cam{n}",)) for n in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        results = [future.result(20) for future in futures]
    finally:
        sink.close(5)
    assert len(results) == 60
    assert [r.message for r in results if r.error_status] == []  # never "writer is closed"
    assert values(server) == Counter({f"cam{c}-{n}": 1 for c in range(4) for n in range(15)})


def test_one_writer_per_url_whatever_the_calls_request_timeout(server):
    sink = EventWriterSink(**FAST)
    try:
        first = sink.writer_for(server.base_url, None)
        for number in range(20):
            result, future = call(sink, server.base_url, f"t-{number}", request_timeout=1 + number % 2)
            assert not result.error_status and future is not None
        sync, _ = call(sink, server.base_url, "sync", fire_and_forget=False, request_timeout=3)
        assert sink.pool.writers() == [first]
        assert sink.flush(10) == 0
        stats = first.stats()
    finally:
        sink.close(5)
    assert not sync.error_status
    assert stats["submitted"] == stats["sent"] == 21 and adds_up(stats)


def test_a_successor_for_a_url_waits_for_its_predecessor_to_close_and_drains_its_spool(tmp_path):
    with ScriptedServer() as server:
        sink = EventWriterSink(**FAST, max_writers=1, spool_dir=str(tmp_path / "spool"), exit_flush_timeout=1)
        try:
            server.script = lambda received: 503  # busy: what the first writer holds goes to its spool
            for number in range(3):
                call(sink, f"{server.base_url}/a", f"a-{number}")
            server.script = lambda received: 201
            call(sink, f"{server.base_url}/b", "b-0")  # evicts /a, which flushes and closes meanwhile
            result, future = call(sink, f"{server.base_url}/a", "a-again")  # its spool directory, free again
            assert not result.error_status and future is not None and not future.result(20).error_status
            assert sink.flush(10) == 0
            (writer,) = sink.pool.writers()
            assert wait_until(lambda: writer.stats()["spool_pending"] == 0, 15), writer.stats()
            stats = writer.stats()
        finally:
            sink.close(5)
        counts = values(server)
    assert {f"a-{n}" for n in range(3)} | {"b-0", "a-again"} <= set(counts)
    assert adds_up(stats)
