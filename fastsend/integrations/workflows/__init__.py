"""Workflows plugin: ``WORKFLOWS_PLUGINS=fastsend.workflows`` adds fastsend's event sinks.

- ``fastsend/event_writer_sink@v1``: every field of ``roboflow_enterprise/event_writer_sink@v1``;
- ``fastsend/vision_events@v1``: ``roboflow_core/roboflow_vision_events@v1``'s manifest (local event
  store or Roboflow's cloud);
- ``fastsend/vision_event_bundle@v1``: ``roboflow_core/vision_event_bundle@v1``'s manifest (bundles
  on disk for air-gapped sites).

Replacing the ``type`` string is the whole migration; events are sent through fastsend's
writers (shared queue, encoders, connection pool and spool per URL and settings). The two
Vision Events blocks need ``roboflow-workflows`` (inference 1.8.3 and later); with an older
inference only the Event Writer block is loaded.

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

    blocks: list[type[Any]] = [FastsendEventWriterSinkBlockV1]
    try:
        from fastsend.integrations.workflows.vision_event_bundle import FastsendVisionEventBundleBlockV1
        from fastsend.integrations.workflows.vision_events import FastsendVisionEventsBlockV1
    except ModuleNotFoundError as exc:
        if (exc.name or "").partition(".")[0] != "roboflow_workflows":
            raise
    else:
        blocks += [FastsendVisionEventsBlockV1, FastsendVisionEventBundleBlockV1]
    if Settings.one("spool_dir") and Settings.one("handle_sigterm"):
        shutdown.take_sigterm()
    return blocks


def flush(timeout: float | None = None) -> int:
    """Wait for the events the plugin's blocks queued; how many are still pending.

    The engine's ``close()`` does this per step on inference 1.8; call it yourself
    where the engine has no ``close()`` (1.7 and older) and waiting for the
    interpreter's exit is too late.
    """
    pending = 0
    for name in ("event_writer", "vision_events", "vision_event_bundle"):
        block_module = sys.modules.get(f"{__name__}.{name}")
        if block_module is not None:  # a block never loaded has nothing queued
            pending += block_module.flush_shared_writers(timeout)
    return pending
