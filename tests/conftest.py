"""Shared fixtures: keep this small; module-specific helpers live in their test file."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.browser import browser_missing, start_chromium
from support.scripted_server import ScriptedServer

from fastsend import EventWriter
from fastsend.config import SETTING_ENV_VARS
from fastsend.server import ReferenceService

FrameBuilder = Callable[..., np.ndarray]


def build_frame(height: int = 48, width: int = 64, channels: int | None = 3, seed: int = 0) -> np.ndarray:
    """A deterministic uint8 frame (gradients plus seeded noise); ``channels=None`` gives H×W gray."""
    rows = np.linspace(0, 255, height, dtype=np.float64)[:, None]
    cols = np.linspace(0, 255, width, dtype=np.float64)[None, :]
    noise = np.random.default_rng(seed).integers(0, 32, size=(height, width, channels or 1))
    planes = [(rows * (c + 1) / (channels or 1) + cols * (1 - c / 4)) % 224 for c in range(channels or 1)]
    frame = (np.stack(planes, axis=-1) + noise).astype(np.uint8)
    return frame[:, :, 0] if channels is None else frame


@pytest.fixture
def make_frame() -> FrameBuilder:
    """``make_frame(height=48, width=64, channels=3, seed=0)``: a BGR (or gray, or BGRA) test frame."""
    return build_frame


@pytest.fixture
def frame() -> np.ndarray:
    """A small 48×64 BGR frame."""
    return build_frame()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No FASTSEND_* or EVENT_INGESTION_API_KEY from the shell leaks into a test."""
    for variable in SETTING_ENV_VARS.values():
        monkeypatch.delenv(variable, raising=False)


@pytest.fixture
def server():
    """A scripted loopback server (``tests/support/scripted_server.py``), stopped after the test."""
    with ScriptedServer() as running:
        yield running


@pytest.fixture
def writer_defaults() -> dict[str, Any]:
    """Settings every ``make_writer`` writer starts from; a test module overrides this fixture with its own."""
    return {}


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    """Where a test's spool lives (not created: the spool makes it)."""
    return tmp_path / "spool"


@pytest.fixture
def make_writer(writer_defaults: dict[str, Any]) -> Iterator[Callable[..., EventWriter]]:
    """``make_writer(url, **settings)``: an ``EventWriter`` on ``writer_defaults`` plus ``settings``; closed after
    the test. A setting given as ``None`` is unset (``spool_dir=None``: no spool)."""
    made: list[EventWriter] = []

    def make(url: str | None = None, **settings: Any) -> EventWriter:
        writer = EventWriter(url, **{**writer_defaults, **settings})
        made.append(writer)
        return writer

    yield make
    for writer in made:
        writer.close(timeout=1)


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Subprocesses a test started; killed at teardown if still running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(20)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for a test module (``tests/support/browser.py``); skips, with why, when it cannot run."""
    missing = browser_missing()
    if missing is not None:
        pytest.skip(missing)
    driver = start_chromium()
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def make_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ReferenceService]]:
    """``make_service(**options)``: a started in-process reference service, each stopped after the test."""
    started: list[ReferenceService] = []

    def make(**options: Any) -> ReferenceService:
        running = ReferenceService(tmp_path_factory.mktemp("service"), **options).start()
        started.append(running)
        return running

    yield make
    for running in started:
        running.stop()
