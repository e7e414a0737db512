"""Durable storage for the reference service: SQLite rows plus image files.

Layout under ``data_dir``: ``events.sqlite3`` (WAL mode), ``images/``
holding ``<id>.output.<ext>`` and ``<id>.input.<ext>``, and ``sources/``
holding the images uploaded through the Vision Events API
(``<source id>.<ext>``) until, and after, events name them.

An event has an output image, an input image, both or neither. An event that
came through the Vision Events API keeps its client-made ``eventId``
(``vision_event_id``): one event per ``eventId``, as the key of its
idempotency. A database made before these columns existed is rebuilt in the
current layout when the store opens (one transaction; rows and ids kept).

Durability: :meth:`EventStore.add` returns only after each image file and the
``images/`` directory entry are fsynced and the row's transaction is
committed with ``synchronous=FULL``. In WAL mode ``NORMAL`` would already
survive a killed process (the OS keeps the written WAL pages); ``FULL`` also
fsyncs the WAL on every commit, so an acknowledged event survives power loss
too. :class:`~fastsend.server.committer.Committer` batches concurrent writes
into one commit to keep that cost per batch rather than per event.

Orphans: image files are written before their rows. When a batch fails
its files are removed; files left by a process killed between the two (no
row names them) are removed when the store opens. Uploaded sources likewise.

Connections are shared across threads, each behind its own lock: one for
writes, one for reads (WAL lets readers run while a write is in progress).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from fastsend.server.validation import EventBody, Image

__all__ = ["EventStore", "StoredEvent"]

logger = logging.getLogger("fastsend.server")

_EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png"}
# The names _write_image gives; the orphan sweep touches nothing else in images/.
_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_IMAGE_NAME = re.compile(rf"{_UUID}\.(output|input)\.(jpg|png)")
_SOURCE_NAME = re.compile(rf"{_UUID}\.(jpg|png)")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    idempotency_key TEXT UNIQUE,
    received_at TEXT NOT NULL,
    inference_timestamp TEXT NOT NULL,
    event_schema TEXT NOT NULL,
    event_data TEXT NOT NULL,
    custom_metadata TEXT,
    solution TEXT,
    display_image_position INTEGER,
    image_details TEXT NOT NULL,
    output_file TEXT,
    output_content_type TEXT,
    input_file TEXT,
    input_content_type TEXT,
    vision_event_id TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS events_by_schema ON events (event_schema, seq);
CREATE INDEX IF NOT EXISTS events_by_solution ON events (solution, seq);
CREATE TABLE IF NOT EXISTS sources (
    id TEXT PRIMARY KEY,
    received_at TEXT NOT NULL,
    file TEXT NOT NULL,
    content_type TEXT NOT NULL
);
"""

_COLUMNS = (
    "id, idempotency_key, received_at, inference_timestamp, event_schema, event_data, custom_metadata,"
    " solution, display_image_position, image_details, output_content_type, input_content_type, vision_event_id"
)

_INSERT = f"INSERT INTO events ({_COLUMNS}, output_file, input_file) VALUES ({', '.join('?' * 15)})"

