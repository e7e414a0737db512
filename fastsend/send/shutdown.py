"""How the end of the process reaches the writers.

Interpreter exit (the main thread returning, ``sys.exit``, an uncaught exception, Ctrl-C)
closes every open writer, each for up to its ``exit_flush_timeout``: pending events are sent,
or spooled when the writer has a spool. SIGTERM — how docker, Kubernetes and systemd stop a
process — kills a Python process on the spot by default, before any of that runs. So while a
writer with a spool is open, and only if SIGTERM still has its default disposition, fastsend
makes SIGTERM raise ``SystemExit(143)`` in the main thread: the process then ends the way
``sys.exit`` ends it, and the exit flush puts pending events in the spool. A handler the
application installed is left alone; ``handle_sigterm=False`` (``FASTSEND_HANDLE_SIGTERM=0``)
turns this off. The default disposition comes back when the last such writer closes.
"""

from __future__ import annotations

import atexit
import logging
import signal
import threading
import weakref
from types import FrameType
from typing import Protocol

__all__ = ["SIGTERM_EXIT_CODE", "handles_sigterm", "open_writers", "register", "take_sigterm", "unregister"]

logger = logging.getLogger("fastsend")

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class Closable(Protocol):
    def close(self, timeout: float | None = None) -> int: ...

    @property
    def exit_flush_timeout(self) -> float: ...


_open: weakref.WeakSet[Closable] = weakref.WeakSet()
_holding_sigterm: weakref.WeakSet[Closable] = weakref.WeakSet()
_lock = threading.Lock()


def register(writer: Closable, *, spooled: bool, handle_sigterm: bool) -> None:
    """An open writer: closed at interpreter exit; with a spool, it keeps SIGTERM's exit graceful."""
    with _lock:
        _open.add(writer)
        if spooled and handle_sigterm and take_sigterm():
            _holding_sigterm.add(writer)


def unregister(writer: Closable) -> None:
    """The writer closed: no exit flush for it; the last spooled one gives SIGTERM back its default."""
    with _lock:
        _open.discard(writer)
        if writer in _holding_sigterm:
            _holding_sigterm.discard(writer)
            if not _holding_sigterm:
                _release_sigterm()


def open_writers() -> list[Closable]:
    """Every writer of this process not closed yet (and still referenced), in no particular order."""
    with _lock:
        return list(_open)


def take_sigterm() -> bool:
    """Make SIGTERM exit like ``SystemExit`` if it still has its default disposition; whether it now does."""
    if signal.getsignal(signal.SIGTERM) is _exit_on_sigterm:
        return True
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return False  # the application's own handler: it decides (and can call writer.close() there)
    if threading.current_thread() is not threading.main_thread():
        logger.warning(
            "a writer with a spool was built outside the main thread: SIGTERM keeps its default (the process "
            "ends at once, pending events are not spooled); build the writer in the main thread, or handle "
            "SIGTERM by calling sys.exit() or writer.close()"
        )
        return False
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return True


def handles_sigterm() -> bool:
    """Whether SIGTERM currently exits through fastsend's graceful handler."""
    return signal.getsignal(signal.SIGTERM) is _exit_on_sigterm


def _release_sigterm() -> None:
    if handles_sigterm() and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    logger.warning("SIGTERM: exiting; pending events are flushed, and what cannot be sent goes to the spool")
    raise SystemExit(SIGTERM_EXIT_CODE)


@atexit.register
def _flush_at_exit() -> None:
    # Bounded by each writer's exit_flush_timeout; close() logs how many were left unsent (or spooled).
    for writer in list(_open):
        writer.close(writer.exit_flush_timeout)
