"""Events over time, for the viewer's chart: counts per schema in buckets of a round width.

The range is the time filter's (``since`` inclusive, ``until`` exclusive);
a bound left open is taken from the matching events (the oldest, the newest).
Over it the service picks the narrowest width from :data:`BUCKET_WIDTHS` that
covers the range in at most :data:`MAX_BUCKETS` buckets, down to a millisecond
(the precision SQLite keeps), so a burst within a second is spread over
buckets of some milliseconds rather than drawn as one bar. Buckets start at
multiples of their width counted from the Unix epoch, in UTC (so an hour
bucket starts on the hour, a day bucket at midnight UTC); the first and last
may reach past the range. SQLite counts the events, grouped on the inference
time as whole milliseconds since the epoch, which is how it compares them in
the time filter too.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone
from typing import Any

__all__ = ["BUCKET_WIDTHS", "MAX_BUCKETS", "bucket_width", "count_over_time"]

MAX_BUCKETS = 60

_SECOND = 1000
_MINUTE = 60 * _SECOND
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR
_YEAR = 365 * _DAY

#: Bucket widths in milliseconds, narrowest first: round numbers of milliseconds, seconds, minutes, hours,
#: days and 365-day years. The widest covers years 1 to 9999 in fewer than MAX_BUCKETS buckets.
BUCKET_WIDTHS: tuple[int, ...] = (
    *(1, 2, 5, 10, 20, 50, 100, 200, 500),
    *(n * _SECOND for n in (1, 2, 5, 10, 15, 30)),
    *(n * _MINUTE for n in (1, 2, 5, 10, 15, 30)),
    *(n * _HOUR for n in (1, 2, 3, 6, 12)),
    *(n * _DAY for n in (1, 2, 7, 14, 30, 90, 180)),
    *(n * _YEAR for n in (1, 2, 5, 10, 20, 50, 100, 200, 500)),
)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_FIRST_MS = (datetime(1, 1, 1, tzinfo=timezone.utc) - _EPOCH) // timedelta(milliseconds=1)
_LAST_MS = (datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc) - _EPOCH) // timedelta(milliseconds=1)

# SQLite keeps a time as whole milliseconds of a Julian day number; julianday() returns them over
# 86,400,000 as a double, so rounding its offset from the epoch gives those milliseconds back exactly.
_DAY_TO_MS = "CAST(ROUND(({} - 2440587.5) * 86400000.0) AS INTEGER)"
_EPOCH_MS = _DAY_TO_MS.format("julianday({})")
_ROW_MS = _EPOCH_MS.format("inference_timestamp")
# The oldest and newest matching times, converted once each rather than row by row.
_ROW_RANGE_MS = ", ".join(_DAY_TO_MS.format(f"{edge}(julianday(inference_timestamp))") for edge in ("MIN", "MAX"))


def bucket_width(start_ms: int, end_ms: int) -> int:
    """The narrowest width in :data:`BUCKET_WIDTHS` whose aligned buckets cover ``[start_ms, end_ms)``
    in at most :data:`MAX_BUCKETS`."""
    for width in BUCKET_WIDTHS:
        if _bucket_count(_origin(start_ms, width), end_ms, width) <= MAX_BUCKETS:
            return width
    return BUCKET_WIDTHS[-1]


def _origin(start_ms: int, width: int) -> int:
    # Aligned to the epoch, but never before year 1, which no timestamp can name.
    return max(start_ms // width * width, _FIRST_MS)


def _bucket_count(origin: int, end_ms: int, width: int) -> int:
    return max(1, -(-(end_ms - origin) // width))


def count_over_time(
    connection: sqlite3.Connection, where: str, params: list[Any], since: str | None, until: str | None
) -> dict[str, Any]:
    """Counts of the events matching ``where`` per bucket and schema, on ``connection``.

    ``since`` / ``until`` are the time filter's bounds (UTC ISO-8601, or
    ``None`` when open). Returns ``{"start", "bucket_ms", "bucket_seconds",
    "buckets", "totals", "total", "newest"}`` (the bucket width in milliseconds,
    and in seconds, a fraction below one): ``buckets`` is every bucket of the range in
    order, each ``{"start": ISO-8601, "counts": {schema: n}}`` (schemas without
    events left out), ``totals`` the count per schema over the range (by schema
    name), ``newest`` the sequence number of the last stored event when counted.
    No bucket at all when the range is open and nothing matches, or when it is empty.
    """
    connection.execute("BEGIN")  # one read transaction: the range, the counts and "newest" see the same rows
    try:
        (newest,) = connection.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        bounds = _range(connection, where, params, since, until)
        if bounds is None:
            empty: dict[str, Any] = {
                "start": None,
                "bucket_ms": None,
                "bucket_seconds": None,
                "buckets": [],
                "totals": {},
                "total": 0,
            }
            return {**empty, "newest": newest}
        start_ms, end_ms = bounds
        width = bucket_width(start_ms, end_ms)
        origin = _origin(start_ms, width)
        rows = connection.execute(
            f"SELECT (ms - ?) / ?, event_schema, COUNT(*)"
            f" FROM (SELECT {_ROW_MS} AS ms, event_schema FROM events {where}) GROUP BY 1, 2",
            [origin, width, *params],
        ).fetchall()
    finally:
        connection.execute("COMMIT")
    return {**_shape(origin, width, _bucket_count(origin, end_ms, width), rows), "newest": newest}


def _range(
    connection: sqlite3.Connection, where: str, params: list[Any], since: str | None, until: str | None
) -> tuple[int, int] | None:
    """``(start_ms, end_ms)`` of the chart, ``end_ms`` excluded; ``None`` when there is nothing to chart."""
    start_ms, end_ms = connection.execute(
        f"SELECT {_EPOCH_MS.format('?')}, {_EPOCH_MS.format('?')}", [since, until]
    ).fetchone()
    if start_ms is None or end_ms is None:
        oldest, newest = connection.execute(f"SELECT {_ROW_RANGE_MS} FROM events {where}", params).fetchone()
        if oldest is None:
            return None
        start_ms = oldest if start_ms is None else start_ms
        end_ms = newest + 1 if end_ms is None else end_ms
    if end_ms <= start_ms:
        return None
    return start_ms, end_ms


def _shape(origin: int, width: int, count: int, rows: list[tuple[int, str, int]]) -> dict[str, Any]:
    counts: list[dict[str, int]] = [{} for _ in range(count)]
    totals: dict[str, int] = {}
    for bucket, schema, n in rows:
        # The range is the filter's, so every matching row falls in a bucket; say so loudly if one did not.
        if not 0 <= bucket < count:
            raise RuntimeError(f"{n} {schema} events fall in bucket {bucket}, outside the {count} buckets charted")
        counts[bucket][schema] = n
        totals[schema] = totals.get(schema, 0) + n
    return {
        "start": _iso(origin),
        "bucket_ms": width,
        "bucket_seconds": width // _SECOND if width % _SECOND == 0 else width / _SECOND,
        "buckets": [{"start": _iso(origin + i * width), "counts": c} for i, c in enumerate(counts)],
        "totals": dict(sorted(totals.items())),
        "total": sum(totals.values()),
    }


def _iso(ms: int) -> str:
    return (_EPOCH + timedelta(milliseconds=min(ms, _LAST_MS))).isoformat()
