"""The ``fastsend/vision_events@v1`` block: Roboflow's Vision Events block, sent by fastsend.

The manifest *is* ``roboflow_core/roboflow_vision_events@v1``'s, taken from the installed
``roboflow-workflows`` package with only the ``type`` string (and the block's display name) changed:
fields, kinds, defaults, outputs and restrictions cannot drift from it. Changing the ``type`` of a
step is the whole migration.

Both destinations go through fastsend's writers (a bounded queue, JPEG on encoder threads, retries
with backoff, idempotency, an optional spool, a deadline per event):

- local event store (``write_to_event_store``): ``POST {event_store_url}/v2/events``, the body
  Roboflow's block sends, through the same writer pool kind as the Event Writer block
  (``X-API-Key`` from ``EVENT_INGESTION_API_KEY``);
- cloud: a ``fastsend.send.cloud.CloudEventWriter`` per API base URL and key: the same
  uploads and event JSON as Roboflow's block, retried as one unit (see that module).

The API base URL is read where inference reads it (``API_BASE_URL``), at each call, and the cloud
requests carry what inference's platform client adds to Roboflow's block's: its headers
(``X-Roboflow-Inference-Version``, ``ROBOFLOW_API_EXTRA_HEADERS``) and its ``wrap_url`` (the
``SECURE_GATEWAY`` proxy), taken from the same client Roboflow's block resolves. The cooldown
(default 1 s) and ``throttling_status`` behave as Roboflow's. Fire-and-forget returns at once
(``event_id`` empty); otherwise the step waits for the service, up to 30 s, Roboflow's timeout.
This module imports inference and roboflow-workflows (inference 1.8.3 and later).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from concurrent.futures import wait as wait_for_futures
from typing import Any, Literal

from inference.core.workflows.prototypes.block import WorkflowBlock
from pydantic import ConfigDict
from roboflow_workflows.core_steps.sinks.roboflow.vision_events.v1 import BlockManifest as RoboflowManifest
from roboflow_workflows.prototypes.platform_client import resolve_platform_blocks_client

from fastsend.config import DEFAULT_URL, Settings
from fastsend.integrations.vision_events import (
    predictions_to_annotations,
    prepare_cloud_event,
    prepare_local_event,
    vision_event,
)
from fastsend.integrations.writer_pool import WriterPool
from fastsend.results import Cause, Result
from fastsend.send.cloud import CLOUD_SUCCESS, EVENT_PATH, UPLOAD_PATH, CloudEventWriter, CloudRoutes
from fastsend.send.prepare import PreparedEvent
from fastsend.send.writer import EventWriter

__all__ = ["VISION_EVENTS_TYPE", "BlockManifest", "FastsendVisionEventsBlockV1", "cloud_base_url", "cloud_routes"]

logger = logging.getLogger("fastsend")

VISION_EVENTS_TYPE = "fastsend/vision_events@v1"
REFERENCE_TYPE = "roboflow_core/roboflow_vision_events@v1"
SEND_TIMEOUT_SECONDS = 30.0  # Roboflow's block waits this long for each request
CLOSE_FLUSH_SECONDS = 30.0
LOCAL_SUCCESS = "Event written to local event store successfully"
BACKGROUND_MESSAGE = "Vision event sent in background task"
COOLDOWN_MESSAGE = "Sink cooldown applies"
NO_API_KEY = (
    "VisionEvents block cannot run without Roboflow API key. If you do not know how to get API key - visit "
    "https://docs.roboflow.com/api-reference/authentication#retrieve-an-api-key to learn how to retrieve one."
)


class BlockManifest(RoboflowManifest):  # type: ignore[misc]
    """``roboflow_core/roboflow_vision_events@v1``'s manifest under fastsend's ``type``."""

    model_config = ConfigDict(
        json_schema_extra={
            **RoboflowManifest.model_config.get("json_schema_extra", {}),
            "name": "Vision Events (fastsend)",
        }
    )
    type: Literal["fastsend/vision_events@v1"]


def cloud_base_url() -> str:
    """The Roboflow API's base URL, where inference reads it (``API_BASE_URL``), now."""
    from roboflow_workflows import environment

    return str(environment.API_BASE_URL)


def cloud_routes(platform_client: Any, base_url: str) -> CloudRoutes:
    """The URLs and headers Roboflow's block would use with ``platform_client`` (resolved as it resolves it)."""
    client = resolve_platform_blocks_client(platform_client)
    headers = client.build_api_headers()
    return CloudRoutes(
        upload_url=client.wrap_url(base_url + UPLOAD_PATH),
        event_url=client.wrap_url(base_url + EVENT_PATH),
        headers={str(name): _header_value(value) for name, value in headers.items()},
    )


def _header_value(value: Any) -> str:
    # build_api_headers may give a list for a header sent more than once: one header, comma-separated.
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


