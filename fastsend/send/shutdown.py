"""How the end of the process, SIGTERM and fork reach the writers: the process side of a writer's lifecycle.

Every writer (its ``Dispatcher``) is registered here from the moment it is built until its
``close()`` has finished, and the registry holds it strongly: a writer with pending work
is never lost with its last reference. What ends a writer's life all goes through its one
``close()``:

- ``close()`` or leaving a ``with`` block;
- the application dropping its last reference (``EventWriter`` closes it in the background);
- interpreter exit (the main thread returning, ``sys.exit``, an uncaught exception, Ctrl-C):
  every writer still open is closed, each for up to its ``exit_flush_timeout``; pending events
  are sent, or spooled when the writer has a spool;
- eviction from the block's pool (``fastsend.integrations.writer_pool``).

SIGTERM, how docker, Kubernetes and systemd stop a process, kills a Python process on the
spot by default. So while a writer with a spool is open, and only if SIGTERM still has its
default disposition, fastsend handles it:

- **the first SIGTERM** raises ``SystemExit(143)`` in the main thread: the process ends the
  way ``sys.exit`` ends it, and the exit flush puts pending events in the spool. If the main
  thread is moving an event between the queue and the spool just then, the exit waits for
  that to finish (microseconds), so no event is caught half-way;
- **a SIGTERM during a flush that closes writers** (``close()`` on the main thread, or the
  exit flush after a first SIGTERM) cuts the flush short: nothing more is waited for, every
  event still pending goes to the spool at once (or is reported closed, without a spool),
  and the process exits with 143 once that is done.

A handler the application installed is left alone; ``handle_sigterm=False``
(``FASTSEND_HANDLE_SIGTERM=0``) turns this off. The default disposition comes back when the
last spooled writer closes; closed from another thread than the main one (where Python
allows no change of a handler), fastsend's handler stays in place but acts as the default
disposition would. A forked child gets the default disposition back at once, its writers
rebuilt without the spool, which stays with the parent.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing.util
import os
import signal
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Protocol

__all__ = [
    "SIGTERM_EXIT_CODE",
    "Closable",
    "closing",
    "cut_short",
    "deferring_sigterm",
    "handles_sigterm",
    "open_writers",
    "register",
    "take_sigterm",
    "unregister",
]

logger = logging.getLogger("fastsend")

SIGTERM_EXIT_CODE = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class Closable(Protocol):
    """What the process's end needs of a writer: to close it, for how long, and to rebuild it in a child."""

    def close(self, timeout: float | None = None) -> int: ...

    @property
    def exit_flush_timeout(self) -> float: ...

    def reset_in_child(self) -> None: ...


class _State:
    """The process's side of the lifecycle; the SIGTERM handler reads it without a lock (it may interrupt
    a thread holding one), so what it reads is plain flags that only the main thread changes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: dict[Closable, None] = {}  # strong: insertion-ordered, closed in that order at exit
        self.holding_sigterm: set[Closable] = set()
        self.cut_short = threading.Event()  # a SIGTERM came during a closing flush: wait no more
        self.exit_requested = False  # a SIGTERM to honour once the main thread leaves fastsend
        self.closing_depth = 0  # the main thread is inside a close (or the exit flush)
        self.deferring_depth = 0  # the main thread is moving events between rooms
        self.exiting = False


_state = _State()


def register(writer: Closable, *, spooled: bool, handle_sigterm: bool) -> None:
    """An open writer, kept until it has closed; with a spool, it keeps SIGTERM's exit graceful."""
    multiprocessing.util.register_after_fork(writer, _flush_at_child_exit)
    with _state.lock:
        _state.open[writer] = None
        if spooled and handle_sigterm and take_sigterm():
            _state.holding_sigterm.add(writer)


def unregister(writer: Closable) -> None:
    """The writer has closed: no exit flush for it; the last spooled one gives SIGTERM back its default."""
    with _state.lock:
        _state.open.pop(writer, None)
        if writer in _state.holding_sigterm:
            _state.holding_sigterm.discard(writer)
            if not _state.holding_sigterm and not _state.exiting:
                _release_sigterm()


def open_writers() -> list[Closable]:
    """Every writer of this process not closed yet, oldest first."""
    with _state.lock:
        return list(_state.open)


