"""The books: every event settles exactly once, every in-flight slot comes back, every snapshot adds up.

A property test drives a ``Dispatcher`` over a scripted fake ``Transport`` (with or without
a spool) through random mixes of outcomes, cancellations and queue overflows; direct tests
replay the reported cancellation and close() problems through ``EventWriter`` against
loopback servers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.books import adds_up, close_within
from support.scripted_server import Reply, ScriptedServer, unused_port

from fastsend import Event, QueueFullError, Result
from fastsend.config import Settings
from fastsend.results import Cause, Outcome
from fastsend.send.dispatch import Dispatcher
from fastsend.send.prepare import prepare_event
from fastsend.send.spool import Spool
from fastsend.send.wire import Request

pytestmark = pytest.mark.timeout(120)

FRAME = np.full((8, 8, 3), (40, 90, 200), np.uint8)
# Bounds every wait in this module; nothing here should come near it.
WAIT = 10.0
OUTCOMES = ("delivered", "retried then delivered", "refused", "timeout")
CANCELS = ("never", "right after submit", "after its first attempt began")
# Each overflow policy, and the stats() key its refusals are counted under.
DROP_REASONS = {
    "drop_oldest": "queue_full_drop_oldest",
    "drop_newest": "queue_full_drop_newest",
    "raise": "queue_full_raise",
    "block": "queue_full_block_timeout",
    "spill": "queue_full_drop_oldest",  # with a spool: the oldest go to it instead
}


def event(external_id: object) -> Event:
    return Event.quality_check(result="pass", external_id=str(external_id))


# ---------------------------------------------------------------- a scripted fake transport


@dataclass
class FakeTransport:
    """Answers each event by its script (keyed by external id); can hold events on the 'wire'.

    ``gate`` holds every attempt until set; ``held`` ids are also held until ``release(id)``.
    """

    script: dict[str, str]
    gate: threading.Event = field(default_factory=threading.Event)
    held: set[str] = field(default_factory=set)
    attempts: dict[str, int] = field(default_factory=dict)
    started: dict[str, threading.Event] = field(default_factory=dict)
    _released: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False

    def started_event(self, external_id: str) -> threading.Event:
        with self._lock:
            return self.started.setdefault(external_id, threading.Event())

    def release(self, external_id: str) -> None:
        with self._lock:
            self._released.add(external_id)

    def _may_answer(self, external_id: str) -> bool:
        with self._lock:
            return self.gate.is_set() and (external_id not in self.held or external_id in self._released)

    async def post(self, request: Request, timeout: float) -> Outcome:
        external_id = orjson.loads(request.body())["event_data"]["externalId"]
        with self._lock:
            attempt = self.attempts[external_id] = self.attempts.get(external_id, 0) + 1
        self.started_event(external_id).set()
        limit = time.monotonic() + WAIT
        while not self._may_answer(external_id) and time.monotonic() < limit:
            await asyncio.sleep(0.002)
        kind = self.script[external_id]
        if kind == "delivered" or (kind == "retried then delivered" and attempt > 1):
            return Outcome(None, "event created", event_id=f"id-{external_id}", status=201)
        if kind == "retried then delivered":
            return Outcome(Cause.HTTP_STATUS, "HTTP 503: busy", status=503)
        if kind == "refused":
            return Outcome(Cause.HTTP_STATUS, "HTTP 422: bad event", status=422)
        return Outcome(Cause.TIMEOUT, f"timed out after {timeout:g}s")

    async def close(self) -> None:
        self.closed = True


def dispatcher_over(fake: FakeTransport, outbox: Spool | None = None, **overrides: Any) -> Dispatcher:
    options: dict[str, Any] = {
        "url": "http://fake.invalid",
        "retries": 1,
        "backoff_base": 0.001,
        "backoff_max": 0.002,
        "request_timeout": 1.0,
        "deadline": WAIT,
        "encode_threads": 2,
        **overrides,
    }
    return Dispatcher(Settings.resolve(environ={}, **options), outbox, transport=lambda settings: fake)


class SnapshotWatcher:
    """Takes ``stats()`` snapshots on another thread until stopped; keeps the ones that do not add up."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher
        self._stop = threading.Event()
        self.taken = 0
        self.wrong: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> SnapshotWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(WAIT)

    def _watch(self) -> None:
        limit = time.monotonic() + 2 * WAIT
        while not self._stop.is_set() and time.monotonic() < limit:
            stats = self._dispatcher.snapshot()
            self.taken += 1
            if not adds_up(stats) or stats["pending"] < 0 or stats["in_flight"] < 0 or stats["queued"] < 0:
                self.wrong.append(stats)
            time.sleep(0.0005)


# ---------------------------------------------------------------- the property


