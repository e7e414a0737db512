"""One writer thread in front of the store, with group commit.

Handlers on the event loop submit events and await the result; the thread
takes everything queued at that moment (up to ``max_batch``) and stores it with
one :meth:`EventStore.add` call, so concurrent requests share a single fsync
and commit. Serialising writes on one thread also makes idempotency checks
race-free: a duplicate key is either in the same batch or already committed.

A batch that fails is retried one event at a time, so one bad event fails
only its own request, never the others it was grouped with.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from dataclasses import dataclass

from fastsend.server.store import EventStore
from fastsend.server.validation import EventBody

__all__ = ["Committer"]

logger = logging.getLogger("fastsend.server")


@dataclass(frozen=True, slots=True)
class _Pending:
    event: EventBody
    idempotency_key: str | None
    future: asyncio.Future[tuple[str, bool]]
    loop: asyncio.AbstractEventLoop


class Committer:
    """Runs all writes to an :class:`EventStore` on one thread, batching concurrent ones."""

    def __init__(self, store: EventStore, *, max_batch: int = 64) -> None:
        self._store = store
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="fastsend-server-committer", daemon=True)
        self._thread.start()

    async def submit(self, event: EventBody, idempotency_key: str | None) -> tuple[str, bool]:
        """Store ``event`` durably; returns ``(id, created)`` once it is committed.

        ``created`` is False when ``idempotency_key`` was already stored; the id
        is then the original one.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[str, bool]] = loop.create_future()
        self._queue.put(_Pending(event, idempotency_key, future, loop))
        return await future

    def close(self) -> None:
        """Finish what is queued, then stop the thread."""
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._max_batch:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._commit(batch)

    def _commit(self, batch: list[_Pending]) -> None:
        try:
            results = self._store.add([(pending.event, pending.idempotency_key) for pending in batch])
        except Exception as exc:
            if len(batch) > 1:
                # The store rolled the batch back; find the culprit by storing each event alone.
                logger.warning("could not store a batch of %d events (%s); storing them one by one", len(batch), exc)
                for pending in batch:
                    self._commit([pending])
                return
            logger.exception("could not store an event")
            _settle(batch[0], exception=exc)
            return
        for pending, result in zip(batch, results, strict=True):
            _settle(pending, result=result)


def _settle(pending: _Pending, *, result: tuple[str, bool] | None = None, exception: Exception | None = None) -> None:
    def settle() -> None:
        # The handler may have been cancelled (client gone); the write stands anyway.
        if pending.future.done():
            return
        if exception is not None:
            pending.future.set_exception(exception)
        else:
            pending.future.set_result(result)  # type: ignore[arg-type]

    try:
        pending.loop.call_soon_threadsafe(settle)
    except RuntimeError:
        logger.debug("event loop closed before a write was acknowledged")
