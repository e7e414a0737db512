"""``Job``: one event on its way through the sender, from the queue to its settlement."""

from __future__ import annotations

from dataclasses import dataclass

from fastsend.send.ledger import Ticket
from fastsend.send.prepare import PreparedEvent
from fastsend.send.wire import Request

__all__ = ["Job"]


@dataclass(slots=True, eq=False)
class Job:
    """What the caller prepared, then the finished request; where it stands, and until when it may go."""

    ticket: Ticket
    prepared: PreparedEvent | None
    deadline: float  # monotonic time after which it is given up
    budget: float  # the seconds that deadline allowed, for messages
    nbytes: int
    request: Request | None = None
    holds_slot: bool = False
    queued: bool = False

    @classmethod
    def of(cls, ticket: Ticket, prepared: PreparedEvent, deadline: float, budget: float) -> Job:
        return cls(ticket, prepared, deadline, budget, prepared.frame_bytes)

    def release_frames(self) -> None:
        """Give the event's snapshot buffers back to the frame pool; nothing reads them after this."""
        prepared, self.prepared = self.prepared, None
        if prepared is not None:
            prepared.release_frames()
