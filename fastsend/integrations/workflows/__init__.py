"""Workflows plugin: ``WORKFLOWS_PLUGINS=fastsend.workflows`` adds ``fastsend/event_writer_sink@v1``.

The block takes every field of ``roboflow_enterprise/event_writer_sink@v1``, so
replacing the ``type`` string is the whole migration; it sends through fastsend's
writer (shared queue, encoders, connection pool and spool per URL and settings).

Importing this module does not import inference; ``load_blocks()`` does.
Needs ``pip install "fastsend[inference]"``.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["BLOCKS_SOURCE", "BLOCK_TYPE", "flush", "load_blocks"]

BLOCK_TYPE = "fastsend/event_writer_sink@v1"

# The engine hands a plugin the server's per-request init parameters
# (`workflows_core.disable_sinks` above all) only under this source. The plugin
# registers no initializers, so it cannot overwrite a core one.
BLOCKS_SOURCE = "workflows_core"

# What the block's module imports from the inference extra.
_INFERENCE_MODULES = ("inference", "pydantic")
_INFERENCE_MISSING = 'the fastsend.workflows plugin needs inference: pip install "fastsend[inference]"'


def load_blocks() -> list[type[Any]]:
    """The plugin's blocks; called by inference's blocks loader, possibly many times.

    The loader runs in the main thread, unlike the block's steps: with a spool
    (``FASTSEND_SPOOL_DIR``), this is where SIGTERM is made to exit gracefully.
    """
    from fastsend.config import Settings
    from fastsend.send import shutdown

    try:
        from fastsend.integrations.workflows.event_writer import FastsendEventWriterSinkBlockV1
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] not in _INFERENCE_MODULES:
            raise
        raise ModuleNotFoundError(f"{_INFERENCE_MISSING} ({exc})", name=exc.name) from exc

    if Settings.one("spool_dir") and Settings.one("handle_sigterm"):
        shutdown.take_sigterm()
    return [FastsendEventWriterSinkBlockV1]


def flush(timeout: float | None = None) -> int:
    """Wait for the events the plugin's blocks queued; how many are still pending.

    The engine's ``close()`` does this per step on inference 1.8; call it yourself
    where the engine has no ``close()`` (1.7 and older) and waiting for the
    interpreter's exit is too late.
    """
    block_module = sys.modules.get(f"{__name__}.event_writer")
    if block_module is None:  # no block was ever loaded: nothing can be queued
        return 0
    pending: int = block_module.flush_shared_writers(timeout)
    return pending
