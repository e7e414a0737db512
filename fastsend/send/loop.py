"""The sender's event loop (uvloop when available), on a daemon thread of its own."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["LoopThread", "loop_factory", "new_event_loop", "off_loop"]

T = TypeVar("T")


class LoopThread:
    """One event loop running on its own daemon thread.

    ``start`` returns at once: the thread creates the loop and runs ``on_start`` on it
    while the caller goes on. What needs the loop running waits with ``wait_ready``.
    """

    def __init__(self, kind: str) -> None:
        self._kind = kind
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.failure: BaseException | None = None

    def start(
        self,
        on_start: Callable[[], Coroutine[Any, Any, None]],
        on_failure: Callable[[BaseException], None] = lambda exc: None,
    ) -> None:
        """Start the thread; ``on_start()`` runs on the loop before anything else, ``on_failure`` if it cannot."""
        # The loop's module is imported here, not on the new thread: a process forked while that thread was
        # importing it would inherit the module's import lock held for ever, and hang at its first loop.
        with contextlib.suppress(ImportError):  # the thread reports it
            loop_factory(self._kind)

        def run() -> None:
            try:
                loop = new_event_loop(self._kind)
                asyncio.set_event_loop(loop)
                loop.set_default_executor(_ExitSafeExecutor(thread_name_prefix="fastsend-io"))
                self.loop = loop
                loop.run_until_complete(on_start())
            except BaseException as exc:  # noqa: BLE001 - handed to on_failure; wait_ready reports it
                self.loop = None
                self.failure = exc
                self._ready.set()
                on_failure(exc)
                return
            self._ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name="fastsend-loop", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait until the loop runs; False if it did not start (``failure`` says why) or not within ``timeout``."""
        if self._thread is None:
            return False
        self._ready.wait(timeout)
        return self.loop is not None

    def is_current(self) -> bool:
        """Whether the caller runs on this loop's thread."""
        return self._thread is threading.current_thread()

    @property
    def running(self) -> bool:
        return self.loop is not None and self._thread is not None and self._thread.is_alive()

    def call_soon(self, callback: Callable[[], object]) -> bool:
        """Run ``callback`` on the loop; False if the loop is not running."""
        if self.loop is None:
            return False
        try:
            self.loop.call_soon_threadsafe(callback)
        except RuntimeError:  # closed
            return False
        return True

    def run(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def stop(self, timeout: float = 5.0) -> None:
        if self.loop is not None and self.running:
            self.loop.call_soon_threadsafe(self.loop.stop)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)


class _ExitSafeExecutor(ThreadPoolExecutor):
    """The loop's executor (spool writes); at interpreter exit, when every thread pool refuses new
    work, it runs the call inline so that the exit flush can still send and spool."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        try:
            return super().submit(fn, *args, **kwargs)
        except RuntimeError:
            done: Future[T] = Future()
            try:
                done.set_result(fn(*args, **kwargs))
            except BaseException as exc:  # noqa: BLE001 - carried by the future, as an executor would
                done.set_exception(exc)
            return done


def new_event_loop(kind: str) -> asyncio.AbstractEventLoop:
    """A new loop of ``kind``: ``auto`` (uvloop when installed), ``uvloop`` or ``asyncio``."""
    return loop_factory(kind)()


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new loop of ``kind`` (its module imported now): uvloop's when installed, or asyncio's."""
    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise
        else:
            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory
    return asyncio.new_event_loop


async def off_loop(function: Callable[..., T], *args: Any) -> T:
    """Run blocking work (a spool write, read or rename) on the running loop's executor, and wait for it."""
    return await asyncio.get_running_loop().run_in_executor(None, function, *args)
