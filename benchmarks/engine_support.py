"""What the engine benchmarks need from inference: its import (offline), the workflow, the pools, a video.

``import_inference()`` keeps inference off the network (offline mode, no version
check, no usage metrics) before its first import and loads both plugins, fastsend's
and inference's enterprise blocks; it skips the calling module when inference is
not installed (``pip install "fastsend[inference]"``).

The workflow has one step: the chosen block sends one event per frame, the frame as
``output_image`` and 10 detections as ``object_detections``, fire-and-forget, as
``quality_check``; ``disable_sink`` comes from an input so the same engine can also
run with the sending block disabled (what the engine costs without sending anything).
"""

from __future__ import annotations

import os
import sys
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

__all__ = [
    "ENTERPRISE",
    "FASTSEND",
    "TrackedPool",
    "import_inference",
    "sink_workflow",
    "write_video",
]

FASTSEND = "fastsend/event_writer_sink@v1"
ENTERPRISE = "roboflow_enterprise/event_writer_sink@v1"
# How inference loads its enterprise blocks (the Event Writer among them).
_ENTERPRISE_PLUGIN = "inference.enterprise.workflows.enterprise_blocks.loader"
_OFFLINE = {
    "OFFLINE_MODE": "True",
    "DISABLE_VERSION_CHECK": "True",
    "METRICS_ENABLED": "False",
    "OTEL_METRICS_ENABLED": "False",
    "OTEL_TRACING_ENABLED": "False",
    "ENABLE_PROMETHEUS": "False",
    "ENABLE_WORKFLOWS_PROFILING": "False",
    "CORE_MODEL_GAZE_ENABLED": "False",  # else a deprecation notice at import, about an HTTP route unused here
}
_REASON = 'needs the real inference package: pip install "fastsend[inference]"'


def import_inference() -> Any:
    """``inference``, imported offline with both plugins registered; skips the module without it."""
    if "inference" not in sys.modules:
        for name, value in _OFFLINE.items():
            os.environ.setdefault(name, value)
    plugins = [p for p in os.environ.get("WORKFLOWS_PLUGINS", "").split(",") if p]
    for plugin in (_ENTERPRISE_PLUGIN, "fastsend.workflows"):
        if plugin not in plugins:
            plugins.append(plugin)
    os.environ["WORKFLOWS_PLUGINS"] = ",".join(plugins)
    with warnings.catch_warnings():  # inference's own deprecation notices at import are not this project's
        warnings.simplefilter("ignore")
        return pytest.importorskip("inference", reason=_REASON)


def sink_workflow(block: str) -> dict[str, Any]:
    """A workflow whose one step is ``block``: one event per frame, 10 detections, fire-and-forget."""
    return {
        "version": "1.0",
        "inputs": [
            {"type": "WorkflowImage", "name": "image"},
            {"type": "WorkflowParameter", "name": "url"},
            {"type": "WorkflowParameter", "name": "disable", "default_value": False},
            {"type": "WorkflowBatchInput", "name": "boxes", "kind": ["object_detection_prediction"]},
        ],
        "steps": [
            {
                "type": block,
                "name": "events",
                "event_schema": "quality_check",
                "qc_result": "fail",
                "external_id": "bench",
                "output_image": "$inputs.image",
                "object_detections": "$inputs.boxes",
                "event_ingestion_url": "$inputs.url",
                "fire_and_forget": True,
                "disable_sink": "$inputs.disable",
            }
        ],
        "outputs": [{"type": "JsonField", "name": "sent", "selector": "$steps.events.*"}],
    }


class TrackedPool(ThreadPoolExecutor):
    """The pool a host gives the Event Writer block for its background posts, and a way to wait for them.

    The block submits ``_execute_event_request``, which reports a failure as
    ``(True, message, "")`` instead of raising: ``wait()`` counts those.
    """

    def __init__(self, workers: int = 4) -> None:
        super().__init__(max_workers=workers, thread_name_prefix="enterprise-sink")
        self._submitted: list[Future[Any]] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future = super().submit(fn, *args, **kwargs)
        self._submitted.append(future)
        return future

    def wait(self, timeout: float = 120.0) -> int:
        """Wait for every post submitted so far; how many failed (or did not finish in time)."""
        futures, self._submitted = self._submitted, []
        done, not_done = wait_for_futures(futures, timeout=timeout)
        failed = sum(1 for f in done if f.exception() is not None or bool(f.result()[0]))
        return failed + len(not_done)


def write_video(path: Path, frame: np.ndarray, frames: int, fps: float = 30.0) -> Path:
    """An MPEG-4 file of ``frames`` frames: ``frame`` with a moving bar and the frame number drawn on it."""
    height, width = frame.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height))
    if not writer.isOpened():
        pytest.skip("OpenCV cannot write an mp4v video here")
    try:
        for index in range(frames):
            picture = frame.copy()
            x = (index * 17) % max(width - 40, 1)
            cv2.rectangle(picture, (x, 0), (x + 40, height - 1), (40, 200, 40), -1)
            cv2.putText(picture, f"frame {index:05d}", (20, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (255, 255, 255), 3)
            writer.write(picture)
    finally:
        writer.release()
    return path
