"""Pages of event summaries, for ``GET /v2/events`` and the viewer's list.

A summary is small whatever was stored: the event's identity, times, schema,
solution (use case) and event data, its Vision Events ``eventId`` if it came
that way, its image label, which images it has, and how many annotations of
each kind it has. Text longer than :data:`SUMMARY_TEXT_CHARS`
(the event data's strings, the label) is cut there, ending in ``…``, and the
summary says ``"clipped": true``; the whole event is at ``GET /v2/events/{id}``.
SQLite does the cutting, so a long stored string never reaches Python.

Queries run on a read-only SQLite connection of their own (WAL lets them run
while the service writes). Paging and the schema and solution filters use the
store's indexes (``seq``, ``(event_schema, seq)``, ``(solution, seq)``); the
time and text filters scan,
which at tens of thousands of events stays in the milliseconds.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from fastsend.server.timeline import count_over_time

__all__ = ["MAX_SOLUTIONS_LISTED", "SUMMARY_TEXT_CHARS", "EventIndex", "EventQuery"]

SUMMARY_TEXT_CHARS = 200
#: The most solution names :meth:`EventIndex.solutions` gives (the filter offers them).
MAX_SOLUTIONS_LISTED = 200

_ANNOTATION_LISTS = ("objectDetections", "instanceSegmentations", "keypoints", "classifications")


@dataclass(frozen=True)
class EventQuery:
    """One page of the event list: filters plus paging. ``None`` filters match everything.

    ``since`` / ``until`` bound the inference time (UTC ISO-8601; ``until``
    excluded); ``text`` matches the external id or the custom metadata's keys
    and values (case-insensitive for ASCII); ``solution`` is matched exactly.
    """

    limit: int
    offset: int = 0
    schema: str | None = None
    since: str | None = None
    until: str | None = None
    text: str | None = None
    solution: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        """The SQL ``WHERE`` clause (empty when unfiltered) and its parameters."""
        clauses: list[str] = []
        params: list[Any] = []
        if self.schema is not None:
            clauses.append("event_schema = ?")
            params.append(self.schema)
        if self.solution is not None:
            clauses.append("solution = ?")
            params.append(self.solution)
        if self.since is not None:
            clauses.append("julianday(inference_timestamp) >= julianday(?)")
            params.append(self.since)
        if self.until is not None:
            clauses.append("julianday(inference_timestamp) < julianday(?)")
            params.append(self.until)
        if self.text:
            clause, count = _text_clause(self.text)
            clauses.append(clause)
            params += [_like_pattern(self.text)] * count
        return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


_IN_EXTERNAL_ID = "json_extract(event_data, '$.externalId') LIKE ? ESCAPE '\\'"
# json_each reads the metadata's keys and values as text, not as JSON with its quoting and escapes;
# true and false read as words, not as SQLite's 1 and 0.
_IN_METADATA = (
    "EXISTS (SELECT 1 FROM json_each(custom_metadata) WHERE key LIKE ? ESCAPE '\\'"
    " OR (CASE type WHEN 'true' THEN 'true' WHEN 'false' THEN 'false' ELSE value END) LIKE ? ESCAPE '\\')"
)
_IN_TEXT = "event_data LIKE ? ESCAPE '\\'", "custom_metadata LIKE ? ESCAPE '\\'"


def _text_clause(text: str) -> tuple[str, int]:
    """The SQL matching ``text`` in the external id or the metadata, and how many LIKE patterns it takes."""
    if any(char in '"\\' or char < " " for char in text):
        return f"({_IN_EXTERNAL_ID} OR {_IN_METADATA})", 3
    # Text that JSON writes as it is: first look for it in the stored JSON text, which is cheap,
    # and parse only the rows that have it.
    in_data, in_metadata = _IN_TEXT
    return f"(({in_data} AND {_IN_EXTERNAL_ID}) OR ({in_metadata} AND {_IN_METADATA}))", 5


def _clipped(expression: str) -> str:
    """SQL for ``expression`` cut to SUMMARY_TEXT_CHARS plus ``…``, read once: at most one character past the cut."""
    cut = SUMMARY_TEXT_CHARS
    return (
        f"(SELECT CASE WHEN length(text) > {cut} THEN substr(text, 1, {cut}) || '…' ELSE text END"
        f" FROM (SELECT substr({expression}, 1, {cut + 1}) AS text))"
    )


# Columns of a page's summaries. Each row is read where it lies (the page is chosen by seq alone), and
# each long value once, so a long stored value passes through SQLite a row at a time and only its cut
# form comes out.
_SUMMARY_COLUMNS = ", ".join(
    [
        "seq",
        "id",
        "received_at",
        "idempotency_key",
        "inference_timestamp",
        "event_schema",
        # JSON text no longer than the cut cannot hold a string longer than it: most rows pass as they are.
        # The others get their strings replaced by cut ones; every number keeps its text (json_each would
        # read an integer past 2^63 as a float, 2^64-1 as 1.84467440737096e+19).
        f"CASE WHEN length(event_data) <= {SUMMARY_TEXT_CHARS} THEN event_data ELSE"
        f" json_patch(event_data, (SELECT json_group_object(key, {_clipped('value')})"
        " FROM json_each(event_data) WHERE type = 'text')) END",
        _clipped("json_extract(image_details, '$.label')"),
        "output_content_type IS NOT NULL",
        "input_content_type IS NOT NULL",
        _clipped("solution"),
        "vision_event_id",
        *(f"json_array_length(image_details, '$.{name}')" for name in _ANNOTATION_LISTS),
    ]
)


class EventIndex:
    """Read-only queries over the store's database, on a connection of its own."""

    def __init__(self, database: Path) -> None:
        self._connection = sqlite3.connect(
            f"{database.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False, isolation_level=None
        )
        self._connection.execute("PRAGMA busy_timeout=5000")
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._connection.close()

    def page(self, query: EventQuery) -> dict[str, Any]:
        """``{"events": [summary, …], "total": matching, "newest": seq}``, newest first."""
        where, params = query.where()
        with self._lock:
            # One read transaction, so the page, its total and "newest" agree with each other.
            self._connection.execute("BEGIN")
            try:
                rows = self._connection.execute(
                    f"SELECT {_SUMMARY_COLUMNS} FROM events WHERE seq IN"
                    f" (SELECT seq FROM events {where} ORDER BY seq DESC LIMIT ? OFFSET ?) ORDER BY seq DESC",
                    [*params, query.limit, query.offset],
                ).fetchall()
                (total,) = self._connection.execute(f"SELECT COUNT(*) FROM events {where}", params).fetchone()
                newest = self._newest()
            finally:
                self._connection.execute("COMMIT")
        return {"events": [_summary(row) for row in rows], "total": total, "newest": newest}

    def timeline(self, query: EventQuery) -> dict[str, Any]:
        """The events matching ``query``'s filters counted over time (see :func:`.timeline.count_over_time`)."""
        where, params = query.where()
        with self._lock:
            return count_over_time(self._connection, where, params, query.since, query.until)

    def solutions(self) -> list[str]:
        """The solutions events carry, in order, at most :data:`MAX_SOLUTIONS_LISTED` (read from the index)."""
        with self._lock:
            rows = self._connection.execute(
                "SELECT DISTINCT solution FROM events WHERE solution IS NOT NULL ORDER BY solution LIMIT ?",
                (MAX_SOLUTIONS_LISTED,),
            ).fetchall()
        return [solution for (solution,) in rows]

    def newest(self) -> int:
        """The sequence number of the last stored event, 0 when there is none."""
        with self._lock:
            return self._newest()

    def _newest(self) -> int:
        (seq,) = self._connection.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        return int(seq)


def _summary(row: tuple[Any, ...]) -> dict[str, Any]:
    seq, event_id, received_at, key, timestamp, schema, data, label, has_output, has_input, *rest = row
    solution, vision_event_id, *counts = rest
    event_data = orjson.loads(data)
    # A cut text is one character longer than the cut (its "…"); a whole one is never longer than it.
    texts = [label, solution, *(value for value in event_data.values() if isinstance(value, str))]
    return {
        "seq": seq,
        "id": event_id,
        "received_at": received_at,
        "idempotency_key": key,
        "inference_timestamp": timestamp,
        "event_schema": schema,
        "event_data": event_data,
        "solution": solution,
        "vision_event_id": vision_event_id,
        "label": label,
        "has_output_image": bool(has_output),
        "has_input_image": bool(has_input),
        "annotations": {name: count for name, count in zip(_ANNOTATION_LISTS, counts, strict=True) if count},
        "clipped": any(text is not None and len(text) > SUMMARY_TEXT_CHARS for text in texts),
    }
