"""A durable outbox: finished requests on disk, sent again oldest first.

One file per event, written to a temporary name, fsynced, then renamed into
place (and the directory fsynced), so a crash mid-write leaves only a temporary
file, which the next open deletes; a renamed entry is always whole. Files rather
than SQLite because entries are multi-megabyte bodies written once, read once
and deleted: the file system is the right index, each write streams the body
chunks without joining them, and a damaged entry is isolated to its own file.

Entry layout: a magic line, one JSON header line (idempotency_key, size, crc32), the body.
An entry holds no URL and no API key: the writer that drains it sends it to its own
endpoint with its own key, so nothing written into the directory can aim a key at another
host. The CRC covers the key and size as well as the body: a flipped bit in the header
would otherwise send a damaged key as if it were whole. Entries of the previous layout
(``FASTSEND-SPOOL 2``, which also held a URL and headers) are read too: their
``Idempotency-Key`` is kept, their URL ignored. Names are nanosecond stamps kept strictly
increasing, so the oldest entry sorts first even when the wall clock steps back.
An exclusive ``flock`` on ``.lock`` keeps two processes from sending the same entries.

Only regular files are read: a symlink, FIFO, device or directory named like an entry is
never followed or opened (``lstat``, ``O_NOFOLLOW | O_NONBLOCK``); it is set aside in the
quarantine folder, with one warning.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from fastsend.errors import SpoolLockedError
from fastsend.send.wire import Request, check_idempotency_key

__all__ = ["CorruptEntry", "Spool", "SpoolEntry", "SpoolLockedError"]

logger = logging.getLogger("fastsend")

_MAGIC = b"FASTSEND-SPOOL 3\n"
_MAGIC_V2 = b"FASTSEND-SPOOL 2\n"
# Room left free on the spool's file system, so a full disk evicts the oldest entries rather than
# failing the newest: a tenth of the file system, at most this much.
FREE_SPACE_MARGIN_BYTES = 64 * 1024 * 1024
_SUFFIX = ".event"
_TEMP_PREFIX = ".tmp-"
QUARANTINE_DIR = "quarantine"


class CorruptEntry(ValueError):
    """A spool file that cannot be trusted: moved aside, never sent."""


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    name: str
    size: int


class Spool:
    """The outbox in ``directory``, bounded to ``max_bytes``; thread-safe.

    Holds the directory's lock until ``close()``: a second process on the same
    directory gets ``SpoolLockedError`` instead of sending entries twice.
    """

    def __init__(self, directory: str | os.PathLike[str], max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.directory / ".lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "another process"
            self._lock_file.close()
            raise SpoolLockedError(f"spool directory {self.directory} is in use by pid {holder}") from None
        self._lock_file.seek(0)
        self._lock_file.truncate()
        self._lock_file.write(str(os.getpid()))
        self._lock_file.flush()
        self._mutex = threading.Lock()
        self._emptied = threading.Condition(self._mutex)
        self._stamp = 0  # of the newest entry: a new name is never older than it
        self.evicted = 0
        self.quarantined = 0
        self._entries: dict[str, int] = {}
        self._total = 0
        self._reserved = 0  # bytes of writes in progress: room they have claimed but not yet filled
        self._closed = False
        self._recover()

    def _recover(self) -> None:
        odd: list[str] = []
        for path in self.directory.iterdir():
            if path.name.startswith(_TEMP_PREFIX):
                path.unlink(missing_ok=True)  # a write that never completed
            elif path.suffix == _SUFFIX:
                try:
                    info = os.lstat(path)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(info.st_mode):
                    odd.append(path.name)
                    continue
                self._entries[path.name] = info.st_size
                self._total += info.st_size
                if path.name[:20].isdigit():
                    self._stamp = max(self._stamp, int(path.name[:20]))
        if odd:
            self._set_aside_odd(odd)
        if self._entries:
            logger.info("spool %s holds %d event(s) from before", self.directory, len(self._entries))

    def _set_aside_odd(self, names: list[str]) -> None:
        """Objects named like entries that are not regular files: moved (never opened) into the quarantine."""
        try:
            (self.directory / QUARANTINE_DIR).mkdir(exist_ok=True)
            for name in names:
                os.replace(self.directory / name, self.directory / QUARANTINE_DIR / name)
        except OSError as exc:
            where = f"left where they are ({exc})"
        else:
            where = f"moved to {QUARANTINE_DIR}/"
        logger.warning(
            "spool %s: %d object(s) named like entries are not regular files, never read: %s; %s",
            self.directory,
            len(names),
            ", ".join(sorted(names)[:5]),
            where,
        )

    # ------------------------------------------------------------ writing

    def put(self, request: Request) -> bool:
        """Store ``request`` durably; False if it can never fit. Evicts the oldest to make room."""
        crc = _checksum(request.idempotency_key, request.size, request.chunks)
        header = orjson.dumps({"idempotency_key": request.idempotency_key, "size": request.size, "crc32": crc})
        entry_size = len(_MAGIC) + len(header) + 1 + request.size
        if entry_size > self.max_bytes:
            logger.error(
                "event of %d bytes is larger than the whole spool (%d bytes): not spooled", entry_size, self.max_bytes
            )
            return False
        with self._mutex:
            self._evict_for(entry_size)  # make room first: the write itself needs the space
            self._reserved += entry_size  # so that concurrent writes do not count the same room
        temporary = self.directory / f"{_TEMP_PREFIX}{uuid.uuid4().hex}"
        try:
            with open(temporary, "wb") as file:
                file.write(_MAGIC)
                file.write(header + b"\n")
                file.writelines(request.chunks)
                file.flush()
                os.fsync(file.fileno())
        except BaseException:
            temporary.unlink(missing_ok=True)  # a full disk must not also leak the half-written file
            with self._mutex:
                self._reserved -= entry_size
            raise
        with self._mutex:
            self._reserved -= entry_size
            name = self._next_name()
            os.rename(temporary, self.directory / name)
            self._entries[name] = entry_size
            self._total += entry_size
        self._sync_directory()
        return True

    def _next_name(self) -> str:
        self._stamp = max(time.time_ns(), self._stamp + 1)
        return f"{self._stamp:020d}{_SUFFIX}"

    def postpone(self, entry: SpoolEntry) -> None:
        """Move ``entry`` behind every other entry, so one the service keeps refusing does not hold the rest."""
        with self._mutex:
            if entry.name not in self._entries:
                return
            name = self._next_name()
            os.rename(self.directory / entry.name, self.directory / name)
            self._entries[name] = self._entries.pop(entry.name)
        self._sync_directory()
        logger.info("spool entry %s moved behind the others (renamed %s)", entry.name, name)

    def _capacity(self) -> int:
        """The bound in force: ``max_bytes``, or less when the file system has less free room."""
        try:
            info = os.statvfs(self.directory)
        except OSError:
            return self.max_bytes
        margin = min(FREE_SPACE_MARGIN_BYTES, info.f_blocks * info.f_frsize // 10)
        room = self._total + info.f_bavail * info.f_frsize - margin
        return max(0, min(self.max_bytes, room))

    def _evict_for(self, incoming: int) -> None:
        capacity = self._capacity()
        while self._entries and self._total + self._reserved + incoming > capacity:
            oldest = min(self._entries)
            (self.directory / oldest).unlink(missing_ok=True)
            self._drop(oldest)
            self.evicted += 1
            logger.warning("spool full (%d bytes): evicted the oldest event %s", self.max_bytes, oldest)

    def _sync_directory(self) -> None:
        descriptor = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    # ------------------------------------------------------------ draining

    def oldest(self) -> SpoolEntry | None:
        with self._mutex:
            if not self._entries:
                return None
            name = min(self._entries)
            return SpoolEntry(name, self._entries[name])

    def after(self, entry: SpoolEntry) -> SpoolEntry | None:
        """The entry that comes next after ``entry`` in sending order, if any."""
        with self._mutex:
            name = min((name for name in self._entries if name > entry.name), default=None)
            return None if name is None else SpoolEntry(name, self._entries[name])

    def load(self, entry: SpoolEntry) -> Request:
        """The stored request; raises ``CorruptEntry`` if the file is damaged or cannot become a request."""
        data = _read_regular_file(self.directory / entry.name)
        magic = _MAGIC if data.startswith(_MAGIC) else _MAGIC_V2 if data.startswith(_MAGIC_V2) else None
        if magic is None:
            raise CorruptEntry(f"{entry.name}: not a spool entry")
        header_end = data.find(b"\n", len(magic))
        body = data[header_end + 1 :]
        try:
            header = orjson.loads(data[len(magic) : header_end])
            key, size, crc = _read_header(header, magic)
            checksum = _header_checksum(header, magic, body)
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError):
            raise CorruptEntry(f"{entry.name}: damaged header") from None
        if len(body) != size or checksum != crc:
            raise CorruptEntry(
                f"{entry.name}: body is {len(body)} bytes, checksum mismatch or truncated (expected {size})"
            )
        try:
            check_idempotency_key(key)
        except ValueError as exc:
            raise CorruptEntry(f"{entry.name}: cannot be sent: {exc}") from None
        return Request(key, [body], size)

    def load_or_quarantine(self, entry: SpoolEntry) -> Request | None:
        """The stored request, or None after moving a damaged entry aside."""
        try:
            return self.load(entry)
        except CorruptEntry as exc:
            self.quarantine(entry, str(exc))
            return None

    def remove(self, entry: SpoolEntry, removed: Callable[[], None] = lambda: None) -> None:
        """A sent entry: its file is gone, and ``removed()`` has run (the sender's count of it), before anyone
        waiting for an empty spool is told or reads the spool's stats."""
        with self._mutex:
            if entry.name in self._entries:
                (self.directory / entry.name).unlink(missing_ok=True)
                self._drop(entry.name)
            elif not (self.directory / entry.name).exists():
                # Evicted while it was being sent, then delivered all the same: not lost after all.
                self.evicted -= 1
            removed()

    def quarantine(self, entry: SpoolEntry, reason: str) -> None:
        """Move a damaged or rejected entry aside so it is never retried.

        Raises ``OSError`` if it cannot be moved (the entry then stays, to be tried again).
        """
        target = self.directory / QUARANTINE_DIR
        with self._mutex:
            if entry.name not in self._entries:
                return  # evicted while it was read or sent: gone, and counted as evicted
            try:
                target.mkdir(exist_ok=True)
                os.replace(self.directory / entry.name, target / entry.name)
            except FileNotFoundError:
                if os.path.lexists(self.directory / entry.name):
                    raise
                # the entry's file is gone already: nothing left to move
            self._drop(entry.name)
            self.quarantined += 1
        logger.error("spool entry quarantined: %s", reason)

    def _drop(self, name: str) -> None:
        """Forget entry ``name`` (under the mutex); wake those waiting for an empty spool."""
        self._total -= self._entries.pop(name)
        if not self._entries:
            self._emptied.notify_all()

    def wait_empty(self, timeout: float | None) -> bool:
        """Wait until no entry is left (sent, quarantined or evicted); False if some still are at ``timeout``,
        or when the spool is closed meanwhile (nobody drains it any more)."""
        with self._mutex:
            return self._emptied.wait_for(lambda: not self._entries or self._closed, timeout) and not self._entries

    def __len__(self) -> int:
        with self._mutex:
            return len(self._entries)

    def stats(self) -> dict[str, int]:
        with self._mutex:
            return {
                "spool_pending": len(self._entries),
                "spool_bytes": self._total,
                "spool_evicted": self.evicted,
                "quarantined": self.quarantined,
            }

    def leave_to_parent(self) -> None:
        """In a forked child: drop this process's copy of the lock without unlocking it for the parent."""
        if not self._lock_file.closed:
            self._lock_file.close()  # closing a copy never releases a flock; LOCK_UN would, for both

    def close(self) -> None:
        """Give the directory up; whoever waits for it to empty is told."""
        with self._mutex:
            self._closed = True
            self._emptied.notify_all()
        if not self._lock_file.closed:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()


def _read_regular_file(path: Path) -> bytes:
    """The bytes of ``path`` if it is a regular file; never follows a symlink nor waits on a FIFO or device."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise CorruptEntry(f"{path.name}: unreadable ({exc})") from None
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise CorruptEntry(f"{path.name}: not a regular file")
        with os.fdopen(descriptor, "rb", closefd=False) as file:
            return file.read()
    except OSError as exc:
        raise CorruptEntry(f"{path.name}: unreadable ({exc})") from None
    finally:
        os.close(descriptor)


def _checksum(idempotency_key: str, size: int, chunks: Iterable[bytes]) -> int:
    crc = zlib.crc32(orjson.dumps([idempotency_key, size]))
    for chunk in chunks:
        crc = zlib.crc32(chunk, crc)
    return crc


def _read_header(header: dict[str, Any], magic: bytes) -> tuple[Any, int, int]:
    """The idempotency key, size and CRC of an entry's header, in either layout."""
    if magic == _MAGIC:
        return header["idempotency_key"], header["size"], header["crc32"]
    keys = [value for name, value in header["headers"].items() if name.lower() == "idempotency-key"]
    return (keys[0] if keys else None), header["size"], header["crc32"]


def _header_checksum(header: dict[str, Any], magic: bytes, body: bytes) -> int:
    if magic == _MAGIC:
        return _checksum(header["idempotency_key"], header["size"], [body])
    # The previous layout's CRC covered its URL and headers too.
    crc = zlib.crc32(orjson.dumps([header["url"], header["headers"], header["size"]]))
    return zlib.crc32(body, crc)
