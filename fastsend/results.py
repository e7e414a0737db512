"""What happened to an event: the caller's ``Result``, one attempt's ``Outcome``, and the ``Cause`` enum."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

__all__ = ["Cause", "Outcome", "QueueFullError", "Result", "Settlement"]


class Settlement(Enum):
    """The one counter an event moves when it settles."""

    SENT = "sent"
    FAILED = "failed"
    DROPPED = "dropped"
    SPOOLED = "spooled"
    CANCELLED = "cancelled"


class Cause(Enum):
    """Why an event was not delivered (or, for ``SPOOLED``, not yet); the value is its ``stats()`` key."""

    # Refused before it was sent.
    QUEUE_FULL_DROP_OLDEST = "queue_full_drop_oldest"
    QUEUE_FULL_DROP_NEWEST = "queue_full_drop_newest"
    QUEUE_FULL_BLOCK_TIMEOUT = "queue_full_block_timeout"
    QUEUE_FULL_RAISE = "queue_full_raise"
    CLOSED = "closed"
    CANCELLED = "cancelled"
    ENCODE_ERROR = "encode_error"
    # One attempt's failure; ``HTTP_STATUS`` is keyed by its status in ``stats()`` (``http_503``).
    HTTP_STATUS = "http"
    TIMEOUT = "timeout"
    CONNECTION = "connection"
    TLS = "tls"
    INVALID_URL = "invalid_url"
    INVALID_REQUEST = "invalid_request"
    BAD_RESPONSE = "bad_response"
    # The event's whole life.
    DEADLINE = "deadline"
    SPOOLED = "spooled"
    SPOOL_WRITE_FAILED = "spool_write_failed"
    INTERNAL_ERROR = "internal_error"

    @property
    def settlement(self) -> Settlement:
        if self is Cause.SPOOLED:
            return Settlement.SPOOLED
        if self is Cause.CANCELLED:
            return Settlement.CANCELLED
        if self in _DROPS:
            return Settlement.DROPPED
        return Settlement.FAILED


_DROPS = frozenset(
    {
        Cause.QUEUE_FULL_DROP_OLDEST,
        Cause.QUEUE_FULL_DROP_NEWEST,
        Cause.QUEUE_FULL_BLOCK_TIMEOUT,
        Cause.QUEUE_FULL_RAISE,
        Cause.CLOSED,
    }
)


@dataclass(frozen=True, slots=True)
class Result:
    """An event's fate, in the Event Writer block's shape.

    ``spooled`` is True when the event was not delivered yet but is safe in the
    spool and will be sent later: do not send it again yourself.
    """

    error_status: bool
    event_id: str
    message: str
    spooled: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"error_status": self.error_status, "event_id": self.event_id, "message": self.message}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt ended with: an ``event_id`` (delivered) or a ``cause``.

    Whether a failed attempt is worth repeating is ``RetryPolicy``'s call, not the transport's.
    """

    cause: Cause | None
    message: str
    event_id: str = ""
    status: int | None = None
    retry_after: float | None = None

    @property
    def delivered(self) -> bool:
        return self.cause is None

    @property
    def key(self) -> str:
        """The ``stats()`` key of this outcome's cause (``http_503`` for an HTTP status)."""
        if self.cause is Cause.HTTP_STATUS:
            return f"http_{self.status}"
        return self.cause.value if self.cause is not None else "sent"


class QueueFullError(RuntimeError):
    """The queue was full and the overflow policy is ``raise``."""
