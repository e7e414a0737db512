"""The ``fastsend`` command run as a user runs it: ``python -m fastsend`` in a child process."""

from __future__ import annotations

import os
import subprocess
import sys

from support.service_process import REPO_ROOT

CLI_TIMEOUT = 30.0


def fastsend_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = CLI_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run ``fastsend ARGS`` from the repository with ``env`` added to this process's environment."""
    return subprocess.run(
        [sys.executable, "-m", "fastsend", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
    )
