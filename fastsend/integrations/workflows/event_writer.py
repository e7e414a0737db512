"""The ``fastsend/event_writer_sink@v1`` block: the Event Writer's manifest, fastsend's sender.

The manifest repeats ``roboflow_enterprise/event_writer_sink@v1`` field for field
(names, kinds, selectors, defaults, descriptions) and adds ``cooldown_seconds``.
This module imports inference; ``fastsend.integrations.workflows.load_blocks()`` imports it.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_futures
from typing import Any, Literal

from inference.core.workflows.execution_engine.entities.base import OutputDefinition
from inference.core.workflows.execution_engine.entities.types import (
    BOOLEAN_KIND,
    CLASSIFICATION_PREDICTION_KIND,
    FLOAT_KIND,
    IMAGE_KIND,
    INSTANCE_SEGMENTATION_PREDICTION_KIND,
    INTEGER_KIND,
    KEYPOINT_DETECTION_PREDICTION_KIND,
    OBJECT_DETECTION_PREDICTION_KIND,
    STRING_KIND,
    Selector,
)
from inference.core.workflows.prototypes.block import WorkflowBlock, WorkflowBlockManifest
from pydantic import ConfigDict, Field, NonNegativeFloat, NonNegativeInt

from fastsend.config import DEFAULT_REQUEST_TIMEOUT, DEFAULT_URL
from fastsend.events import ValidationError
from fastsend.integrations.block import EventWriterSink
from fastsend.integrations.workflows import BLOCK_TYPE
from fastsend.results import Cause, QueueFullError, Result
from fastsend.send.writer import EventWriter

__all__ = ["BlockManifest", "FastsendEventWriterSinkBlockV1", "flush_shared_writers"]

logger = logging.getLogger("fastsend")

# How long the engine's close() of a block waits for the events that block queued.
CLOSE_FLUSH_SECONDS = 30.0

LONG_DESCRIPTION = """
The **Event Writer (fastsend)** block sends structured events to the Event Ingestion
Service (v2 API). It takes every field of the Event Writer block
(`roboflow_enterprise/event_writer_sink@v1`): changing the `type` string of a step is
the whole migration.

Fire-and-forget events go through fastsend's sender, shared by every step and run that
uses the same URL and settings: a bounded queue, JPEG encoders off the workflow's
threads, a connection pool, retries with backoff, and an optional disk spool
(`FASTSEND_SPOOL_DIR`). Synchronous mode waits for the service and returns the
`event_id`.

`cooldown_seconds` (default 0: off) drops events that arrive within that many seconds
of the last one sent by the step; `throttling_status` is then True.