# The columns of the first layout (output image required, no vision_event_id), copied when rebuilding it.
_FIRST_LAYOUT_COLUMNS = (
    "seq, id, idempotency_key, received_at, inference_timestamp, event_schema, event_data, custom_metadata,"
    " solution, display_image_position, image_details, output_file, output_content_type, input_file,"
    " input_content_type"
)


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One stored event, without its image bytes (see :meth:`EventStore.image`)."""

    id: str
    idempotency_key: str | None
    received_at: str
    inference_timestamp: str
    event_schema: str
    event_data: dict[str, Any]
    custom_metadata: dict[str, Any] | None
    solution: str | None
    display_image_position: int | None
    image_details: dict[str, Any]
    output_content_type: str | None
    input_content_type: str | None
    vision_event_id: str | None = None

    @property
    def has_image(self) -> bool:
        """Whether the event has an image entry (an output image, an input image or both)."""
        return self.output_content_type is not None or self.input_content_type is not None


class EventStore:
    """Events in SQLite and their images as files, under one data directory."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.images_dir = self.data_dir / "images"
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self.sources_dir = self.data_dir / "sources"
        self.sources_dir.mkdir(exist_ok=True)
        _fsync_directory(self.data_dir)  # so images/ and sources/ themselves outlive a power cut
        db_path = self.data_dir / "events.sqlite3"
        self._writer = self._connect(db_path)
        self._writer.execute("PRAGMA journal_mode=WAL")
        _upgrade_first_layout(self._writer)
        self._writer.executescript(_SCHEMA)
        self._reader = self._connect(db_path)
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self.remove_orphan_images()

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA busy_timeout=5000")
        return connection

    def close(self) -> None:
        """Close both connections (the WAL is checkpointed by the last close)."""
        with self._read_lock:
            self._reader.close()
        with self._write_lock:
            self._writer.close()

    def add(self, items: Sequence[tuple[EventBody, str | None]]) -> list[tuple[str, bool]]:
        """Store ``(event, idempotency_key)`` pairs durably in one transaction.

        Returns ``(id, created)`` per item, in order. An item whose key is
        already stored, or appears earlier in ``items``, gets the original id
        with ``created`` False and stores nothing.
        """
        with self._write_lock:
            written: list[Path] = []
            try:
                return self._add(items, written)
            except BaseException:
                self._remove_files(written)
                raise

    def _add(self, items: Sequence[tuple[EventBody, str | None]], written: list[Path]) -> list[tuple[str, bool]]:
        received_at = datetime.now(timezone.utc).isoformat()
        results: list[tuple[str, bool]] = []
        rows: list[tuple[Any, ...]] = []
        ids_by_key: dict[str, str] = {}
        ids_by_vision_event: dict[str, str] = {}
        for event, key in items:
            existing = self._id_for_key(key, ids_by_key) or self._id_for_vision_event(
                event.vision_event_id, ids_by_vision_event
            )
            if existing is not None:
                results.append((existing, False))
                continue
            event_id = str(uuid.uuid4())
            if key is not None:
                ids_by_key[key] = event_id
            if event.vision_event_id is not None:
                ids_by_vision_event[event.vision_event_id] = event_id
            rows.append(self._row(event_id, key, received_at, event, written))
            results.append((event_id, True))
        if rows:
            _fsync_directory(self.images_dir)
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                self._writer.executemany(_INSERT, rows)
                self._writer.execute("COMMIT")
            except BaseException:
                if self._writer.in_transaction:
                    self._writer.execute("ROLLBACK")
                raise
        return results

    def _remove_files(self, paths: list[Path]) -> None:
        for path in paths:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                logger.warning("could not remove %s after a failed write; the next start removes it", path)

    def remove_orphan_images(self) -> int:
        """Remove image files no row names (left by a crash between file and commit); returns how many.

        The store calls it when it opens. It holds the write lock, so no write is half done while it looks.
        """
        with self._write_lock:
            named = set()
            for output_file, input_file in self._writer.execute("SELECT output_file, input_file FROM events"):
                named.add(output_file)
                named.add(input_file)
            named.update(name for (name,) in self._writer.execute("SELECT file FROM sources"))
            orphans = [
                path
                for directory, pattern in ((self.images_dir, _IMAGE_NAME), (self.sources_dir, _SOURCE_NAME))
                for path in directory.iterdir()
                if pattern.fullmatch(path.name) and path.name not in named and path.is_file()
            ]
            self._remove_files(orphans)
        if orphans:
            logger.warning("removed %d image files of events or uploads that were never committed", len(orphans))
        return len(orphans)

    def _id_for_key(self, key: str | None, ids_by_key: dict[str, str]) -> str | None:
        if key is None:
            return None
        if key in ids_by_key:
            return ids_by_key[key]
        row = self._writer.execute("SELECT id FROM events WHERE idempotency_key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _id_for_vision_event(self, vision_event_id: str | None, ids: dict[str, str]) -> str | None:
        if vision_event_id is None:
            return None
        if vision_event_id in ids:
            return ids[vision_event_id]
        row = self._writer.execute("SELECT id FROM events WHERE vision_event_id = ?", (vision_event_id,)).fetchone()
        return row[0] if row else None

    def _row(
        self, event_id: str, key: str | None, received_at: str, event: EventBody, written: list[Path]
    ) -> tuple[Any, ...]:
        output_file = self._write_image(event_id, "output", event.output_image, written) if event.output_image else None
        input_file = self._write_image(event_id, "input", event.input_image, written) if event.input_image else None
        return (
            event_id,
            key,
            received_at,
            event.inference_timestamp,
            event.event_schema,
            orjson.dumps(event.event_data).decode(),
            None if event.custom_metadata is None else orjson.dumps(event.custom_metadata).decode(),
            event.solution,
            event.display_image_position,
            orjson.dumps(event.image_details).decode(),
            event.output_image.content_type if event.output_image else None,
            event.input_image.content_type if event.input_image else None,
            event.vision_event_id,
            output_file,
            input_file,
        )

    def _write_image(self, event_id: str, role: str, image: Image, written: list[Path]) -> str:
        name = f"{event_id}.{role}.{_EXTENSIONS[image.content_type]}"
        _write_file(self.images_dir / name, image.data, written)
        return name

    def add_source(self, image: Image) -> str:
        """Store an uploaded image durably (file fsynced, row committed); returns its new source id."""
        source_id = str(uuid.uuid4())
        name = f"{source_id}.{_EXTENSIONS[image.content_type]}"
        received_at = datetime.now(timezone.utc).isoformat()
        with self._write_lock:
            written: list[Path] = []
            try:
                _write_file(self.sources_dir / name, image.data, written)
                _fsync_directory(self.sources_dir)
                self._writer.execute(
                    "INSERT INTO sources (id, received_at, file, content_type) VALUES (?, ?, ?, ?)",
                    (source_id, received_at, name, image.content_type),
                )
            except BaseException:
                self._remove_files(written)
                raise
        return source_id

    def source_file(self, source_id: str) -> tuple[Path, str] | None:
        """The file and content type of an uploaded image, or ``None`` when no upload has this id."""
        with self._read_lock:
            row = self._reader.execute("SELECT file, content_type FROM sources WHERE id = ?", (source_id,)).fetchone()
        return None if row is None else (self.sources_dir / row[0], row[1])

    def source(self, source_id: str) -> Image | None:
        """An uploaded image, or ``None`` when no upload has this id."""
        found = self.source_file(source_id)
        return None if found is None else Image(found[0].read_bytes(), found[1])

    def get(self, event_id: str) -> StoredEvent | None:
        """The event with this id, or ``None``."""
        with self._read_lock:
            row = self._reader.execute(f"SELECT {_COLUMNS} FROM events WHERE id = ?", (event_id,)).fetchone()
        return _stored_event(row) if row else None

    def list_events(
        self, *, limit: int, offset: int = 0, event_schema: str | None = None
    ) -> tuple[list[StoredEvent], int]:
        """A page of events, newest first, and the total matching ``event_schema`` (all when ``None``)."""
        where, params = ("WHERE event_schema = ?", (event_schema,)) if event_schema is not None else ("", ())
        with self._read_lock:
            rows = self._reader.execute(
                f"SELECT {_COLUMNS} FROM events {where} ORDER BY seq DESC LIMIT ? OFFSET ?", (*params, limit, offset)
            ).fetchall()
            (total,) = self._reader.execute(f"SELECT COUNT(*) FROM events {where}", params).fetchone()
        return [_stored_event(row) for row in rows], total

    def count(self) -> int:
        """How many events are stored."""
        with self._read_lock:
            (total,) = self._reader.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(total)

    def image(self, event_id: str, role: str) -> Image | None:
        """The ``"output"`` or ``"input"`` image of an event, or ``None`` when it has none."""
        found = self.image_file(event_id, role)
        return None if found is None else Image(found[0].read_bytes(), found[1])

    def image_file(self, event_id: str, role: str) -> tuple[Path, str] | None:
        """The file and content type of an event's ``"output"`` or ``"input"`` image, or ``None``."""
        if role not in ("output", "input"):
            raise ValueError(f"role must be 'output' or 'input', not {role!r}")
        with self._read_lock:
            row = self._reader.execute(
                f"SELECT {role}_file, {role}_content_type FROM events WHERE id = ?", (event_id,)
            ).fetchone()
        if row is None or row[0] is None:
            return None
        return self.images_dir / row[0], row[1]


def _stored_event(row: tuple[Any, ...]) -> StoredEvent:
    (
        event_id,
        key,
        received_at,
        timestamp,
        schema,
        data,
        metadata,
        solution,
        position,
        details,
        output_type,
        input_type,
        vision_event_id,
    ) = row
    return StoredEvent(
        id=event_id,
        idempotency_key=key,
        received_at=received_at,
        inference_timestamp=timestamp,
        event_schema=schema,
        event_data=orjson.loads(data),
        custom_metadata=None if metadata is None else orjson.loads(metadata),
        solution=solution,
        display_image_position=position,
        image_details=orjson.loads(details),
        output_content_type=output_type,
        input_content_type=input_type,
        vision_event_id=vision_event_id,
    )


def _write_file(path: Path, data: bytes, written: list[Path]) -> None:
    written.append(path)  # before opening: a partly written file is removed too
    with open(path, "xb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _upgrade_first_layout(connection: sqlite3.Connection) -> None:
    """Rebuild an events table of the first layout (output image required, no vision_event_id) in the current one."""
    columns = {row[1] for row in connection.execute("PRAGMA table_info(events)")}
    if not columns or "vision_event_id" in columns:
        return
    events_table = _SCHEMA.split(";")[0].replace("IF NOT EXISTS events", "events_upgraded")
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(events_table)
        connection.execute(
            f"INSERT INTO events_upgraded ({_FIRST_LAYOUT_COLUMNS}) SELECT {_FIRST_LAYOUT_COLUMNS} FROM events"
        )
        connection.execute("DROP TABLE events")
        connection.execute("ALTER TABLE events_upgraded RENAME TO events")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    logger.info("upgraded the event database to hold events without images and Vision Events ids")


def _fsync_directory(path: Path) -> None:
    # A new file's name lives in its directory; fsync it so the file is found after a crash.
    # Windows cannot open a directory for fsync; NTFS journals the entry itself.
    if os.name == "nt":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
