"""Helpers for tests that run the reference service or a sender in another process.

- ``start_service(data_dir)``: ``python -m fastsend.server --port 0`` (or a given
  port) as a subprocess, returned once it prints its URL, so a test can SIGKILL it.
- ``python_env()``: the environment a child Python needs to import this checkout.
- ``wait_until(predicate, timeout)``: poll, bounded in time and in count.
- ``peak_rss(pid)`` / ``reset_peak_rss(pid)``: a child's peak resident memory
  (``VmHWM``), and starting it afresh, for tests where memory is the point.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fastsend.server import ReferenceService

__all__ = [
    "REPO_ROOT",
    "TIMEOUT",
    "peak_rss",
    "port_of",
    "python_env",
    "reset_peak_rss",
    "start_service",
    "wait_until",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 20.0


def python_env() -> dict[str, str]:
    """``os.environ`` with this checkout first on ``PYTHONPATH``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}


def start_service(
    data_dir: Path | None, port: int = 0, *extra: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[subprocess.Popen[str], str]:
    """The reference service in a subprocess on ``port`` (0: a free one); returns it and its base URL.

    ``data_dir`` None: no ``--data-dir`` (the default, relative to ``cwd``). ``env`` adds variables.
    """
    command = [sys.executable, "-m", "fastsend.server", "--port", str(port)]
    if data_dir is not None:
        command += ["--data-dir", str(data_dir)]
    process = subprocess.Popen(
        [*command, "--log-level", "WARNING", *extra],
        stdout=subprocess.PIPE,
        text=True,
        env={**python_env(), **(env or {})},
        cwd=cwd,
    )
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], TIMEOUT)
    line = process.stdout.readline() if readable else ""
    if not line.startswith("listening on "):
        process.kill()
        process.wait(TIMEOUT)
        pytest.fail(f"service did not start: {line!r}")
    return process, line.removeprefix("listening on ").strip()


def wait_until(predicate: Callable[[], object], timeout: float, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is truthy or ``timeout`` seconds pass; returns its last verdict."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):  # bounded in count as well as in time
        if predicate():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return bool(predicate())


def port_of(service: ReferenceService) -> int:
    """The port an in-process reference service listens on."""
    return int(service.url.rsplit(":", 1)[1])


def peak_rss(pid: int) -> int:
    """A process's peak resident memory in bytes (``VmHWM``; Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> None:
    """Start ``pid``'s peak resident memory afresh from now; skips the test where the kernel does not allow it."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError as exc:
        pytest.skip(f"cannot reset the peak memory of a child process here ({exc})")