If the Event Ingestion Service requires an API key, set `EVENT_INGESTION_API_KEY`.
Other sender settings come from `FASTSEND_*` environment variables.
"""

QUALITY_CHECK_RELEVANT: dict[str, Any] = {"event_schema": {"values": ["quality_check"], "required": True}}
INVENTORY_COUNT_RELEVANT: dict[str, Any] = {"event_schema": {"values": ["inventory_count"], "required": True}}
SAFETY_ALERT_RELEVANT: dict[str, Any] = {"event_schema": {"values": ["safety_alert"], "required": True}}
CUSTOM_RELEVANT: dict[str, Any] = {"event_schema": {"values": ["custom"], "required": True}}
ALL_DATA_SCHEMAS_RELEVANT: dict[str, Any] = {
    "event_schema": {"values": ["quality_check", "inventory_count", "safety_alert", "custom"]},
}


class BlockManifest(WorkflowBlockManifest):  # type: ignore[misc]
    """The Event Writer's fields, ``cooldown_seconds`` and the ``throttling_status`` output."""

    model_config = ConfigDict(
        json_schema_extra={
            "name": "Event Writer (fastsend)",
            "version": "v1",
            "short_description": "Write structured events to the Event Ingestion Service, fast and durably.",
            "long_description": LONG_DESCRIPTION,
            "license": "Apache-2.0",
            "block_type": "sink",
            "ui_manifest": {"section": "industrial", "icon": "fal fa-calendar-check", "blockPriority": 5},
        }
    )
    type: Literal["fastsend/event_writer_sink@v1"]

    # The fields below repeat the Event Writer's, declaration for declaration.
    event_ingestion_url: Selector(kind=[STRING_KIND]) | str = Field(  # type: ignore[valid-type]
        default=DEFAULT_URL,
        description="Base URL of the Event Ingestion Service.",
        examples=[DEFAULT_URL, "$inputs.event_ingestion_url"],
    )
    event_schema: Literal["quality_check", "inventory_count", "safety_alert", "custom"] = Field(
        description="The event schema to use.",
        json_schema_extra={"always_visible": True},
    )
    output_image: Selector(kind=[IMAGE_KIND]) = Field(  # type: ignore[valid-type]
        description="The output/visualization image. Sent as the primary display image.",
        json_schema_extra={"always_visible": True},
    )
    input_image: Selector(kind=[IMAGE_KIND]) | None = Field(  # type: ignore[valid-type]
        default=None,
        description="The original input image (optional). Sent as the source image.",
    )
    image_label: Selector(kind=[STRING_KIND]) | str | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Label for the image entry.",
        examples=["defect-analysis", "$inputs.image_label"],
    )
    custom_metadata: dict[str, Selector() | str | float | bool | int] = Field(  # type: ignore[valid-type]
        default_factory=dict,
        description="Flat key-value metadata (max 100 keys, values must be str/int/float/bool).",
        examples=[{"line": "A1", "shift": "morning"}],
        json_schema_extra={"always_visible": True},
    )
    qc_result: Selector(kind=[STRING_KIND]) | Literal["pass", "fail"] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Quality check result: pass or fail.",
        examples=["pass", "fail", "$steps.qc_logic.result"],
        json_schema_extra={"relevant_for": QUALITY_CHECK_RELEVANT, "always_visible": True},
    )
    external_id: Selector(kind=[STRING_KIND]) | str | None = Field(  # type: ignore[valid-type]
        default=None,
        description="External identifier for correlation with other systems (max 1000 chars).",
        examples=["batch-2025-001", "$inputs.external_id"],
        json_schema_extra={"relevant_for": ALL_DATA_SCHEMAS_RELEVANT},
    )
    location: Selector(kind=[STRING_KIND]) | str | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Location identifier for inventory count.",
        examples=["warehouse-A", "$inputs.location"],
        json_schema_extra={"relevant_for": INVENTORY_COUNT_RELEVANT},
    )
    item_count: Selector(kind=[INTEGER_KIND]) | int | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Number of items counted.",
        examples=[42, "$steps.counter.count"],
        json_schema_extra={"relevant_for": INVENTORY_COUNT_RELEVANT},
    )
    item_type: Selector(kind=[STRING_KIND]) | str | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Type of item being counted.",
        examples=["widget", "$inputs.item_type"],
        json_schema_extra={"relevant_for": INVENTORY_COUNT_RELEVANT},
    )
    alert_type: Selector(kind=[STRING_KIND]) | str | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Alert type identifier (alphanumeric, underscores, hyphens).",
        examples=["no_hardhat", "$steps.classifier.top_class"],
        json_schema_extra={"relevant_for": SAFETY_ALERT_RELEVANT},
    )
    severity: Selector(kind=[STRING_KIND]) | Literal["low", "medium", "high"] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Severity level for the safety alert.",
        examples=["high", "$inputs.severity"],
        json_schema_extra={"relevant_for": SAFETY_ALERT_RELEVANT},
    )
    alert_description: Selector(kind=[STRING_KIND]) | str | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Description of the safety alert (max 10000 chars).",
        examples=["Worker detected without hardhat in zone B"],
        json_schema_extra={"relevant_for": SAFETY_ALERT_RELEVANT},
    )
    custom_value: Selector(kind=[STRING_KIND]) | str | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Arbitrary value for custom events (max 10000 chars).",
        examples=["anomaly detected at 14:32"],
        json_schema_extra={"relevant_for": CUSTOM_RELEVANT},
    )
    object_detections: Selector(kind=[OBJECT_DETECTION_PREDICTION_KIND]) | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Object detection predictions to attach to the image.",
        json_schema_extra={"additional_section": True},
    )
    classifications: Selector(kind=[CLASSIFICATION_PREDICTION_KIND]) | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Classification predictions to attach to the image.",
        json_schema_extra={"additional_section": True},
    )
    instance_segmentations: Selector(kind=[INSTANCE_SEGMENTATION_PREDICTION_KIND]) | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Instance segmentation predictions to attach to the image.",
        json_schema_extra={"additional_section": True},
    )
    keypoint_detections: Selector(kind=[KEYPOINT_DETECTION_PREDICTION_KIND]) | None = Field(  # type: ignore[valid-type]
        default=None,
        description="Keypoint detection predictions to attach to the image.",
        json_schema_extra={"additional_section": True},
    )
    fire_and_forget: bool | Selector(kind=[BOOLEAN_KIND]) = Field(  # type: ignore[valid-type]
        default=True,
        description="If True, send the event asynchronously (no event_id returned). "
        "If False, wait for the response and return the event_id.",
        examples=[True, False, "$inputs.fire_and_forget"],
    )
    disable_sink: bool | Selector(kind=[BOOLEAN_KIND]) = Field(  # type: ignore[valid-type]
        default=False,
        description="If True, skip sending the event entirely.",
        examples=[False, "$inputs.disable_event_writer"],
    )
    request_timeout: int | Selector(kind=[INTEGER_KIND]) = Field(  # type: ignore[valid-type]
        default=5,
        description="HTTP request timeout in seconds.",
        examples=[5, 10],
    )

    # fastsend's own, off by default so the Event Writer's behaviour is kept.
    cooldown_seconds: NonNegativeInt | NonNegativeFloat | Selector(kind=[INTEGER_KIND, FLOAT_KIND]) = Field(  # type: ignore[valid-type]
        default=0,
        title="Cooldown",
        description="Minimum number of seconds between consecutive events sent by this step. Events "
        "triggered during the cooldown period are dropped and the `throttling_status` output is set "
        "to True. 0 (the default) sends every event.",
        examples=[0, 0.5, "$inputs.cooldown_seconds"],
    )

    @classmethod
    def describe_outputs(cls) -> list[Any]:
        return [
            OutputDefinition(name="error_status", kind=[BOOLEAN_KIND]),
            OutputDefinition(name="throttling_status", kind=[BOOLEAN_KIND]),
            OutputDefinition(name="event_id", kind=[STRING_KIND]),
            OutputDefinition(name="message", kind=[STRING_KIND]),
        ]

    @classmethod
    def get_execution_engine_compatibility(cls) -> str | None:
        return ">=1.3.0,<2.0.0"


