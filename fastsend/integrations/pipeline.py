"""An ``on_prediction`` sink for inference's ``InferencePipeline``: frames → events.

::

    sink = EventSink("http://localhost:8001", event=lambda predictions, frame: Event.custom(value="seen"),
                     object_detections="predictions", cooldown_seconds=1.0)
    pipeline = InferencePipeline.init_with_workflow(..., on_prediction=sink)

It works for workflow pipelines (``predictions`` is the dict of workflow outputs),
model pipelines (``predictions`` is inference's JSON and the image is
``video_frame.image``) and multi-source pipelines (lists with ``None`` gaps), alone
or inside inference's ``multi_sink``. It never raises into the pipeline and costs
the dispatch thread one ``submit()`` per event: failures are counted and logged.
This module does not import inference.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from fastsend.events import Event, ValidationError
from fastsend.results import QueueFullError, Result
from fastsend.send.writer import EventWriter

__all__ = ["EventBuilder", "EventSink", "Pick"]

logger = logging.getLogger("fastsend")

#: ``(predictions, video_frame) -> Event | None``: which frames become events, and with what fields.
EventBuilder = Callable[[Any, Any], Event | None]
#: Where a value comes from: the name of a key in ``predictions`` (a workflow output), or a callable.
Pick = str | Callable[[Any, Any], Any]


class EventSink:
    """Call it as ``sink(predictions, video_frame)``; each frame whose ``event`` is not None is sent.

    - ``event``: ``(predictions, video_frame) -> Event | None``. None skips the frame.
    - ``image``: the output image; a workflow output's name (e.g. ``"visualization"``),
      a callable, or None for ``video_frame.image``.
    - ``input_image``: True sends ``video_frame.image`` as the input image too; a name
      or callable picks another one; None/False sends none.
    - ``object_detections``, ``classifications``, ``instance_segmentations``,
      ``keypoint_detections``: a name or callable each (``"predictions"`` on a model
      pipeline picks inference's prediction list).
    - ``cooldown_seconds``: per video source, frames within this many seconds of the
      last event sent are skipped (counted as ``throttled``).
    - ``writer``: an ``EventWriter`` to use (not closed by the sink); otherwise one is
      made from ``url`` and ``settings`` and closed by ``close()``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        event: EventBuilder,
        image: Pick | None = None,
        input_image: Pick | bool | None = None,
        label: str | None = None,
        object_detections: Pick | None = None,
        classifications: Pick | None = None,
        instance_segmentations: Pick | None = None,
        keypoint_detections: Pick | None = None,
        cooldown_seconds: float = 0.0,
        writer: EventWriter | None = None,
        **settings: Any,
    ) -> None:
        if not callable(event):
            raise ValidationError("event", event, "must be a callable (predictions, video_frame) -> Event | None")
        if cooldown_seconds < 0:
            raise ValidationError("cooldown_seconds", cooldown_seconds, "must be >= 0")
        for name, pick in (
            ("image", image),
            ("object_detections", object_detections),
            ("classifications", classifications),
            ("instance_segmentations", instance_segmentations),
            ("keypoint_detections", keypoint_detections),
        ):
            if pick is not None and not (isinstance(pick, str) or callable(pick)):
                raise ValidationError(name, pick, "must be a predictions key (str), a callable, or None")
        if writer is not None and (url is not None or settings):
            raise ValidationError("writer", writer, "give either a writer or url/settings, not both")
        self._event = event
        self._image = image
        self._input_image = input_image
        self._label = label
        self._predictions = {
            "object_detections": object_detections,
            "classifications": classifications,
            "instance_segmentations": instance_segmentations,
            "keypoint_detections": keypoint_detections,
        }
        self._cooldown = float(cooldown_seconds)
        self._owns_writer = writer is None
        self.writer = writer if writer is not None else EventWriter(url, **settings)
        self._last_sent: dict[Any, float] = {}
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, predictions: Any, video_frame: Any) -> None:
        """``on_prediction``: one frame, or the aligned lists of a multi-source pipeline."""
        if isinstance(video_frame, list):
            items = list(predictions) if isinstance(predictions, list) else [predictions] * len(video_frame)
            for frame_predictions, frame in zip(items, video_frame, strict=False):
                if frame is not None and frame_predictions is not None:
                    self._one(frame_predictions, frame)
            return
        if video_frame is not None and predictions is not None:
            self._one(predictions, video_frame)

    def _one(self, predictions: Any, video_frame: Any) -> None:
        try:
            event = self._event(predictions, video_frame)
            if event is None:
                self._count("skipped")
                return
            source = getattr(video_frame, "source_id", None)
            now = time.monotonic()
            last = self._last_sent.get(source)
            if self._cooldown and last is not None and now - last < self._cooldown:
                self._count("throttled")
                return
            image = video_frame.image if self._image is None else _pick(self._image, predictions, video_frame)
            if self._input_image is True:
                input_image = video_frame.image
            elif self._input_image in (None, False):
                input_image = None
            else:
                input_image = _pick(self._input_image, predictions, video_frame)  # type: ignore[arg-type]
            annotations = {
                name: _pick(pick, predictions, video_frame)
                for name, pick in self._predictions.items()
                if pick is not None
            }
            future = self.writer.submit(event, image, input_image=input_image, label=self._label, **annotations)
        except (ValidationError, QueueFullError) as exc:
            self._failed("invalid" if isinstance(exc, ValidationError) else "queue_full", exc)
            return
        except Exception as exc:  # noqa: BLE001 - the pipeline's dispatch thread must outlive any user callable
            self._failed("error", exc)
            return
        self._last_sent[source] = now
        self._count("submitted")
        future.add_done_callback(self._settled)

    def _settled(self, future: Future[Result]) -> None:
        if future.cancelled() or future.exception() is not None:
            self._failed("error", "cancelled" if future.cancelled() else future.exception())
            return
        result = future.result()
        if result.error_status and not result.spooled:
            self._failed("delivery_failed", result.message)
        else:
            self._count("spooled" if result.spooled else "delivered")

    def _count(self, what: str) -> int:
        with self._lock:
            self._counts[what] += 1
            return self._counts[what]

    def _failed(self, reason: str, detail: object) -> None:
        count = self._count(reason)
        # A failure that repeats every frame is logged at 1, 10, 100, … occurrences.
        if count == 10 ** (len(str(count)) - 1):
            logger.warning("EventSink: %s (%d so far): %s", reason.replace("_", " "), count, detail)

    def stats(self) -> dict[str, int]:
        """Frames ``submitted``, ``skipped`` (no event), ``throttled``; ``delivered``, ``spooled``;
        and failures: ``invalid``, ``queue_full``, ``error`` (a callable raised), ``delivery_failed``."""
        with self._lock:
            return dict(self._counts)

    def flush(self, timeout: float | None = None) -> int:
        """Wait for every submitted event's outcome; how many are still pending."""
        return self.writer.flush(timeout)

    def close(self, timeout: float | None = None) -> int:
        """Flush, and close the writer if the sink made it; how many events were left unsent."""
        if self._owns_writer:
            return self.writer.close(timeout)
        return self.writer.flush(timeout)


def _pick(pick: Pick, predictions: Any, video_frame: Any) -> Any:
    if callable(pick):
        return pick(predictions, video_frame)
    try:
        return predictions[pick]
    except (KeyError, TypeError, IndexError):
        raise ValidationError(pick, type(predictions).__name__, "is not a key of the predictions") from None
