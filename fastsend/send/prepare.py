"""An event made ready on the caller's thread: validated, its annotations converted, its envelope
serialized, its images taken (snapshotted or handed over), and its ``Idempotency-Key`` drawn.

Everything that could fail for a reason the caller could be told fails here, by name.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from fastsend.annotations import (
    classifications_to_wire,
    instance_segmentations_to_wire,
    keypoints_to_wire,
    object_detections_to_wire,
)
from fastsend.events import Event, ValidationError
from fastsend.imaging.jpeg import ImageSource, RawImage, prepare_image, release_frame
from fastsend.send.wire import Envelope, build_envelope

__all__ = ["PreparedEvent", "new_idempotency_key", "prepare_event"]


class _RandomBytes:
    """``os.urandom`` read 4 KiB at a time and handed out 16 bytes per key.

    One system call per 256 events instead of one per event: each call lets go of the GIL, and on a
    loaded machine the caller's thread then waits for the encoders to hand it back.
    """

    _BLOCK = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reset()

    def _reset(self) -> None:
        self._pool = b""
        self._offset = 0

    def take(self, count: int) -> bytes:
        with self._lock:
            if self._offset + count > len(self._pool):
                self._pool, self._offset = os.urandom(self._BLOCK), 0
            start, self._offset = self._offset, self._offset + count
            return self._pool[start : self._offset]

    def forget_in_child(self) -> None:
        # A forked child must not hand out the keys its parent will.
        self._lock = threading.Lock()
        self._reset()


_random_bytes = _RandomBytes()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_random_bytes.forget_in_child)


def new_idempotency_key() -> str:
    """A random (version 4) UUID, as text; a third of ``str(uuid.uuid4())``'s cost."""
    raw = bytearray(_random_bytes.take(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


@dataclass(frozen=True, slots=True, eq=False)
class PreparedEvent:
    """Everything the caller's thread contributes: validated, detached from its buffers.

    ``output`` is the image of the envelope's first image string: the output image (or the
    input image of an event that has only that one), None for an event without images.
    ``input`` is ``output`` itself when the caller passed one image for both, so it
    is encoded once.
    """

    event: Event
    envelope: Envelope
    output: ImageSource | None
    input: ImageSource | None
    idempotency_key: str

    @property
    def images(self) -> tuple[ImageSource, ...]:
        """The event's images, each once: no input when there is none or it is the output itself."""
        if self.output is None:
            return ()
        if self.input is None or self.input is self.output:
            return (self.output,)
        return (self.output, self.input)

    @property
    def frame_bytes(self) -> int:
        """The bytes its images hold while it waits: what the queue's byte bound counts."""
        return sum(s.array.nbytes if isinstance(s, RawImage) else len(s.base64) for s in self.images)

    @property
    def snapshots(self) -> list[RawImage]:
        """The images copied on the caller's thread (into the frame pool's buffers)."""
        return [s for s in self.images if isinstance(s, RawImage) and s.recyclable]

    def release_frames(self) -> None:
        """Give its snapshot buffers back to the frame pool, once nothing will read them again."""
        for source in self.images:
            release_frame(source)


def prepare_event(
    event: Event,
    image: Any,
    *,
    input_image: Any = None,
    label: str | None = None,
    object_detections: Any = None,
    classifications: Any = None,
    instance_segmentations: Any = None,
    keypoint_detections: Any = None,
    color: str = "bgr",
    copy: bool = True,
) -> PreparedEvent:
    """Validate images and predictions, convert the annotations, serialize the envelope.

    Raises ``ValidationError`` naming the field; nothing here is deferred that could
    fail later for a reason the caller could have been told now.
    """
    if not isinstance(event, Event):
        raise ValidationError("event", event, "must be a fastsend.Event (build it with Event.quality_check(...) etc.)")
    output = prepare_image(image, field="image", color=color, copy=copy)
    if input_image is None:
        source = None
    elif input_image is image:
        source = output
    else:
        source = prepare_image(input_image, field="input_image", color=color, copy=copy)
    annotations = {}
    for key, predictions, convert, field in (
        ("objectDetections", object_detections, object_detections_to_wire, "object_detections"),
        ("classifications", classifications, classifications_to_wire, "classifications"),
        ("instanceSegmentations", instance_segmentations, instance_segmentations_to_wire, "instance_segmentations"),
        ("keypoints", keypoint_detections, keypoints_to_wire, "keypoint_detections"),
    ):
        if predictions is not None:
            annotations[key] = convert(predictions, field)
    envelope = build_envelope(event, label=label, annotations=annotations)
    return PreparedEvent(event, envelope, output, source, new_idempotency_key())
