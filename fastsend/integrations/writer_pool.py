"""The block's writers: one ``EventWriter`` per events URL, at most ``max_writers``, least recently used out first.

Eviction never costs an event. A writer is lent for the length of a call (``lease``): one
evicted or replaced meanwhile is closed (flushed, what is left spooled) only once its last
call has handed over its event, on a thread of its own, outside the pool's lock. A new writer
for a URL whose previous writer is still closing waits for that bounded close, so the two
never share the URL's spool directory, and nothing is refused because of the pool itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import weakref
from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from fastsend.config import Settings
from fastsend.send.wire import events_url
from fastsend.send.writer import EventWriter

__all__ = ["WriterPool", "spool_name"]

logger = logging.getLogger("fastsend")

# Beyond its exit_flush_timeout, how long a successor waits for a closing writer (its calls ending first).
_SUCCESSOR_WAIT_MARGIN_SECONDS = 30.0


class _Retiring:
    """A writer out of the pool, closing once its last lease is returned."""

    def __init__(self, writer: EventWriter) -> None:
        self.writer = writer
        self.released = threading.Event()  # no call holds it any more
        self.closed = threading.Event()


class WriterPool:
    """Writers kept per events URL, so a block called once per frame reuses its connections.

    One writer per URL whatever a call's ``request_timeout`` (a synchronous call's timeout is its
    own budget, not a writer setting). A new API key or new writer options for a URL replace its
    writer: the old one flushes first, and what it spooled the new one drains (a spool directory is
    named by its URL).
    """

    def __init__(self, settings: Mapping[str, Any], writer_type: type[EventWriter] = EventWriter) -> None:
        self._writer_type = writer_type
        self._settings = dict(settings)
        self.max_writers: int = Settings.one("max_writers", self._settings.pop("max_writers", None))
        self._writers: OrderedDict[str, EventWriter] = OrderedDict()
        self._retiring: dict[str, _Retiring] = {}  # by URL: what a successor waits for
        self._leaving: dict[EventWriter, _Retiring] = {}  # by writer: what its last release tells
        self._leases: Counter[EventWriter] = Counter()
        self._options: dict[EventWriter, dict[str, Any]] = {}  # each writer's keywords beyond the pool's settings
        self._fresh_locks()
        _pools.add(self)

    def _fresh_locks(self) -> None:
        self._lock = threading.Lock()

    def _reset_in_child(self) -> None:
        """A forked child: the parent's closing threads and callers did not come along, nor may their lock."""
        self._fresh_locks()
        self._retiring.clear()  # the writers they were closing are closed at this process's exit
        self._leaving.clear()
        self._leases.clear()

    @contextmanager
    def lease(
        self, url: str | None, api_key: str | None, options: Mapping[str, Any] | None = None
    ) -> Iterator[EventWriter]:
        """The writer for ``url``, kept open until the ``with`` ends (an eviction meanwhile waits for it)."""
        writer = self.acquire(url, api_key, options)
        try:
            yield writer
        finally:
            self.release(writer)

    def release(self, writer: EventWriter) -> None:
        """Give back a writer from ``acquire``: an eviction waiting for it may close it now."""
        with self._lock:
            self._leases[writer] -= 1
            if self._leases[writer] <= 0:
                del self._leases[writer]
                leaving = self._leaving.pop(writer, None)
                if leaving is not None:
                    leaving.released.set()

    def writer_for(self, url: str | None, api_key: str | None) -> EventWriter:
        """The pool's writer for ``url``, started if there is none yet (not leased: it may be evicted)."""
        with self.lease(url, api_key) as writer:
            return writer

    def acquire(self, url: str | None, api_key: str | None, options: Mapping[str, Any] | None = None) -> EventWriter:
        """The writer for ``url``, lent until ``release``: the pool does not close it before then.

        ``options``: keywords of the pool's writer type beyond its settings (a cloud writer's routes).
        """
        target = events_url(url)
        wanted = dict(options or {})
        while True:
            with self._lock:
                current = self._writers.get(target)
                if current is not None and current.settings.api_key == api_key and self._options[current] == wanted:
                    self._writers.move_to_end(target)
                    self._leases[current] += 1
                    return current
                if current is not None:  # a new key or options for this URL: the old writer goes, flushing first
                    self._retire(target, self._writers.pop(target))
                predecessor = self._retiring.get(target)
                if predecessor is not None and predecessor.closed.is_set():
                    del self._retiring[target]
                    predecessor = None
                if predecessor is None:
                    self._forget_closed()
                    while len(self._writers) >= self.max_writers:
                        self._retire(*self._writers.popitem(last=False))
                    writer = self._writers[target] = self._build(target, url, api_key, wanted)
                    self._options[writer] = wanted
                    self._leases[writer] += 1
                    return writer
            waited = predecessor.writer.settings.exit_flush_timeout + _SUCCESSOR_WAIT_MARGIN_SECONDS
            if not predecessor.closed.wait(waited):
                logger.error("the previous writer for %s did not close within %gs; starting anyway", target, waited)
                with self._lock:
                    if self._retiring.get(target) is predecessor:
                        del self._retiring[target]

    def _forget_closed(self) -> None:
        """Drop the writers whose close has ended (under the lock): nothing waits for them any more."""
        self._retiring = {url: leaving for url, leaving in self._retiring.items() if not leaving.closed.is_set()}

    def _build(self, target: str, url: str | None, api_key: str | None, options: dict[str, Any]) -> EventWriter:
        settings = dict(self._settings, api_key=api_key)
        spool_dir = Settings.one("spool_dir", settings.get("spool_dir"))
        if spool_dir:  # one spool directory per URL: a directory has one owner at a time
            kind = "" if self._writer_type is EventWriter else f"{self._writer_type.__name__}-"
            settings["spool_dir"] = os.path.join(spool_dir, kind + spool_name(target))
        return self._writer_type(url.rstrip("/") if url else None, **options, **settings)

    def _retire(self, target: str, writer: EventWriter) -> None:
        """Out of the pool (under the lock): closed on its own thread once its calls have handed their events."""
        self._options.pop(writer, None)
        retiring = self._retiring[target] = _Retiring(writer)
        if self._leases[writer] > 0:
            self._leaving[writer] = retiring
        else:
            retiring.released.set()
        name = f"fastsend-close-{writer.settings.url}"
        threading.Thread(target=WriterPool._close_retired, args=(target, retiring), name=name, daemon=True).start()

    @staticmethod
    def _close_retired(target: str, retiring: _Retiring) -> None:
        """Without the pool's lock: a closer never holds up a call (the next ``acquire`` forgets it once closed)."""
        writer = retiring.writer
        try:
            retiring.released.wait()
            writer.close(writer.settings.exit_flush_timeout)
        except Exception:
            logger.exception("could not close the writer for %s", target)
        finally:
            retiring.closed.set()

    def writers(self) -> list[EventWriter]:
        """The writers in the pool now, least recently used first."""
        with self._lock:
            return list(self._writers.values())

    def flush(self, timeout: float | None = None) -> int:
        """Wait for every writer's queued events; returns how many are still pending."""
        return sum(writer.flush(timeout) for writer in self.writers())

    def close(self, timeout: float | None = None) -> int:
        """Close every writer (those already leaving too), each flushing for up to ``timeout``; the unsent count."""
        with self._lock:
            writers = list(self._writers.values())
            self._writers.clear()
            self._options.clear()
            retiring = list(self._retiring.values())
        unsent = sum(writer.close(timeout) for writer in writers)
        for leaving in retiring:
            leaving.closed.wait(leaving.writer.settings.exit_flush_timeout + _SUCCESSOR_WAIT_MARGIN_SECONDS)
        return unsent


_pools: weakref.WeakSet[WriterPool] = weakref.WeakSet()


def _reset_pools_in_child() -> None:
    for pool in list(_pools):
        pool._reset_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pools_in_child)


def spool_name(events_url: str) -> str:
    """The spool subdirectory of a URL's writer: named by where its entries go, and by nothing else, so a new
    key or timeout drains what the old ones left."""
    return hashlib.sha256(events_url.encode()).hexdigest()[:16]