class FastsendEventWriterSinkBlockV1(WorkflowBlock):  # type: ignore[misc]
    """Sends each call's event through the shared fastsend writer for its URL and settings.

    ``close()`` (the engine calls it when it is done) waits for this step's queued
    events; the writers themselves stay open for other steps and flush at exit.
    """

    def __init__(self, disable_sinks: bool = False) -> None:
        self._disable_sinks = bool(disable_sinks)
        self._last_sent: float | None = None
        self._pending: set[Future[Result]] = set()
        self._failures = 0
        self._lock = threading.Lock()

    @classmethod
    def get_init_parameters(cls) -> list[str]:
        return ["disable_sinks"]

    @classmethod
    def get_manifest(cls) -> type[BlockManifest]:
        return BlockManifest

    def run(
        self,
        *,
        event_schema: str,
        output_image: Any,
        event_ingestion_url: str = DEFAULT_URL,
        fire_and_forget: bool = True,
        disable_sink: bool = False,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        cooldown_seconds: float = 0,
        **params: Any,
    ) -> dict[str, Any]:
        if self._disable_sinks or disable_sink:
            reason = "workflow execution policy" if self._disable_sinks else "parameter `disable_sink`"
            return _outputs(Result.accepted(f"Sink was disabled by {reason}"))
        # A value from another step's output may bypass the manifest's bounds: a negative cooldown is none.
        if not self._take_cooldown_slot(max(float(cooldown_seconds or 0), 0.0)):
            return _outputs(Result.accepted("Sink cooldown applies"), throttled=True)
        try:
            result, future = _SHARED.dispatch(
                event_schema=event_schema,
                output_image=output_image,
                event_ingestion_url=event_ingestion_url,
                fire_and_forget=bool(fire_and_forget),
                request_timeout=request_timeout,
                **params,
            )
        except (ValidationError, TypeError, QueueFullError) as exc:
            self._log_failure("event not sent", exc)
            cause = Cause.QUEUE_FULL_RAISE if isinstance(exc, QueueFullError) else Cause.INVALID_EVENT
            return _outputs(Result.failed(cause, f"Event not sent: {exc}"))
        if future is None:
            return _outputs(result)
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._settled)
        return _outputs(result)

    def _take_cooldown_slot(self, cooldown: float) -> bool:
        """Whether this call may send; if so, the cooldown restarts now (steps may run concurrently)."""
        now = time.monotonic()
        with self._lock:
            if cooldown and self._last_sent is not None and now - self._last_sent < cooldown:
                return False
            self._last_sent = now
            return True

    def _settled(self, future: Future[Result]) -> None:
        with self._lock:
            self._pending.discard(future)
        if future.cancelled() or future.exception() is not None:
            self._log_failure("background event lost", "cancelled" if future.cancelled() else future.exception())
        elif future.result().error_status:
            self._log_failure("background event failed", future.result().message)

    def _log_failure(self, what: str, detail: object) -> None:
        with self._lock:
            self._failures += 1
            count = self._failures
        # A failure that repeats on every frame is logged at 1, 10, 100, … occurrences.
        if count == 10 ** (len(str(count)) - 1):
            logger.warning("%s: %s (%d failure(s) so far): %s", BLOCK_TYPE, what, count, detail)

    def close(self, timeout: float = CLOSE_FLUSH_SECONDS) -> int:
        """Wait up to ``timeout`` seconds for this step's queued events; how many are still pending."""
        with self._lock:
            pending = list(self._pending)
        _, not_done = wait_for_futures(pending, timeout=timeout)
        if not_done:
            logger.warning(
                "%s: %d event(s) still queued at close; the writer keeps sending them", BLOCK_TYPE, len(not_done)
            )
        return len(not_done)


def _outputs(result: Result, *, throttled: bool = False) -> dict[str, Any]:
    return {**result.as_dict(), "throttling_status": throttled}


# ---------------------------------------------------------------- shared writers

# One writer per URL for the whole process, shared by every step and run (queue, encoders, pool, spool).
_SHARED = EventWriterSink()


def shared_writer(base_url: str | None, api_key: str | None) -> EventWriter:
    """The process's writer for this URL (a new key replaces it); other settings from ``FASTSEND_*``."""
    return _SHARED.writer_for(base_url, api_key)


def flush_shared_writers(timeout: float | None = None) -> int:
    """Wait for every shared writer's queued events; how many are still pending."""
    return _SHARED.flush(timeout)