def take_sigterm() -> bool:
    """Make SIGTERM exit like ``SystemExit`` if it still has its default disposition; whether it now does."""
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
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
    signal.signal(signal.SIGTERM, _on_sigterm)
    return True


def handles_sigterm() -> bool:
    """Whether SIGTERM currently exits through fastsend's graceful handler (a spooled writer is open)."""
    return signal.getsignal(signal.SIGTERM) is _on_sigterm and bool(_state.holding_sigterm)


def cut_short() -> bool:
    """Whether a SIGTERM asked the flushes under way to stop waiting and spool what is pending."""
    return _state.cut_short.is_set()


@contextmanager
def closing() -> Iterator[None]:
    """Around a writer's close: a SIGTERM meanwhile cuts its flush short rather than interrupting it."""
    with _main_thread_section("closing_depth"):
        yield


@contextmanager
def deferring_sigterm() -> Iterator[None]:
    """Around a move of events between rooms: a SIGTERM meanwhile takes effect when it is done."""
    with _main_thread_section("deferring_depth"):
        yield


@contextmanager
def _main_thread_section(depth: str) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    setattr(_state, depth, getattr(_state, depth) + 1)
    try:
        yield
    finally:
        setattr(_state, depth, getattr(_state, depth) - 1)
    _exit_if_requested()


def _exit_if_requested() -> None:
    """On the main thread, outside any section: honour a SIGTERM that came while it was inside one."""
    if _state.exit_requested and not (_state.closing_depth or _state.deferring_depth or _state.exiting):
        _state.exit_requested = False
        raise SystemExit(SIGTERM_EXIT_CODE)


def _release_sigterm() -> None:
    if signal.getsignal(signal.SIGTERM) is _on_sigterm and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Elsewhere Python cannot change a handler: with no writer holding it, _on_sigterm acts as the default.


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    state = _state
    if state.exiting or state.closing_depth:
        if not state.cut_short.is_set():
            logger.warning("SIGTERM during the flush: cut short; every event still pending goes to the spool")
        state.cut_short.set()
        state.exit_requested = not state.exiting
        return
    if not state.holding_sigterm:  # released from another thread: do what the default disposition does
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)
        return
    if state.deferring_depth:
        state.exit_requested = True
        return
    logger.warning("SIGTERM: exiting; pending events are flushed, and what cannot be sent goes to the spool")
    raise SystemExit(SIGTERM_EXIT_CODE)


@atexit.register
def _flush_at_exit() -> None:
    """Close every writer still open, each bounded by its ``exit_flush_timeout``; a Ctrl-C cuts it short."""
    _state.exiting = True
    for writer in open_writers():
        _close_at_exit(writer)


def _close_at_exit(writer: Closable) -> None:
    for _ in range(3):  # a close interrupted by Ctrl-C resumes where it stopped, cut short
        try:
            writer.close(writer.exit_flush_timeout)
            return
        except KeyboardInterrupt:
            _state.cut_short.set()
        except Exception:
            logger.exception("could not close a writer at exit")
            return


def close_forgotten(writer: Closable, url: str) -> Callable[[], None]:
    """What runs when the application drops its last reference to an open writer: it is closed in the
    background (the exit flush waits for that close, if it comes first)."""
    reference = weakref.ref(writer)

    def forgotten() -> None:
        dispatcher = reference()
        if dispatcher is None or dispatcher not in open_writers():
            return
        logger.warning("a writer for %s was dropped without close(): closing it (flushing what it holds)", url)
        closer = threading.Thread(
            target=dispatcher.close, args=(dispatcher.exit_flush_timeout,), name="fastsend-close-forgotten"
        )
        closer.daemon = True  # the exit flush closes it too, waiting for this close
        closer.start()

    return forgotten


def _after_fork_in_child() -> None:
    """A forked child: fresh locks and flags, SIGTERM back to its default, each writer rebuilt for the child."""
    global _state
    inherited = list(_state.open)
    _state = _State()
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for writer in inherited:
        writer.reset_in_child()
        _state.open[writer] = None


def _flush_at_child_exit(writer: Closable) -> None:
    # A multiprocessing child ends with os._exit, which skips atexit: flush on its own exit hook
    # (registered after multiprocessing has cleared the parent's, hence not in _after_fork_in_child).
    multiprocessing.util.Finalize(writer, writer.close, args=(writer.exit_flush_timeout,), exitpriority=10)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
