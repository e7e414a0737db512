"""The Event Writer workflow block's semantics: its parameters, by their exact names, → a prepared event, and
``EventWriterSink``, the block's ``run()`` over a pool of writers.

Parameters that do not belong to the chosen schema are ignored, as the block does.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from fastsend.config import DEFAULT_REQUEST_TIMEOUT, SETTING_ENV_VARS, Settings
from fastsend.events import Event, ValidationError, unexpected_keyword_message
from fastsend.imaging.jpeg import JpegOptions
from fastsend.integrations.writer_pool import WriterPool
from fastsend.results import Cause, Result
from fastsend.send.encoding import render_body
from fastsend.send.prepare import PreparedEvent, prepare_event
from fastsend.send.wire import Endpoint, Post, Request, events_url
from fastsend.send.writer import EventWriter

__all__ = [
    "API_KEY_ENV",
    "BACKGROUND_MESSAGE",
    "BLOCK_SCHEMAS",
    "BlockEvent",
    "EventWriterSink",
    "build_block_request",
    "prepare_block_event",
]

logger = logging.getLogger("fastsend")
# The Event Writer block's output in fire-and-forget mode.
BACKGROUND_MESSAGE = "Event sent in background task"

API_KEY_ENV = SETTING_ENV_VARS["api_key"]  # EVENT_INGESTION_API_KEY, named once in config
BLOCK_SCHEMAS = ("quality_check", "inventory_count", "safety_alert", "custom")
_SCHEMA_FIELDS = frozenset(
    {
        "qc_result", "external_id", "location", "item_count", "item_type",
        "alert_type", "severity", "alert_description", "custom_value",
    }
)  # fmt: skip
_OTHER_PARAMETERS = (
    "event_schema", "output_image", "input_image", "image_label", "custom_metadata", "object_detections",
    "classifications", "instance_segmentations", "keypoint_detections", "event_ingestion_url",
)  # fmt: skip
# Event constructor keyword -> the block's parameter, where they differ.
_BLOCK_NAMES = {"result": "qc_result", "description": "alert_description", "value": "custom_value"}


@dataclass(frozen=True, slots=True, eq=False)
class BlockEvent:
    """A block call made ready to send: the events URL and the prepared event."""

    url: str
    prepared: PreparedEvent


def _event(event_schema: Any, custom_metadata: Any, params: dict[str, Any]) -> Event:
    try:
        return _schema_event(event_schema, custom_metadata, params)
    except ValidationError as error:
        if error.field not in _BLOCK_NAMES:
            raise
        raise error.renamed(_BLOCK_NAMES[error.field]) from None


def _schema_event(event_schema: Any, custom_metadata: Any, params: dict[str, Any]) -> Event:
    common = {"custom_metadata": custom_metadata}
    get = params.get
    if event_schema == "quality_check":
        return Event.quality_check(result=get("qc_result"), external_id=get("external_id"), **common)
    if event_schema == "inventory_count":
        return Event.inventory_count(
            location=get("location"),
            item_count=get("item_count"),
            item_type=get("item_type"),
            external_id=get("external_id"),
            **common,
        )
    if event_schema == "safety_alert":
        return Event.safety_alert(
            alert_type=get("alert_type"),
            severity=get("severity"),
            description=get("alert_description"),
            external_id=get("external_id"),
            **common,
        )
    if event_schema == "custom":
        return Event.custom(value=get("custom_value"), external_id=get("external_id"), **common)
    # The block's four only: operator_feedback is the Vision Events block's, not the Event Writer's.
    raise ValidationError("event_schema", event_schema, f"must be one of {', '.join(BLOCK_SCHEMAS)}")


def prepare_block_event(
    *,
    event_schema: str,
    output_image: Any,
    event_ingestion_url: str | None = None,
    input_image: Any = None,
    image_label: str | None = None,
    custom_metadata: dict[str, Any] | None = None,
    object_detections: Any = None,
    classifications: Any = None,
    instance_segmentations: Any = None,
    keypoint_detections: Any = None,
    copy: bool = True,
    **schema_fields: Any,
) -> BlockEvent:
    """Validate a block call and prepare it; the schema fields are ``qc_result``,
    ``external_id``, ``location``, ``item_count``, ``item_type``, ``alert_type``,
    ``severity``, ``alert_description`` and ``custom_value``."""
    unknown = sorted(set(schema_fields) - _SCHEMA_FIELDS)
    if unknown:
        known = [*_SCHEMA_FIELDS, *_OTHER_PARAMETERS]
        raise TypeError(unexpected_keyword_message("Event Writer block", unknown[0], known))
    event = _event(event_schema, custom_metadata, schema_fields)
    instance_segmentations = _outlined_segmentations(instance_segmentations)
    try:
        prepared = prepare_event(
            event,
            output_image,
            input_image=input_image,
            label=image_label,
            object_detections=object_detections,
            classifications=classifications,
            instance_segmentations=instance_segmentations,
            keypoint_detections=keypoint_detections,
            copy=copy,
        )
    except ValidationError as error:
        if error.field == "label":
            raise error.renamed("image_label") from None
        if error.field == "image" or error.field.startswith("image."):  # prepare_event's name for output_image
            raise error.renamed("output_" + error.field, keep_name=False) from None
        raise
    return BlockEvent(events_url(event_ingestion_url), prepared)


class _WarnOnce:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._warned = False

    def __call__(self, message: str, *args: Any) -> None:
        with self._lock:
            warned, self._warned = self._warned, True
        if not warned:
            logger.warning(message, *args)


_warn_dropped_segmentations = _WarnOnce()


def _outlined_segmentations(predictions: Any) -> Any:
    """Instance segmentations as the Event Writer block sends them: Detections with neither masks nor
    ``data["polygon"]`` have no outline, and it sends the event without them; so does the block here
    (``prepare_event`` refuses them: outside the block they are a mistake to be told about)."""
    if not all(hasattr(predictions, name) for name in ("xyxy", "mask", "data")):
        return predictions
    if predictions.mask is not None or "polygon" in (predictions.data or {}) or len(predictions) == 0:
        return predictions
    _warn_dropped_segmentations(
        "Event Writer block: %d instance segmentation(s) without masks or polygons dropped from the event, as the "
        "Event Writer drops them (boxes alone go in object_detections); warned once",
        len(predictions),
    )
    return None


def build_block_request(*, jpeg: JpegOptions | None = None, **params: Any) -> Post:
    """The whole request for one block call, encoded on this thread: URL, headers and body.

    ``fire_and_forget``, ``disable_sink`` and ``request_timeout`` concern the sender
    and are ignored here. The API key comes from ``EVENT_INGESTION_API_KEY``.
    """
    for sender_only in ("fire_and_forget", "disable_sink", "request_timeout"):
        params.pop(sender_only, None)
    block_event = prepare_block_event(**params)
    request = Request.of(block_event.prepared.idempotency_key, render_body(block_event.prepared, jpeg or JpegOptions()))
    return Endpoint(block_event.url, Settings.one("api_key")).address(request)


class EventWriterSink:
    """Drop-in for the Event Writer workflow block: ``run(**block parameters)`` → its output dict.

    One writer (and one connection pool) is kept per URL, so calling ``run()`` once per
    frame reuses connections; at most ``max_writers`` of them (``FASTSEND_MAX_WRITERS``):
    the least recently used is closed, after a flush, when another URL needs one, and no
    event is lost or refused for it (``fastsend.integrations.writer_pool``).
    """

    def __init__(self, **settings: Any) -> None:
        self.pool = WriterPool(settings)

    def run(
        self,
        *,
        fire_and_forget: bool = True,
        disable_sink: bool = False,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        event_ingestion_url: str | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        if disable_sink:
            return Result.accepted("Sink was disabled by the disable_sink parameter").as_dict()
        result, _ = self.dispatch(
            fire_and_forget=fire_and_forget,
            request_timeout=request_timeout,
            event_ingestion_url=event_ingestion_url,
            **params,
        )
        return result.as_dict()

    def dispatch(
        self,
        *,
        fire_and_forget: bool = True,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        event_ingestion_url: str | None = None,
        **params: Any,
    ) -> tuple[Result, Future[Result] | None]:
        """The block's semantics: queue the event (its Future comes back too) or send it and wait.

        A synchronous call returns within ``request_timeout`` plus the encoding time: its one
        budget covers the time queued, every attempt and any retry. Raises ``ValidationError``
        (or ``TypeError``, ``QueueFullError``) for what the caller must fix; a writer that cannot
        be started (out of file descriptors or threads) is an error Result, not an exception.
        """
        try:
            writer = self.pool.acquire(event_ingestion_url, Settings.one("api_key"))
        except (OSError, RuntimeError) as exc:
            logger.error("could not start a writer for %s: %s", event_ingestion_url, exc)
            message = f"Event not sent: could not start a writer for its URL: {exc}"
            return Result.failed(Cause.INTERNAL_ERROR, message), None
        try:  # the writer is not closed by an eviction until its event is handed over
            # A synchronous call encodes before it returns: the images need no snapshot.
            # A queued event must not see later in-place edits of its frames (blocks may draw on numpy_image):
            # they are snapshotted.
            block_event = prepare_block_event(event_ingestion_url=writer.settings.url, copy=fire_and_forget, **params)
            if fire_and_forget:
                return Result.accepted(BACKGROUND_MESSAGE), writer.submit_prepared(block_event.prepared)
            # The call's request_timeout is its budget (queued, every attempt, any retry), not a writer setting.
            return writer.send_prepared(block_event.prepared, deadline=float(request_timeout)), None
        finally:
            self.pool.release(writer)

    def writer_for(self, url: str | None, api_key: str | None) -> EventWriter:
        """The pool's writer for ``url`` (one per URL, whatever a call's ``request_timeout``)."""
        return self.pool.writer_for(url, api_key)

    def flush(self, timeout: float | None = None) -> int:
        """Wait for every writer's queued events; returns how many are still pending."""
        return self.pool.flush(timeout)

    def close(self, timeout: float | None = None) -> int:
        """Close every writer, each flushing for up to ``timeout``; returns how many events were left unsent."""
        return self.pool.close(timeout)
