"""The drainer alone: a fake transport answering by idempotency key, a real Spool in tmp_path, and the
postpone / probe / quarantine / set-aside / restart logic checked against the spool's files and the books."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from fastsend.results import Cause, Outcome
from fastsend.send.drainer import Drainer
from fastsend.send.ledger import Ledger
from fastsend.send.retry import RetryPolicy
from fastsend.send.spool import QUARANTINE_DIR, Spool
from fastsend.send.wire import Request

POLICY = RetryPolicy(backoff_base=0.001, backoff_max=0.004, spooling=True)
CREATED = Outcome(None, "event created", event_id="1", status=201)


def status(code: int) -> Outcome:
    return Outcome(Cause.HTTP_STATUS, f"HTTP {code}", status=code)


class KeyedTransport:
    """Answers each request by its idempotency key (``answers``, default 201); records the keys sent."""

    def __init__(self, answers: dict[str, Outcome] | None = None) -> None:
        self.answers = answers or {}
        self.sent: list[str] = []

    async def post(self, request: Request, timeout: float) -> Outcome:
        self.sent.append(request.idempotency_key)
        return self.answers.get(request.idempotency_key, CREATED)

    async def close(self) -> None:
        pass


def spool_with(directory: Path, *keys: str) -> Spool:
    spool = Spool(directory, 1 << 20)
    for key in keys:
        assert spool.put(Request.of(key, [b"{}"]))
    return spool


def drain_until(drainer: Drainer, transport: KeyedTransport, done: Callable[[], bool], seconds: float = 3.0) -> None:
    """Run the drainer on a loop of its own until ``done()`` or ``seconds`` pass, then cancel it."""

    async def main() -> None:
        task = asyncio.get_running_loop().create_task(drainer.run(transport))
        ends = time.monotonic() + seconds
        while not done() and time.monotonic() < ends:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())


def names(spool: Spool) -> list[str]:
    return sorted(p.name for p in spool.directory.glob("*.event"))


def test_entries_go_oldest_first_and_are_removed_and_counted(tmp_path):
    spool, ledger, transport = spool_with(tmp_path, "a", "b", "c"), Ledger(), KeyedTransport()
    drain_until(Drainer(spool, POLICY, 1.0, ledger), transport, lambda: len(spool) == 0)
    assert transport.sent == ["a", "b", "c"]
    assert names(spool) == [] and ledger.snapshot()["drained"] == 3


def test_an_oldest_entry_that_keeps_failing_moves_behind_the_others_once_the_next_one_goes(tmp_path):
    spool, ledger = spool_with(tmp_path, "stuck", "b", "c"), Ledger()
    first = names(spool)[0]
    transport = KeyedTransport({"stuck": status(503)})
    drain_until(Drainer(spool, POLICY, 1.0, ledger), transport, lambda: len(spool) == 1)
    assert transport.sent[:4] == ["stuck", "stuck", "stuck", "b"]  # three failures in a row, then the probe
    assert set(transport.sent) == {"stuck", "b", "c"}
    (left,) = names(spool)
    assert left > first and spool.load(spool.oldest()).idempotency_key == "stuck"  # renamed behind the others


def test_when_the_probe_fails_too_the_order_is_kept(tmp_path):
    spool, ledger = spool_with(tmp_path, "a", "b"), Ledger()
    before = names(spool)
    transport = KeyedTransport({"a": status(503), "b": status(503)})
    drain_until(Drainer(spool, POLICY, 1.0, ledger), transport, lambda: len(transport.sent) >= 8)
    assert "b" in transport.sent and names(spool) == before


def test_a_rejected_entry_is_quarantined_and_a_misconfigured_sender_keeps_it(tmp_path):
    spool, ledger = spool_with(tmp_path, "bad", "kept"), Ledger()
    transport = KeyedTransport({"bad": status(400), "kept": status(401)})
    drain_until(Drainer(spool, POLICY, 1.0, ledger), transport, lambda: "kept" in transport.sent)
    assert spool.stats()["quarantined"] == 1 and len(spool) == 1
    assert len(list((tmp_path / QUARANTINE_DIR).iterdir())) == 1


def test_an_entry_that_cannot_be_quarantined_is_passed_over_and_the_rest_is_sent(tmp_path):
    spool, ledger = spool_with(tmp_path, "bad", "good"), Ledger()
    (tmp_path / QUARANTINE_DIR).write_text("not a folder")
    transport = KeyedTransport({"bad": status(400)})
    drain_until(Drainer(spool, POLICY, 1.0, ledger), transport, lambda: "good" in transport.sent)
    assert transport.sent == ["bad", "good"] and len(spool) == 1 and spool.stats()["quarantined"] == 0


def test_an_unexpected_error_restarts_the_drain_and_is_counted(tmp_path, monkeypatch):
    spool, ledger, transport = spool_with(tmp_path, "a"), Ledger(), KeyedTransport()
    real_oldest, raised = Spool.oldest, []

    def oldest(self: Spool):  # type: ignore[no-untyped-def]
        if not raised:
            raised.append(True)
            raise RuntimeError("a bug")
        return real_oldest(self)

    monkeypatch.setattr(Spool, "oldest", oldest)
    drain_until(Drainer(spool, POLICY, 1.0, ledger), transport, lambda: len(spool) == 0)
    assert transport.sent == ["a"] and ledger.snapshot()["drainer_restarts"] == 1
