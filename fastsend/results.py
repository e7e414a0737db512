"""What happened to an event: the caller's ``Result``, one attempt's ``Outcome``, and the ``Cause`` enum."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from fastsend.errors import QueueFullError

__all__ = ["OUTCOME_LOG", "Cause", "Outcome", "QueueFullError", "Result", "Settlement"]

#: ``extra=`` of a log record that repeats what events' Results say (why they were not delivered): a
#: program that reports every Result itself, as the command line does, can leave those records out.
OUTCOME_LOG = {"fastsend_outcome": True}


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
    INVALID_EVENT = "invalid_event"
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
    """An event's fate, in the Event Writer block's shape, with its ``cause`` when it was not delivered.

    Build one with the named constructors. ``spooled`` is True when the event was not delivered yet but
    is safe in the spool and will be sent later: do not send it again yourself.
    """

    error_status: bool
    event_id: str
    message: str
    cause: Cause | None = None

    @classmethod
    def delivered(cls, event_id: str, message: str) -> Result:
        """The service stored the event under ``event_id``."""
        return cls(False, event_id, message)

    @classmethod
    def failed(cls, cause: Cause, message: str) -> Result:
        """Not delivered, for ``cause``; ``message`` says why in words."""
        return cls(True, "", message, cause)

    @classmethod
    def of(cls, outcome: Outcome) -> Result:
        """The Result an attempt's ``Outcome`` settles its event with."""
        if outcome.cause is None:
            return cls.delivered(outcome.event_id, outcome.message)
        return cls.failed(outcome.cause, outcome.message)

    @classmethod
    def in_spool(cls, message: str) -> Result:
        """Not delivered yet, safe in the spool: it will be sent later."""
        return cls(True, "", message, Cause.SPOOLED)

    @classmethod
    def accepted(cls, message: str) -> Result:
        """No error and no ``event_id``: queued in the background, or not sent by the caller's choice."""
        return cls(False, "", message)

    @property
    def spooled(self) -> bool:
        return self.cause is Cause.SPOOLED

    def as_dict(self) -> dict[str, Any]:
        """The block's three outputs: ``error_status``, ``event_id``, ``message``."""
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
