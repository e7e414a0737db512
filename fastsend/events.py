"""The five event schemas, custom metadata, and the rules both ends enforce.

The rules are written once, keyed by the wire (camelCase) names, and used by
the client when an event is built and by the reference service when a body
arrives.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from fastsend.errors import ValidationError

__all__ = [
    "COMMON_KEYWORDS",
    "EVENT_SCHEMAS",
    "SCHEMA_KEYWORDS",
    "TEXT_MAX_CHARS",
    "Event",
    "ValidationError",
    "parse_timestamp",
    "validate_class_names",
    "validate_custom_metadata",
    "validate_event_data",
    "validate_text",
]

INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1
#: The most characters a text field holds unless its rule says otherwise: identifiers, locations, item
#: types, image labels, class names. Far above real use; it keeps what one event can make a reader hold small.
TEXT_MAX_CHARS = 1000


def validate_text(field: str, value: Any, *, max_chars: int = TEXT_MAX_CHARS) -> str:
    """A JSON-safe string: a real ``str``, encodable as UTF-8, of at most ``max_chars`` characters."""
    if not isinstance(value, str):
        raise ValidationError(field, value, f"must be a string, not {type(value).__name__}")
    if len(value) > max_chars:
        raise ValidationError(field, value, f"must be at most {max_chars} characters (got {len(value)})")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValidationError(field, value, f"must be valid Unicode (lone surrogate at index {exc.start})") from None
    return value


def validate_class_names(field: str, names: list[str]) -> None:
    """An annotation list's class names, each by :func:`validate_text` (``field[i].class`` names a bad one).

    One pass over them all first: a frame's dozen names cost one check, not a dozen.
    """
    if max(map(len, names), default=0) <= TEXT_MAX_CHARS and _encodable("".join(names)):
        return
    for index, name in enumerate(names):
        validate_text(f"{field}[{index}].class", name)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Rule:
    def check(self, field: str, value: Any) -> Any:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass(frozen=True)
class _Text(_Rule):
    max_chars: int = TEXT_MAX_CHARS
    pattern: str | None = None

    def check(self, field: str, value: Any) -> str:
        text = validate_text(field, value, max_chars=self.max_chars)
        if self.pattern is not None and not re.fullmatch(self.pattern, text):
            raise ValidationError(field, value, f"must match {self.pattern}")
        return text


@dataclass(frozen=True)
class _Choice(_Rule):
    choices: tuple[str, ...]

    def check(self, field: str, value: Any) -> str:
        if not isinstance(value, str) or value not in self.choices:
            raise ValidationError(field, value, f"must be one of {', '.join(self.choices)}")
        return value


@dataclass(frozen=True)
class _Count(_Rule):
    def check(self, field: str, value: Any) -> int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValidationError(field, value, "must be an integer (not a bool or float)")
        count = int(value)
        if not 0 <= count <= UINT64_MAX:
            raise ValidationError(field, count, f"must be between 0 and {UINT64_MAX}")
        return count


_SHORT_TEXT = _Text(max_chars=TEXT_MAX_CHARS)
_LONG_TEXT = _Text(max_chars=10_000)

# wire name -> rule, per schema; the service rejects keys not listed here.
EVENT_SCHEMAS: dict[str, dict[str, _Rule]] = {
    "quality_check": {"result": _Choice(("pass", "fail")), "externalId": _SHORT_TEXT},
    "inventory_count": {
        "location": _SHORT_TEXT,
        "itemCount": _Count(),
        "itemType": _SHORT_TEXT,
        "externalId": _SHORT_TEXT,
    },
    "safety_alert": {
        "alertType": _Text(max_chars=TEXT_MAX_CHARS, pattern=r"[A-Za-z0-9_-]+"),
        "severity": _Choice(("low", "medium", "high")),
        "description": _LONG_TEXT,
        "externalId": _SHORT_TEXT,
    },
    "custom": {"value": _LONG_TEXT, "externalId": _SHORT_TEXT},
    "operator_feedback": {
        "relatedEventId": _SHORT_TEXT,
        "feedback": _Choice(("correct", "incorrect", "inconclusive")),
    },
}

# Python keyword -> wire name, per schema, as the constructors (Event.safety_alert(...)) take them.
SCHEMA_KEYWORDS: dict[str, dict[str, str]] = {
    "quality_check": {"result": "result", "external_id": "externalId"},
    "inventory_count": {
        "location": "location",
        "item_count": "itemCount",
        "item_type": "itemType",
        "external_id": "externalId",
    },
    "safety_alert": {
        "alert_type": "alertType",
        "severity": "severity",
        "description": "description",
        "external_id": "externalId",
    },
    "custom": {"value": "value", "external_id": "externalId"},
    "operator_feedback": {"related_event_id": "relatedEventId", "feedback": "feedback"},
}
# The keywords every constructor takes besides its schema's fields.
COMMON_KEYWORDS = ("custom_metadata", "solution", "inference_timestamp")

METADATA_MAX_KEYS = 100
METADATA_KEY_MAX_CHARS = 100
METADATA_VALUE_MAX_CHARS = 1000
_METADATA_KEY = re.compile(r"[A-Za-z0-9_ -]+")


def validate_event_data(schema: Any, data: Any) -> dict[str, Any]:
    """Check ``event_data`` (wire names) against ``schema``; returns it normalised."""
    rules = EVENT_SCHEMAS.get(schema) if isinstance(schema, str) else None
    if rules is None:
        raise ValidationError("event_schema", schema, f"must be one of {', '.join(EVENT_SCHEMAS)}")
    if not isinstance(data, Mapping):
        raise ValidationError("event_data", data, "must be an object")
    clean: dict[str, Any] = {}
    for key, value in data.items():
        rule = rules.get(key)
        if rule is None:
            allowed = ", ".join(rules)
            raise ValidationError(f"event_data.{key}", value, f"is not a field of {schema} (allowed: {allowed})")
        # str(): a str subclass key (numpy's str_) is one orjson refuses to serialize.
        clean[str(key)] = rule.check(f"event_data.{key}", value)
    return clean


def validate_custom_metadata(metadata: Any) -> dict[str, str | int | float | bool]:
    """Flat metadata: ≤ 100 keys ``[A-Za-z0-9_ -]+`` of ≤ 100 chars; str/int/float/bool values."""
    if not isinstance(metadata, Mapping):
        raise ValidationError("custom_metadata", metadata, "must be a mapping of key to value")
    if len(metadata) > METADATA_MAX_KEYS:
        shown = f"<{len(metadata)} keys>"
        raise ValidationError("custom_metadata", shown, f"must have at most {METADATA_MAX_KEYS} keys")
    clean: dict[str, str | int | float | bool] = {}
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise ValidationError("custom_metadata key", key, "must be a string")
        if len(key) > METADATA_KEY_MAX_CHARS:
            raise ValidationError("custom_metadata key", key, f"must be at most {METADATA_KEY_MAX_CHARS} characters")
        if not _METADATA_KEY.fullmatch(key):
            raise ValidationError("custom_metadata key", key, "must match [A-Za-z0-9_ -]+")
        clean[str(key)] = _metadata_value(f"custom_metadata[{key!r}]", value)  # str(): as in validate_event_data
    return clean


def _metadata_value(field: str, value: Any) -> str | int | float | bool:
    # bool before int: True is an int in Python but a distinct JSON type.
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        integer = int(value)
        if not INT64_MIN <= integer <= UINT64_MAX:
            raise ValidationError(field, integer, "must fit in 64 bits")
        return integer
    if isinstance(value, (float, np.floating)):
        number = float(value)
        if not math.isfinite(number):
            raise ValidationError(field, number, "must be a finite number (no NaN or infinity)")
        return number
    if isinstance(value, str):
        return validate_text(field, value, max_chars=METADATA_VALUE_MAX_CHARS)
    raise ValidationError(field, value, f"must be str, int, float or bool, not {type(value).__name__}")


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat()


# The ISO-8601 forms accepted, the same on every Python (datetime.fromisoformat learned "Z", fractions
# other than 3 or 6 digits and the basic format only in 3.11, and week dates besides).
_FRACTION = r"(?:[.,](?P<fraction>[0-9]+))?"
_EXTENDED_TIMESTAMP = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})[Tt ]"
    rf"(?P<hour>[0-9]{{2}}):(?P<minute>[0-9]{{2}})(?::(?P<second>[0-9]{{2}}){_FRACTION})?"
    # ±HH:MM:SS[.ffffff] is what datetime.isoformat() writes for an offset with seconds.
    r"(?P<offset>[Zz]|[+-][0-9]{2}(?::[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?|[0-9]{2})?)?"
)
_BASIC_TIMESTAMP = re.compile(
    r"(?P<year>[0-9]{4})(?P<month>[0-9]{2})(?P<day>[0-9]{2})[Tt]"
    rf"(?P<hour>[0-9]{{2}})(?P<minute>[0-9]{{2}})(?:(?P<second>[0-9]{{2}}){_FRACTION})?"
    r"(?P<offset>[Zz]|[+-][0-9]{2}(?:[0-9]{2})?)?"
)
TIMESTAMP_FRACTION_MAX_DIGITS = 9
_TIMESTAMP_FORM = "YYYY-MM-DDTHH:MM[:SS[.fraction]] and Z or ±HH:MM"


def parse_timestamp(text: str, field: str = "inference_timestamp") -> datetime:
    """An ISO-8601 timestamp with a UTC offset as an aware ``datetime``; the same on Python 3.10 to 3.13.

    Accepted: ``YYYY-MM-DDTHH:MM[:SS[.fraction]]`` (``T``, ``t`` or a space between date and
    time; ``.`` or ``,`` before the fraction) or the basic form ``YYYYMMDDTHHMM[SS[.fraction]]``,
    then an offset: ``Z``, ``±HH:MM``, ``±HHMM``, ``±HH`` (or ``±HH:MM:SS[.ffffff]``, as
    ``datetime.isoformat()`` writes it). The fraction has 1 to 9 digits; digits past the
    microsecond are dropped (truncated, never rounded: rounding could carry into the next
    second, day or year). A text without an offset is refused: its moment is unknown.
    """
    match = _EXTENDED_TIMESTAMP.fullmatch(text) or _BASIC_TIMESTAMP.fullmatch(text)
    if match is None:
        raise ValidationError(field, text, f"must be an ISO-8601 timestamp ({_TIMESTAMP_FORM})")
    parts = match.groupdict()
    if parts["offset"] is None:
        raise ValidationError(field, text, "must carry a UTC offset (Z or ±HH:MM)")
    fraction = parts["fraction"] or ""
    if len(fraction) > TIMESTAMP_FRACTION_MAX_DIGITS:
        rule = f"must have at most {TIMESTAMP_FRACTION_MAX_DIGITS} digits of fractional seconds (got {len(fraction)})"
        raise ValidationError(field, text, rule)
    offset = _offset(parts["offset"], field, text)
    try:
        return datetime(
            int(parts["year"]),
            int(parts["month"]),
            int(parts["day"]),
            int(parts["hour"]),
            int(parts["minute"]),
            int(parts["second"] or 0),
            int(fraction[:6].ljust(6, "0")),
            tzinfo=offset,
        )
    except ValueError as exc:  # month 13, February 30, hour 24, second 60, year 0
        raise ValidationError(field, text, f"must be a real date and time ({exc})") from None


def _offset(text: str, field: str, given: str) -> timezone:
    if text in ("Z", "z"):
        return timezone.utc
    digits, _, micro = text[1:].replace(":", "").partition(".")
    hours, minutes, seconds = int(digits[0:2]), int(digits[2:4] or 0), int(digits[4:6] or 0)
    if hours > 23 or minutes > 59 or seconds > 59:
        raise ValidationError(field, given, f"must have a UTC offset between -23:59 and +23:59 (got {text})")
    size = timedelta(hours=hours, minutes=minutes, seconds=seconds, microseconds=int(micro.ljust(6, "0")))
    return timezone(-size if text[0] == "-" else size)


def _timestamp(value: datetime | str | None) -> str:
    if value is None:
        return _utc_now()
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValidationError("inference_timestamp", value, "must be timezone-aware")
        return _utc_isoformat(value)
    if isinstance(value, str):
        return _utc_isoformat(parse_timestamp(value), value)
    raise ValidationError("inference_timestamp", value, "must be a datetime or an ISO-8601 string")


def _utc_isoformat(moment: datetime, given: Any = None) -> str:
    try:
        return moment.astimezone(timezone.utc).isoformat()
    except OverflowError:  # e.g. 0001-01-01T00:00+01:00 is in year 0 in UTC
        shown = moment if given is None else given
        raise ValidationError("inference_timestamp", shown, "must fall within years 1 to 9999 in UTC") from None


@dataclass(frozen=True, slots=True)
class Event:
    """One validated event: schema, its data (wire names), metadata and the time it happened.

    Build it with a schema constructor — ``Event.quality_check(result="fail")`` — so
    every rule runs on the caller's thread. ``inference_timestamp`` is fixed at
    creation: queueing and retries never move it.
    """

    schema: str
    data: dict[str, Any]
    custom_metadata: dict[str, str | int | float | bool] | None = None
    solution: str | None = None
    inference_timestamp: str = None  # type: ignore[assignment]  # None: now, in UTC

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", validate_event_data(self.schema, self.data))
        if self.custom_metadata is not None:
            object.__setattr__(self, "custom_metadata", validate_custom_metadata(self.custom_metadata))
        if self.solution is not None:
            validate_text("solution", self.solution, max_chars=1000)
        object.__setattr__(self, "inference_timestamp", _timestamp(self.inference_timestamp))

    @classmethod
    def _build(cls, schema: str, fields: dict[str, Any], common: dict[str, Any]) -> Event:
        """Build from a constructor's keywords, naming them (not the wire names) in errors."""
        keywords = SCHEMA_KEYWORDS[schema]
        for name in common:
            if name not in COMMON_KEYWORDS:
                raise TypeError(unexpected_keyword_message(f"Event.{schema}()", name, [*keywords, *COMMON_KEYWORDS]))
        data = {keywords[name]: value for name, value in fields.items() if value is not None}
        try:
            return cls(schema, data, **common)
        except ValidationError as error:
            keyword = {f"event_data.{wire}": name for name, wire in keywords.items()}.get(error.field)
            if keyword is None:
                raise
            raise error.renamed(keyword) from None

    @classmethod
    def quality_check(cls, result: str | None = None, external_id: str | None = None, **common: Any) -> Event:
        """A pass/fail inspection: ``result`` is ``"pass"`` or ``"fail"``."""
        return cls._build("quality_check", {"result": result, "external_id": external_id}, common)

    @classmethod
    def inventory_count(
        cls,
        location: str | None = None,
        item_count: int | None = None,
        item_type: str | None = None,
        external_id: str | None = None,
        **common: Any,
    ) -> Event:
        """A count of items: ``item_count`` is an integer from 0 to 2**64 - 1."""
        fields = {"location": location, "item_count": item_count, "item_type": item_type, "external_id": external_id}
        return cls._build("inventory_count", fields, common)

    @classmethod
    def safety_alert(
        cls,
        alert_type: str | None = None,
        severity: str | None = None,
        description: str | None = None,
        external_id: str | None = None,
        **common: Any,
    ) -> Event:
        """A safety alert: ``alert_type`` matches ``[A-Za-z0-9_-]+``; ``severity`` is low, medium or high."""
        fields = {
            "alert_type": alert_type,
            "severity": severity,
            "description": description,
            "external_id": external_id,
        }
        return cls._build("safety_alert", fields, common)

    @classmethod
    def custom(cls, value: str | None = None, external_id: str | None = None, **common: Any) -> Event:
        """A free-form event: ``value`` is up to 10,000 characters."""
        return cls._build("custom", {"value": value, "external_id": external_id}, common)

    @classmethod
    def operator_feedback(
        cls, related_event_id: str | None = None, feedback: str | None = None, **common: Any
    ) -> Event:
        """A verdict on an earlier event: ``feedback`` is correct, incorrect or inconclusive."""
        return cls._build("operator_feedback", {"related_event_id": related_event_id, "feedback": feedback}, common)


def unexpected_keyword_message(callable_name: str, name: str, known: list[str]) -> str:
    """Python's own wording for a misspelled keyword, plus the closest known one."""
    message = f"{callable_name} got an unexpected keyword argument {name!r}"
    close = difflib.get_close_matches(name, known, n=1)
    return f"{message}; did you mean {close[0]!r}?" if close else message


SOLUTION_MAX_CHARS = 1000


def validate_inference_timestamp(value: Any) -> str:
    """An inference timestamp as UTC ISO-8601 text, the form sent on the wire.

    Accepts a timezone-aware ``datetime`` or an ISO-8601 string carrying an
    offset, read by :func:`parse_timestamp` (``Z`` included, on every Python);
    both are converted to UTC. A naive value, or one outside years 1 to 9999
    once in UTC, is refused.
    """
    if value is None:
        raise ValidationError("inference_timestamp", value, "must be a datetime or an ISO-8601 string")
    return _timestamp(value)


def validate_solution(value: Any) -> str:
    """A ``solution`` (use-case id): a string of at most 1 000 characters."""
    return validate_text("solution", value, max_chars=SOLUTION_MAX_CHARS)
