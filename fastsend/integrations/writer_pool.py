"""The block's writers: one ``EventWriter`` per events URL, at most ``max_writers``, least recently used out first."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from fastsend.config import Settings
from fastsend.send.wire import events_url
from fastsend.send.writer import EventWriter

__all__ = ["WriterPool"]

logger = logging.getLogger("fastsend")


class WriterPool:
    """Writers kept per events URL, so a block called once per frame reuses its connections.

    A new API key, timeout or writer options for a URL replaces its writer (the old one flushes first, and what
    it spooled the new one drains: a spool directory is named by its URL alone).
    """

    def __init__(self, settings: Mapping[str, Any], writer_type: type[EventWriter] = EventWriter) -> None:
        self._settings = dict(settings)
        self._writer_type = writer_type
        self.max_writers: int = Settings.one("max_writers", self._settings.pop("max_writers", None))
        self._writers: OrderedDict[str, EventWriter] = OrderedDict()
        self._options: dict[str, Mapping[str, Any]] = {}
        self._lock = threading.Lock()

    def writer_for(
        self, url: str | None, api_key: str | None, request_timeout: float, options: Mapping[str, Any] | None = None
    ) -> EventWriter:
        """The writer for ``url``, started if there is none yet; ``options``: more keywords of the writer type."""
        target = events_url(url)
        options = dict(options or {})
        with self._lock:
            current = self._writers.get(target)
            if current is not None:
                same = current.settings.api_key == api_key and current.settings.request_timeout == float(
                    request_timeout
                )
                if same and self._options.get(target, {}) == options:
                    self._writers.move_to_end(target)
                    return current
                del self._writers[target]
                current.close(current.settings.exit_flush_timeout)  # its spool directory is the new one's
            while len(self._writers) >= self.max_writers:
                gone, oldest = self._writers.popitem(last=False)
                self._options.pop(gone, None)
                _close_in_background(oldest)
            settings = dict(self._settings, api_key=api_key, request_timeout=request_timeout)
            spool_dir = Settings.one("spool_dir", settings.get("spool_dir"))
            if spool_dir:  # one spool directory per URL: a directory has one owner at a time
                kind = "" if self._writer_type is EventWriter else f"{self._writer_type.__name__}-"
                settings["spool_dir"] = os.path.join(spool_dir, kind + spool_name(target))
            writer = self._writer_type(url.rstrip("/") if url else None, **options, **settings)
            self._writers[target], self._options[target] = writer, options
            return writer

    def writers(self) -> list[EventWriter]:
        with self._lock:
            return list(self._writers.values())

    def flush(self, timeout: float | None = None) -> int:
        """Wait for every writer's queued events; returns how many are still pending."""
        return sum(writer.flush(timeout) for writer in self.writers())

    def close(self, timeout: float | None = None) -> int:
        with self._lock:
            writers = list(self._writers.values())
            self._writers.clear()
            self._options.clear()
        return sum(writer.close(timeout) for writer in writers)


def _close_in_background(writer: EventWriter) -> None:
    """Close a writer no longer kept, flushing first, without holding up the caller."""
    name = f"fastsend-close-{writer.settings.url}"
    threading.Thread(target=writer.close, args=(writer.settings.exit_flush_timeout,), name=name).start()


def spool_name(events_url: str) -> str:
    """The spool subdirectory of a URL's writer: named by where its entries go, and by nothing else, so a new
    key or timeout drains what the old ones left."""
    return hashlib.sha256(events_url.encode()).hexdigest()[:16]
