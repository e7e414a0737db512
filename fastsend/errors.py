"""Every exception fastsend raises on purpose derives from :class:`FastsendError`.

``except fastsend.FastsendError`` catches them all; each also derives from the built-in a caller
would expect (``ValueError`` for bad input, ``RuntimeError`` for a state), so older handlers keep working.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BlockingCallError", "FastsendError", "QueueFullError", "SpoolLockedError", "ValidationError"]

_SHOWN_VALUE_CHARS = 80


class FastsendError(Exception):
    """The base of fastsend's exceptions."""


class ValidationError(FastsendError, ValueError):
    """An event, image or setting broke a rule; names the field, the value and the rule.

    ``field`` is the name the caller used (a keyword such as ``alert_type``);
    ``wire_field``, when it differs, is the field's name in the request body
    (``event_data.alertType``), which is what the service reports.
    """

    def __init__(self, field: str, value: Any, rule: str, *, wire_field: str | None = None) -> None:
        self.field = field
        self.value = value
        self.rule = rule
        self.wire_field = wire_field if wire_field != field else None
        shown_field = field if self.wire_field is None else f"{field} ({self.wire_field})"
        super().__init__(f"{shown_field}: {_show(value)} {rule}")

    def renamed(self, field: str, *, keep_name: bool = True) -> ValidationError:
        """The same error under the name the caller used; the name it had is kept as the wire name,
        unless ``keep_name`` is False (it was only another spelling of the caller's, not the wire's)."""
        wire = (self.wire_field or self.field) if keep_name else self.wire_field
        return ValidationError(field, self.value, self.rule, wire_field=wire)


def _show(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a hostile __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    if len(text) > _SHOWN_VALUE_CHARS:
        text = f"{text[:_SHOWN_VALUE_CHARS]}… ({len(text)} chars)"
    return text


class QueueFullError(FastsendError, RuntimeError):
    """The queue was full and the overflow policy is ``raise``."""


class SpoolLockedError(FastsendError, RuntimeError):
    """Another process holds the spool directory."""


class BlockingCallError(FastsendError, RuntimeError):
    """A blocking call made where it would wait for itself: on fastsend's loop thread, or inside a running
    event loop (use ``AsyncEventWriter`` there)."""