def counter(completions: dict[str, int], key: str) -> Callable[[Future[Result]], None]:
    """A done-callback counting how many times the Future of ``key`` completed."""

    def count(_: Future[Result]) -> None:
        completions[key] += 1

    return count


@dataclass(frozen=True)
class Plan:
    outcome: str
    cancel: str


plans = st.lists(
    st.builds(Plan, st.sampled_from(OUTCOMES), st.sampled_from(CANCELS)),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plans=plans,
    max_in_flight=st.integers(1, 3),
    queue_size=st.integers(1, 4),
    overflow=st.sampled_from(sorted(DROP_REASONS)),
    held_at_first=st.booleans(),
    spool=st.booleans(),
)
def test_every_event_settles_once_and_the_books_balance(
    plans: list[Plan], max_in_flight: int, queue_size: int, overflow: str, held_at_first: bool, spool: bool
) -> None:
    spool = spool or overflow == "spill"  # spill needs one
    with tempfile.TemporaryDirectory() as directory:
        outbox = Spool(directory, 64 * 1024 * 1024) if spool else None
        check_the_books(plans, max_in_flight, queue_size, overflow, held_at_first, outbox)


def check_the_books(
    plans: list[Plan], max_in_flight: int, queue_size: int, overflow: str, held_at_first: bool, outbox: Spool | None
) -> None:
    """Run ``plans`` through a dispatcher over a fake transport (and ``outbox``), then audit every count."""
    numbered = [(str(index), plan) for index, plan in enumerate(plans)]
    ids = [i for i, _ in numbered]
    fake = FakeTransport({i: plan.outcome for i, plan in numbered})
    fake.held = {i for i, plan in numbered if plan.cancel == "after its first attempt began"}
    if not held_at_first:
        fake.gate.set()
    dispatcher = dispatcher_over(
        fake,
        outbox,
        max_in_flight=max_in_flight,
        queue_size=queue_size,
        overflow=overflow,
        block_timeout=0.02,
        spool_dir=str(outbox.directory) if outbox is not None else None,
    )
    completions: dict[str, int] = dict.fromkeys(ids, 0)
    cancel_accepted: dict[str, bool] = {}
    refused_at_submit: set[str] = set()  # the raise policy's: no Future, counted dropped
    try:
        with SnapshotWatcher(dispatcher) as watcher:
            futures: dict[str, Future[Result]] = {}
            for i, plan in numbered:
                try:
                    future = dispatcher.submit(prepare_event(event(i), FRAME))
                except QueueFullError:
                    refused_at_submit.add(i)
                    continue
                future.add_done_callback(counter(completions, i))
                futures[i] = future
                if plan.cancel == "right after submit":
                    cancel_accepted[i] = future.cancel()
            fake.gate.set()
            for i, plan in numbered:  # in order: the earlier ones hold the slots the later ones wait for
                if plan.cancel != "after its first attempt began" or i in refused_at_submit:
                    continue
                started = fake.started_event(i)
                limit = time.monotonic() + WAIT
                while not started.is_set() and not futures[i].done() and time.monotonic() < limit:
                    started.wait(0.005)
                assert started.is_set() or futures[i].done(), f"event {i} neither started nor settled"
                cancel_accepted[i] = futures[i].cancel()
                fake.release(i)
            assert dispatcher.flush(timeout=WAIT) == 0
        stats = dispatcher.snapshot()
    finally:
        dispatcher.close(timeout=WAIT)

    assert watcher.taken > 0 and watcher.wrong == []
    assert all(f.done() for f in futures.values())
    assert completions == {i: 0 if i in refused_at_submit else 1 for i in ids}, "a Future completed twice"
    assert not refused_at_submit or overflow == "raise"
    assert (stats["pending"], stats["in_flight"], stats["queued"], stats["queued_bytes"]) == (0, 0, 0, 0)
    assert stats["submitted"] == len(plans) and adds_up(stats)

    cancelled = {i for i, f in futures.items() if f.cancelled()}
    assert stats["cancelled"] == len(cancelled)
    for i in cancelled:  # withdrawn before it went on the wire: never sent
        assert i not in fake.attempts, f"cancelled event {i} was posted"
        assert cancel_accepted.get(i) is True
    for i, accepted in cancel_accepted.items():
        if plans[int(i)].cancel == "after its first attempt began" and i in fake.attempts:
            assert accepted is False, f"event {i} was cancelled while on the wire"

    results = {i: f.result() for i, f in futures.items() if not f.cancelled()}
    sent = {i for i, r in results.items() if not r.error_status}
    spooled = {i for i, r in results.items() if r.spooled}
    dropped = {i for i, r in results.items() if r.error_status and not r.spooled and "queue full" in r.message}
    failed = set(results) - sent - spooled - dropped
    dropped_count = len(dropped) + len(refused_at_submit)
    assert (stats["sent"], stats["dropped"], stats["failed"]) == (len(sent), dropped_count, len(failed))
    assert stats["spooled"] == len(spooled)
    assert set(stats["dropped_by_reason"]) <= ({DROP_REASONS[overflow]} if overflow != "spill" else set())
    if outbox is None:
        assert spooled == set()
    for i in spooled:  # a timeout is worth another try later, and so is an event pushed out by spill
        assert plans[int(i)].outcome == "timeout" or "queue full" in results[i].message, results[i]
    for i in sent:
        assert results[i].event_id == f"id-{i}"
        assert plans[int(i)].outcome in ("delivered", "retried then delivered")
    for i in failed:
        assert plans[int(i)].outcome in (("refused",) if outbox else ("refused", "timeout")), results[i]
    expected_failures: dict[str, int] = {}
    for i in failed:
        key = "http_422" if plans[int(i)].outcome == "refused" else "timeout"
        expected_failures[key] = expected_failures.get(key, 0) + 1
    assert stats["failed_by_cause"] == expected_failures
    for i in dropped | refused_at_submit:
        assert i not in fake.attempts
    assert fake.closed