class StepEvents:
    """The events one step queued and how their failures are logged (at 1, 10, 100, … occurrences)."""

    def __init__(self, block_type: str) -> None:
        self._block_type = block_type
        self._pending: set[Future[Result]] = set()
        self._failures = 0
        self._lock = threading.Lock()

    def track(self, future: Future[Result]) -> None:
        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._settled)

    def _settled(self, future: Future[Result]) -> None:
        with self._lock:
            self._pending.discard(future)
        if future.cancelled() or future.exception() is not None:
            self.failed("background event lost", "cancelled" if future.cancelled() else future.exception())
        elif future.result().error_status and not future.result().spooled:
            self.failed("background event failed", future.result().message)

    def failed(self, what: str, detail: object) -> None:
        with self._lock:
            self._failures += 1
            count = self._failures
        if count == 10 ** (len(str(count)) - 1):
            logger.warning("%s: %s (%d failure(s) so far): %s", self._block_type, what, count, detail)

    def wait(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the queued events; how many are still pending."""
        with self._lock:
            pending = list(self._pending)
        _, not_done = wait_for_futures(pending, timeout=timeout)
        if not_done:
            logger.warning(
                "%s: %d event(s) still queued at close; the writer keeps sending them", self._block_type, len(not_done)
            )
        return len(not_done)


class Cooldown:
    """Roboflow's cooldown: a call within ``seconds`` of the last one that went is throttled."""

    def __init__(self) -> None:
        self._last: float | None = None
        self._lock = threading.Lock()

    def take(self, seconds: Any, refuse: Any = None) -> bool:
        """Whether this call may go (then the cooldown restarts now); ``refuse()`` may raise before it does."""
        cooldown = max(float(seconds or 0), 0.0)  # a negative value from a selector behaves as 0
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last < cooldown:
                return False
            if refuse is not None:
                refuse()
            self._last = now
            return True


def outputs(result: Result, *, throttled: bool = False) -> dict[str, Any]:
    return {**result.as_dict(), "throttling_status": throttled}


class FastsendVisionEventsBlockV1(WorkflowBlock):  # type: ignore[misc]
    """Sends each call's event through the process's fastsend writer for its destination."""

    def __init__(self, api_key: str | None = None, disable_sinks: bool = False, platform_client: Any = None) -> None:
        self._api_key = api_key
        self._disable_sinks = bool(disable_sinks)
        self._platform_client = platform_client
        self._cooldown = Cooldown()
        self._events = StepEvents(VISION_EVENTS_TYPE)

    @classmethod
    def get_init_parameters(cls) -> list[str]:
        return ["api_key", "disable_sinks", "platform_client"]

    @classmethod
    def get_manifest(cls) -> type[BlockManifest]:
        return BlockManifest

    def run(
        self,
        *,
        event_type: str,
        solution: str | None = None,
        input_image: Any = None,
        output_image: Any = None,
        predictions: Any = None,
        custom_metadata: dict[str, Any] | None = None,
        fire_and_forget: bool = True,
        disable_sink: bool = False,
        cooldown_seconds: float = 1,
        write_to_event_store: bool = False,
        event_store_url: str = DEFAULT_URL,
        **fields: Any,
    ) -> dict[str, Any]:
        if self._disable_sinks or disable_sink:
            reason = "workflow execution policy" if self._disable_sinks else "parameter `disable_sink`"
            return outputs(Result.accepted(f"Sink was disabled by {reason}"))
        if not self._cooldown.take(cooldown_seconds, None if write_to_event_store else self._require_api_key):
            logger.info("Activated `%s` cooldown.", VISION_EVENTS_TYPE)
            return outputs(Result.accepted(COOLDOWN_MESSAGE), throttled=True)
        copy = bool(fire_and_forget)
        try:
            event = vision_event(event_type, solution, fields, custom_metadata)
            annotations = predictions_to_annotations(predictions)
            images = {"output_image": output_image, "input_image": input_image, "annotations": annotations}
            if write_to_event_store:
                pool, url, key, options = _LOCAL, event_store_url, Settings.one("api_key"), None
                prepared = prepare_local_event(event, copy=copy, **images)
            else:
                base_url = cloud_base_url().rstrip("/")
                options = {"routes": cloud_routes(self._platform_client, base_url)}
                pool, url, key = _CLOUD, base_url, self._api_key
                prepared = prepare_cloud_event(event, copy=copy, **images)
        except Exception as exc:  # noqa: BLE001 - bad input from a selector is the step's error output
            self._events.failed("event not sent", exc)
            return outputs(
                Result.failed(Cause.INVALID_EVENT, f"Error creating vision event: {type(exc).__name__}: {exc}")
            )
        try:
            writer = pool.acquire(url, key, options)
        except (OSError, RuntimeError) as exc:
            self._events.failed("could not start a writer", exc)
            return outputs(Result.failed(Cause.INTERNAL_ERROR, f"could not start a writer for {url}: {exc}"))
        try:  # the writer is not closed by an eviction until its event is handed over
            return outputs(self._send(writer, prepared, copy, LOCAL_SUCCESS if write_to_event_store else CLOUD_SUCCESS))
        finally:
            pool.release(writer)

    def _require_api_key(self) -> None:
        if self._api_key is None:
            raise ValueError(NO_API_KEY)

    def _send(self, writer: EventWriter, prepared: PreparedEvent, fire_and_forget: bool, success: str) -> Result:
        if fire_and_forget:
            self._events.track(writer.submit_prepared(prepared))
            return Result.accepted(BACKGROUND_MESSAGE)
        result = writer.send_prepared(prepared, deadline=SEND_TIMEOUT_SECONDS)
        return result if result.error_status else Result.delivered(result.event_id, success)

    def close(self, timeout: float = CLOSE_FLUSH_SECONDS) -> int:
        """Wait up to ``timeout`` seconds for this step's queued events; how many are still pending."""
        return self._events.wait(timeout)


# One writer per destination for the whole process, shared by every step and run.
_LOCAL = WriterPool({"request_timeout": SEND_TIMEOUT_SECONDS})
_CLOUD = WriterPool({"request_timeout": SEND_TIMEOUT_SECONDS}, writer_type=CloudEventWriter)


def flush_shared_writers(timeout: float | None = None) -> int:
    """Wait for every Vision Events writer's queued events; how many are still pending."""
    return _LOCAL.flush(timeout) + _CLOUD.flush(timeout)
