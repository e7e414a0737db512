"""Checks of a writer's books shared by the ledger and transport tests."""

from __future__ import annotations

import threading
from typing import Any

from fastsend import EventWriter

__all__ = ["adds_up", "close_within"]


def adds_up(stats: dict[str, Any]) -> bool:
    """Whether one ``stats()`` snapshot balances: every submitted event settled one way, or pending."""
    settled = stats["sent"] + stats["failed"] + stats["dropped"] + stats["spooled"] + stats["cancelled"]
    return bool(stats["submitted"] == settled + stats["pending"])


def close_within(writer: EventWriter, seconds: float, timeout: float | None = None) -> int:
    """``writer.close(timeout)`` on another thread; fails the test if it has not returned in ``seconds``."""
    returned: list[int] = []
    closer = threading.Thread(target=lambda: returned.append(writer.close(timeout)), daemon=True)
    closer.start()
    closer.join(seconds)
    assert not closer.is_alive(), f"close({timeout}) did not return within {seconds}s"
    return returned[0]