# ---------------------------------------------------------------- the reported cancellation problems


@pytest.fixture
def writer_defaults() -> dict[str, Any]:
    return {"backoff_base": 0.01, "backoff_max": 0.05, "request_timeout": 1.0, "connect_timeout": 0.5}


def test_a_cancelled_submit_gives_its_only_slot_back(server: ScriptedServer, make_writer: Any) -> None:
    writer = make_writer(server.base_url, max_in_flight=1)
    writer.submit(event("cancelled"), FRAME).cancel()
    result = writer.send(event("sent"), FRAME, deadline=2)
    assert result.error_status is False, result.message
    assert writer.flush(timeout=WAIT) == 0
    stats = writer.stats()
    assert adds_up(stats) and stats["in_flight"] == 0 and stats["sent"] + stats["cancelled"] == 2


def test_twenty_cancellations_do_not_jam_the_writer(make_writer: Any) -> None:
    with ScriptedServer(Reply(hold=True)) as server:
        writer = make_writer(server.base_url, max_in_flight=16, request_timeout=5, deadline=30)
        futures = [writer.submit(event(n), FRAME) for n in range(20)]
        for future in futures:
            future.cancel()
        server.release()
        result = writer.send(event("after"), FRAME, deadline=5)
        assert result.error_status is False, result.message
        assert close_within(writer, WAIT) == 0  # close() with no timeout
    stats = writer.stats()
    assert adds_up(stats) and stats["pending"] == 0 and stats["in_flight"] == 0
    assert stats["cancelled"] == sum(f.cancelled() for f in futures)
    assert stats["sent"] == 21 - stats["cancelled"]


@pytest.mark.parametrize("overflow", ["raise", "drop_newest"])
def test_a_cancelled_queued_event_frees_its_queue_place(overflow: str, make_writer: Any) -> None:
    down = f"http://127.0.0.1:{unused_port()}"
    writer = make_writer(down, max_in_flight=1, queue_size=1, overflow=overflow, retries=1000, deadline=2)
    first = writer.submit(event("A"), FRAME)
    limit = time.monotonic() + WAIT  # A takes the slot (it is being retried against the port nobody listens on)
    while writer.stats()["in_flight"] == 0 and time.monotonic() < limit:
        time.sleep(0.005)
    second = writer.submit(event("B"), FRAME)
    assert writer.stats()["queued"] == 1
    assert second.cancel() is True
    try:
        third = writer.submit(event("C"), FRAME)
    except QueueFullError:
        pytest.fail("the cancelled event still held its queue place")
    assert writer.stats()["dropped"] == 0
    assert close_within(writer, WAIT, timeout=1) <= 2
    assert first.done() and third.done() and second.cancelled()
    stats = writer.stats()
    assert adds_up(stats) and stats["cancelled"] == 1 and stats["pending"] == 0


ENTERING = 0.1


