"""A body's JSON structure, held to the limits on its bytes before it is parsed.

Parsing makes a Python object of every JSON value: a number written in four
bytes becomes some thirty of memory, a ``[1,2]`` pair about eighty. A body
of a million small boxes cost eleven times its size before validation could
refuse its first list, a polygon of ten million points twenty-five times.
So before parsing, :func:`check_structure` holds the annotation lists and
point lists to :class:`~.validation.BodyLimits` on the body's bytes.

First a count made at C speed: a value is a container or follows a ``[``,
``{`` or ``,``, so their number bounds the values (strings holding such
characters only make it larger). A body of few values (a body of images) is
parsed at once: whatever it holds, it cannot cost much. Any other is read
token by token, strings skipped whole (and the pairs of a polygon, the
objects of a keypoint list, a list at a time), until an annotation list or
point list longer than its limit is named, with the 422 validation would
give, or its values pass what a body within the limits can hold (a 413).
Reading stops at the first list past its limit, so a hostile body costs
little time as well as little memory.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from fastsend.errors import ValidationError
from fastsend.events import EVENT_SCHEMAS, METADATA_MAX_KEYS
from fastsend.server.errors import HttpError
from fastsend.server.validation import ANNOTATION_LISTS, POINT_LISTS, BodyLimits, too_many, too_many_points

__all__ = ["PARSED_AT_ONCE", "TooManyValues", "check_structure", "max_values", "parse_object"]

#: A body of at most this many JSON values is parsed without being read first: a few MB of objects at most.
PARSED_AT_ONCE = 100_000

# Values around the annotation lists: the envelope, the image entry, the event data and the metadata.
_ENVELOPE_VALUES = 64 + max(len(fields) for fields in EVENT_SCHEMAS.values()) + METADATA_MAX_KEYS
# Each annotation: its object and six fields (class, x, y, width, height, confidence), plus its list.
_ANNOTATION_VALUES = 8
# A polygon point is a pair [x, y]: three values; a keypoint {id, x, y}: four.
_POINT_VALUES = 3
_KEYPOINT_VALUES = 4
# JSON tokens: a string (escapes and all), a structural character, or a run of anything else
# (a number, true, false, null). Whitespace is skipped between them.
_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}:,]|[^\s\[\]{}:,"]+', re.DOTALL)
# A polygon's point: a pair (no strings, no nesting); a keypoint: a flat object whose strings hold no
# quote, backslash or brace. Lists of them are matched a list at a time.
_PAIR = rb"\[[^\[\]{}\"]*\]"
_KEYPOINT = rb'\{(?:[^{}\[\]"]|"[^"\\{}]*")*\}'
_ITEMS = {"points": (_PAIR, b"[", _POINT_VALUES), "keypoints": (_KEYPOINT, b"{", _KEYPOINT_VALUES)}
# The deepest container a limit applies to: body{ images[ entry{ list[ annotation{ points[.
_DEEPEST_LIMITED = 6
# re's repeat counts stop at 65535 on older Pythons; a longer list is read token by token.
_MAX_RUN = 65_000


@functools.lru_cache(maxsize=8)
def _list_rest(item: bytes, limit: int) -> re.Pattern[bytes]:
    """The rest of a list after its ``[``: up to ``limit`` items, then its ``]``."""
    repeat = min(limit, _MAX_RUN) - 1
    return re.compile(rb"\s*(?:(?:%s\s*,\s*){0,%d}%s\s*)?\]" % (item, repeat, item))


class TooManyValues(ValueError):
    """A body holds more JSON values than any body within the limits can."""


def max_values(limits: BodyLimits) -> int:
    """The most JSON values a body within ``limits`` can hold: every list full, every point a keypoint."""
    per_list = limits.max_annotations
    annotations = per_list * (_ANNOTATION_VALUES + 3 + 2 * (_ANNOTATION_VALUES + 1))
    return _ENVELOPE_VALUES + annotations + _KEYPOINT_VALUES * limits.max_total_points


def parse_object(raw: bytes | bytearray, limits: BodyLimits) -> dict[str, Any]:
    """``raw`` parsed as a JSON object, held to ``limits`` before it is parsed.

    Raises ``HttpError``: 413 for more values than a body within the limits holds, 422 for a list
    past its limit, 400 for what is not a JSON object.
    """
    try:
        check_structure(raw, limits)
        body = orjson.loads(raw)
    except TooManyValues as exc:
        raise HttpError(413, str(exc)) from None
    except ValidationError as exc:
        raise HttpError(422, str(exc)) from None
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HttpError(400, f"body must be a JSON object, not {type(body).__name__}")
    return body


def check_structure(raw: bytes | bytearray, limits: BodyLimits) -> int:
    """How many JSON values ``raw`` holds at most; raises if a list is past its limit or the values past
    :func:`max_values`.

    A list past its limit raises the ``ValidationError`` validation would (an
    annotation list's count given as "more than" the limit: reading stops
    there); too many values in all raise :class:`TooManyValues`. Bodies that
    are not JSON are left to the parser.
    """
    counted = 1 + raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    if counted <= PARSED_AT_ONCE:
        return counted
    scan = _Scan(limits, max_values(limits))
    scan.run(raw)
    return scan.values


@dataclass
class _Container:
    path: str
    is_array: bool
    depth: int
    limit: int | None = None  # the most items, for an annotation list or a point list
    noun: str = ""
    items: int = 0
    key: str = ""  # an object's latest key
    expect_key: bool = True


@dataclass
class _Scan:
    limits: BodyLimits
    bound: int
    values: int = 0
    points: int = 0  # polygon points and keypoints so far
    stack: list[_Container] = field(default_factory=list)

    def run(self, raw: bytes | bytearray) -> None:
        position = 0
        while (match := _TOKEN.search(raw, position)) is not None:
            position = match.end()
            token = match.group()
            first = token[0]
            top = self.stack[-1] if self.stack else None
            if first in b"]}":
                if top is not None:
                    self.stack.pop()
            elif first == 0x2C:  # ","
                if top is not None:
                    top.expect_key = not top.is_array
            elif first == 0x3A:  # ":"
                if top is not None:
                    top.expect_key = False
            elif first == 0x22 and top is not None and not top.is_array and top.expect_key:
                top.key = _key(token)
            else:
                self._value(first)
                if first == 0x5B and self.stack[-1].noun in _ITEMS:
                    position = self._point_run(raw, position)

    def _point_run(self, raw: bytes | bytearray, start: int) -> int:
        """Count a point list within its limit after its ``[`` in one match; returns where reading goes on."""
        points = self.stack[-1]
        item, opening, values = _ITEMS[points.noun]
        assert points.limit is not None  # a point list always has its limit
        run = _list_rest(item, points.limit).match(raw, start)
        if run is None:  # past its limit, or written some other way: read it token by token
            return start
        points.items = raw.count(opening, start, run.end())
        self.values += points.items * values
        self._count_points(points.items)
        self.stack.pop()
        return run.end()

    def _count_points(self, count: int) -> None:
        self.points += count
        if self.points > self.limits.max_total_points:
            limit = self.limits.max_total_points
            raise too_many_points("images[0]", f"<more than {limit} points>", limit)

    def _value(self, first: int) -> None:
        self.values += 1
        if self.values > self.bound:
            raise TooManyValues(
                f"body: holds more than {self.bound} JSON values, more than a body within the service's limits"
                f" can ({self.limits.max_annotations} annotations per list, {self.limits.max_total_points} points"
                " and keypoints in all: --max-annotations, --max-total-points)"
            )
        parent = self.stack[-1] if self.stack else None
        path = ""
        if parent is not None:
            if parent.depth > _DEEPEST_LIMITED:
                pass  # no limit applies this deep: no path is built (a path per level would grow as the square)
            elif parent.is_array:
                path = f"{parent.path}[{parent.items}]"
            else:
                path = f"{parent.path}.{parent.key}" if parent.path else parent.key
            parent.items += 1
            if parent.limit is not None and parent.items > parent.limit:
                raise too_many(parent.path, f"<more than {parent.limit} {parent.noun}>", parent.noun, parent.limit)
            if parent.noun in _ITEMS:
                self._count_points(1)
        if first in b"[{":
            self.stack.append(self._container(path, first == 0x5B, parent))

    def _container(self, path: str, is_array: bool, parent: _Container | None) -> _Container:
        depth = len(self.stack) + 1
        container = _Container(path, is_array, depth)
        if is_array and parent is not None and not parent.is_array:
            # body{ images[ entry{ list[ annotation{ points[
            if depth == 4 and parent.key in ANNOTATION_LISTS:
                container.limit, container.noun = self.limits.max_annotations, "annotations"
            elif depth == 6 and parent.key in POINT_LISTS:
                container.limit, container.noun = self.limits.max_points, POINT_LISTS[parent.key]
        return container


def _key(token: bytes) -> str:
    if b"\\" not in token:
        return token[1:-1].decode("utf-8", "replace")
    try:
        key = orjson.loads(token)
    except orjson.JSONDecodeError:
        return ""
    return key if isinstance(key, str) else ""
