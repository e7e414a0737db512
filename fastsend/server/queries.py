"""Query parameters: one set of rules for every route of the service.

A route names the parameters it takes; anything else, a repeated parameter, or
a value breaking its rule is a :class:`BadQuery` naming the parameter, the
value and the rule (the app answers it with a 400).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timezone

from multidict import MultiMapping

from fastsend.events import ValidationError, parse_timestamp, validate_solution

__all__ = [
    "MAX_OFFSET",
    "BadQuery",
    "check_query",
    "choice_parameter",
    "instant_parameter",
    "int_parameter",
    "solution_parameter",
    "text_parameter",
]

MAX_OFFSET = 2**63 - 1  # SQLite's largest integer


class BadQuery(ValidationError):
    """A query parameter broke its route's rules."""

    def __init__(self, name: str, value: str, rule: str) -> None:
        super().__init__(f"query parameter {name}", value, rule)


def check_query(query: MultiMapping[str], *allowed: str, blank_is_absent: bool = False) -> dict[str, str]:
    """The query as a dict; an unknown or repeated parameter raises :class:`BadQuery`.

    ``blank_is_absent``: a parameter given empty (``schema=``) counts as not given,
    for a page whose form sends its empty fields.
    """
    checked: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in query.items():
        if name not in allowed:
            takes = f"takes only {', '.join(allowed)}" if allowed else "takes no query parameters"
            raise BadQuery(name, value, f"is not a parameter of this endpoint ({takes})")
        if name in seen:
            raise BadQuery(name, value, "is given more than once")
        seen.add(name)
        if not (blank_is_absent and value == ""):
            checked[name] = value
    return checked


def int_parameter(query: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    """An integer from ``low`` to ``high`` written in ASCII digits, or ``default`` when absent."""
    text = query.get(name)
    if text is None:
        return default
    # ASCII digits only: int() would also take "+5", " 5", "5_0" and non-ASCII digits. The length
    # check comes first, so a thousand digits are refused without being converted.
    if not (text.isascii() and text.isdigit() and len(text) <= len(str(high))) or not low <= int(text) <= high:
        raise BadQuery(name, text, f"must be an integer from {low} to {high}")
    return int(text)


def choice_parameter(query: dict[str, str], name: str, choices: Iterable[str]) -> str | None:
    """One of ``choices``, or ``None`` when absent."""
    value = query.get(name)
    options = list(choices)
    if value is not None and value not in options:
        raise BadQuery(name, value, f"must be one of {', '.join(options)}")
    return value


def text_parameter(query: dict[str, str], name: str, max_chars: int) -> str | None:
    """Text of at most ``max_chars`` characters, or ``None`` when absent."""
    value = query.get(name)
    if value is not None and len(value) > max_chars:
        raise BadQuery(name, value, f"must be at most {max_chars} characters (got {len(value)})")
    return value


def instant_parameter(query: dict[str, str], name: str) -> str | None:
    """An ISO-8601 timestamp with a UTC offset, as UTC text SQLite's ``julianday`` reads; ``None`` when absent."""
    text = query.get(name)
    if text is None:
        return None
    try:
        parsed = parse_timestamp(text, field=name)  # the rule inference_timestamp is read by, on every Python
    except ValidationError as refused:
        raise BadQuery(name, text, refused.rule) from None
    try:
        return parsed.astimezone(timezone.utc).isoformat()
    except OverflowError:  # 0001-01-01T00:00+01:00 is in year 0 in UTC
        raise BadQuery(name, text, "must fall within years 1 to 9999 in UTC") from None


def solution_parameter(query: dict[str, str], name: str) -> str | None:
    """A ``solution`` (use case id) by the rule a body's ``solution`` follows, or ``None`` when absent."""
    value = query.get(name)
    if value is None:
        return None
    try:
        return validate_solution(value)
    except ValidationError as refused:
        raise BadQuery(name, value, refused.rule) from None