def test_close_counts_no_more_than_the_events_pending_when_it_was_called(make_writer: Any) -> None:
    with ScriptedServer(Reply(hold=True)) as server:
        writer = make_writer(server.base_url, max_in_flight=2, queue_size=10_000, request_timeout=30, deadline=60)
        started_at: list[float] = []
        settled_at: dict[int, float] = {}
        lock = threading.Lock()
        stop = threading.Event()

        def keep_submitting() -> None:
            limit = time.monotonic() + WAIT
            while not stop.is_set() and time.monotonic() < limit:
                with lock:
                    number = len(started_at)
                    started_at.append(time.monotonic())
                future = writer.submit(event(number), FRAME)
                future.add_done_callback(lambda _, n=number: settled_at.setdefault(n, time.monotonic()))
                time.sleep(0.002)

        submitters = [threading.Thread(target=keep_submitting, daemon=True) for _ in range(2)]
        for submitter in submitters:
            submitter.start()
        assert server.wait_for_requests(2)
        called_at = time.monotonic()
        unsent = writer.close(timeout=1.0)
        returned_at = time.monotonic()
        stop.set()
        for submitter in submitters:
            submitter.join(WAIT)
    # Entering close() is not instantaneous: a submit begun within ENTERING of the call may still count.
    # Every event that could have been pending then: submitting began by then, not yet settled at the call.
    could_be_pending = sum(
        1 for n, t in enumerate(started_at) if t <= called_at + ENTERING and settled_at.get(n, 1e18) > called_at
    )
    assert unsent <= could_be_pending, (unsent, could_be_pending)
    # The submitters kept going while close() flushed: the bound above was put to the test.
    assert sum(1 for t in started_at if called_at + ENTERING < t < returned_at) > 10
    stats = writer.stats()
    assert adds_up(stats) and stats["pending"] == 0


def test_a_burst_of_drops_is_logged_with_its_full_count(caplog: pytest.LogCaptureFixture, make_writer: Any) -> None:
    with ScriptedServer(Reply(hold=True)) as server, caplog.at_level(logging.WARNING, logger="fastsend"):
        writer = make_writer(server.base_url, max_in_flight=1, queue_size=1, overflow="drop_newest", request_timeout=5)
        futures = [writer.submit(event(n), FRAME) for n in range(122)]
        server.wait_for_requests(1)
        server.release()
        writer.close(timeout=WAIT)
    dropped = [f for f in futures if f.result(timeout=WAIT).message.startswith("queue full")]
    assert len(dropped) == writer.stats()["dropped"] == 120
    lines = [r.getMessage() for r in caplog.records if "events not delivered since the last report" in r.getMessage()]
    counts = [int(n) for line in lines for n in re.findall(r"(\d+) queue_full_drop_newest", line)]
    assert sum(counts) == 120, lines


def test_concurrent_closes_report_the_unsent_events_once(make_writer: Any) -> None:
    with ScriptedServer(Reply(hold=True)) as server:
        writer = make_writer(server.base_url, request_timeout=10, deadline=20)
        futures = [writer.submit(event(n), FRAME) for n in range(4)]
        server.wait_for_requests(4)
        barrier = threading.Barrier(3)
        returned: list[int] = []
        raised: list[Exception] = []

        def close() -> None:
            barrier.wait(WAIT)
            try:
                returned.append(writer.close(timeout=0.2))
            except Exception as exc:  # noqa: BLE001 - whatever close() raises is the finding
                raised.append(exc)

        closers = [threading.Thread(target=close, daemon=True) for _ in range(3)]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join(WAIT)
        assert not any(closer.is_alive() for closer in closers), "a close() did not return"
    assert raised == []
    assert all(f.done() for f in futures)
    assert sum(returned) == writer.stats()["dropped_by_reason"]["closed"] == 4, returned


def test_a_cancelled_event_is_never_spooled(make_writer: Any, tmp_path: Path) -> None:
    with ScriptedServer(Reply(hold=True)) as server:
        writer = make_writer(server.base_url, spool_dir=str(tmp_path / "spool"), max_in_flight=1, request_timeout=30)
        first = writer.submit(event("A"), FRAME)
        server.wait_for_requests(1)  # A holds the only slot, on the wire
        second = writer.submit(event("B"), FRAME)
        assert writer.stats()["queued"] == 1
        assert second.cancel() is True
        assert close_within(writer, WAIT, timeout=0.2) == 1  # A: spooled at close
    assert first.result(timeout=WAIT).spooled is True
    stats = writer.stats()
    assert (stats["spooled"], stats["cancelled"], stats["spool_pending"], stats["pending"]) == (1, 1, 1, 0)
    assert adds_up(stats) and len(server.requests) == 1


def test_close_from_a_results_done_callback_refuses_instead_of_waiting_for_itself(
    server: ScriptedServer, make_writer: Any
) -> None:
    writer = make_writer(server.base_url)
    raised: list[Exception] = []

    def close_in_callback(_: Future[Result]) -> None:
        try:
            writer.close(timeout=1)
        except RuntimeError as exc:
            raised.append(exc)

    server.script = Reply(hold=True)  # the callback is added before the Result can exist
    future = writer.submit(event("cb"), FRAME)
    future.add_done_callback(close_in_callback)
    server.release()
    assert future.result(timeout=WAIT).error_status is False
    assert writer.flush(timeout=WAIT) == 0
    assert len(raised) == 1 and "loop thread" in str(raised[0])
    assert writer.send(event("after"), FRAME, deadline=5).error_status is False  # still open
    assert close_within(writer, WAIT) == 0
