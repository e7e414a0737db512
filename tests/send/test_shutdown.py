"""The process side of the lifecycle, alone: the registry, SIGTERM's handler and its sections, and the exit
flush, with fake writers. (Real signals and real child processes: test_lifecycle.py.)"""

from __future__ import annotations

import gc
import signal
import threading
from collections.abc import Iterator

import pytest

from fastsend.send import shutdown


class FakeWriter:
    """A Closable that records its closes; ``interrupt`` raises KeyboardInterrupt from the first one."""

    def __init__(self, interrupt: bool = False) -> None:
        self.closes: list[float | None] = []
        self.interrupt = interrupt

    def close(self, timeout: float | None = None) -> int:
        self.closes.append(timeout)
        if self.interrupt and len(self.closes) == 1:
            raise KeyboardInterrupt
        shutdown.unregister(self)
        return 0

    @property
    def exit_flush_timeout(self) -> float:
        return 0.25

    def reset_in_child(self) -> None:
        pass


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A registry and flags of the test's own; SIGTERM's disposition as it was, after."""
    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(shutdown, "_state", shutdown._State())
    yield
    signal.signal(signal.SIGTERM, before)


def test_an_open_writer_is_kept_until_it_closes_even_with_no_other_reference():
    shutdown.register(FakeWriter(), spooled=False, handle_sigterm=True)
    gc.collect()
    (kept,) = shutdown.open_writers()
    kept.close()
    assert shutdown.open_writers() == []


def test_a_spooled_writer_takes_sigterm_and_the_last_one_to_close_gives_it_back():
    first, second = FakeWriter(), FakeWriter()
    shutdown.register(first, spooled=True, handle_sigterm=True)
    shutdown.register(second, spooled=True, handle_sigterm=True)
    assert shutdown.handles_sigterm()
    first.close()
    assert shutdown.handles_sigterm()
    second.close()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL and not shutdown.handles_sigterm()


def test_without_a_spool_or_with_handle_sigterm_off_sigterm_is_left_alone():
    shutdown.register(FakeWriter(), spooled=False, handle_sigterm=True)
    shutdown.register(FakeWriter(), spooled=True, handle_sigterm=False)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_an_applications_own_handler_is_left_alone():
    def own(signum, frame):  # type: ignore[no-untyped-def]
        pass

    signal.signal(signal.SIGTERM, own)
    writer = FakeWriter()
    shutdown.register(writer, spooled=True, handle_sigterm=True)
    writer.close()
    assert signal.getsignal(signal.SIGTERM) is own


def test_released_from_another_thread_the_handler_no_longer_claims_sigterm():
    writer = FakeWriter()
    shutdown.register(writer, spooled=True, handle_sigterm=True)
    closer = threading.Thread(target=writer.close)
    closer.start()
    closer.join(5)
    assert signal.getsignal(signal.SIGTERM) is shutdown._on_sigterm  # Python allows no change off the main thread
    assert not shutdown.handles_sigterm()  # it acts as the default disposition would (test_lifecycle proves it)


def test_the_first_sigterm_exits_like_sys_exit():
    shutdown.register(FakeWriter(), spooled=True, handle_sigterm=True)
    with pytest.raises(SystemExit) as exited:
        shutdown._on_sigterm(signal.SIGTERM, None)
    assert exited.value.code == shutdown.SIGTERM_EXIT_CODE


def test_a_sigterm_while_events_move_to_the_spool_exits_once_they_have():
    shutdown.register(FakeWriter(), spooled=True, handle_sigterm=True)
    moved = []
    with pytest.raises(SystemExit):
        with shutdown.deferring_sigterm():
            shutdown._on_sigterm(signal.SIGTERM, None)  # does not raise here
            moved.append("done")
    assert moved == ["done"]


def test_a_sigterm_during_a_close_cuts_the_flush_short_then_exits():
    shutdown.register(FakeWriter(), spooled=True, handle_sigterm=True)
    with pytest.raises(SystemExit):
        with shutdown.closing():
            shutdown._on_sigterm(signal.SIGTERM, None)
            assert shutdown.cut_short()  # the flush stops waiting; the close goes on to the spool


def test_the_exit_flush_closes_every_open_writer_with_its_exit_flush_timeout():
    writers = [FakeWriter(), FakeWriter()]
    for writer in writers:
        shutdown.register(writer, spooled=True, handle_sigterm=True)
    shutdown._flush_at_exit()
    assert [w.closes for w in writers] == [[0.25], [0.25]] and shutdown.open_writers() == []


def test_a_second_sigterm_during_the_exit_flush_cuts_it_short_without_raising():
    shutdown.register(FakeWriter(), spooled=True, handle_sigterm=True)
    shutdown._state.exiting = True
    shutdown._on_sigterm(signal.SIGTERM, None)  # no SystemExit inside the exit flush
    assert shutdown.cut_short()


def test_ctrl_c_during_the_exit_flush_resumes_that_close_cut_short():
    interrupted = FakeWriter(interrupt=True)
    shutdown.register(interrupted, spooled=False, handle_sigterm=False)
    shutdown._flush_at_exit()
    assert interrupted.closes == [0.25, 0.25] and shutdown.cut_short() and shutdown.open_writers() == []
