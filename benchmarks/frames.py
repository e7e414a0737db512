"""Deterministic synthetic frames and detections for the benchmarks.

A frame is H×W×3 uint8 BGR with the JPEG complexity of a real camera picture:
smooth lighting, mid-frequency texture, sensor grain and hard-edged shapes with
text — neither flat (which would flatter the encoder and the transfer) nor pure
noise (which no camera produces). The same seed gives the same bytes on every
machine with the same numpy and OpenCV.

The "output image" of an event is the input frame with its detections drawn on
it, as a visualization block would produce, so the two images of an event are
different arrays and both are encoded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
import supervision as sv

__all__ = [
    "CLASS_NAMES",
    "SIZES",
    "EventInputs",
    "annotate",
    "event_inputs",
    "make_detections",
    "make_frame",
]

#: Scenario name → (width, height).
SIZES: dict[str, tuple[int, int]] = {"1080p": (1920, 1080), "480p": (640, 480)}

TEXTURE = 16.0
GRAIN = 1.0

CLASS_NAMES = (
    "person",
    "car",
    "truck",
    "bicycle",
    "forklift",
    "pallet",
    "box",
    "helmet",
    "vest",
    "bottle",
    "crate",
    "label",
    "defect",
    "scratch",
    "dent",
    "bolt",
)


def make_frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A C-contiguous ``height×width×3`` uint8 BGR frame, deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    # Lighting: a smooth diagonal gradient plus a few large blobs.
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    base = 70.0 + 90.0 * (0.6 * xs + 0.4 * ys)
    image = np.repeat(base[:, :, None], 3, axis=2)
    image *= rng.uniform(0.8, 1.2, size=3).astype(np.float32)
    blobs = rng.uniform(-50, 50, size=(max(height // 160, 3), max(width // 160, 3), 1)).astype(np.float32)
    tint = rng.uniform(-12, 12, size=(max(height // 160, 3), max(width // 160, 3), 3)).astype(np.float32)
    image += cv2.resize(blobs + tint, (width, height), interpolation=cv2.INTER_CUBIC)
    # Mid-frequency texture (floor, walls, foliage), mostly in luminance as in real scenes.
    grid = (height // 6 + 1, width // 6 + 1)
    texture = rng.uniform(-TEXTURE, TEXTURE, size=(*grid, 1)) + rng.uniform(-4, 4, size=(*grid, 3))
    image += cv2.resize(texture.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    # Sensor grain.
    image += rng.normal(0.0, GRAIN, size=(height, width, 1)).astype(np.float32)
    frame = np.clip(image, 0, 255).astype(np.uint8)
    # Hard edges: objects, stripes and text.
    scale = width / 1920
    for _ in range(40):
        color = tuple(int(c) for c in rng.integers(0, 256, size=3))
        x1, y1 = int(rng.integers(0, width)), int(rng.integers(0, height))
        w, h = int(rng.integers(20, 300) * scale) + 4, int(rng.integers(20, 300) * scale) + 4
        kind = int(rng.integers(0, 4))
        if kind == 0:
            cv2.rectangle(frame, (x1, y1), (x1 + w, y1 + h), color, -1)
        elif kind == 1:
            cv2.circle(frame, (x1, y1), max(w // 2, 3), color, -1, lineType=cv2.LINE_AA)
        elif kind == 2:
            cv2.line(frame, (x1, y1), (x1 + w, y1 + h), color, max(int(6 * scale), 1), lineType=cv2.LINE_AA)
        else:
            cv2.ellipse(frame, (x1, y1), (w // 2 + 2, h // 3 + 2), float(rng.uniform(0, 180)), 0, 360, color, 2)
    for i in range(12):
        origin = (int(rng.integers(0, max(width - 200, 1))), int(rng.integers(20, height)))
        cv2.putText(
            frame,
            f"ZONE-{seed}-{i:02d} 12:34:{i:02d}",
            origin,
            cv2.FONT_HERSHEY_SIMPLEX,
            0.9 * max(scale, 0.5),
            (235, 235, 235),
            2,
            cv2.LINE_AA,
        )
    return frame


def make_detections(n: int, width: int = 1920, height: int = 1080, seed: int = 0) -> sv.Detections:
    """``n`` boxes inside a ``width×height`` frame, float32 like a model's output, with class names."""
    rng = np.random.default_rng(seed + 1_000_003)
    x1 = rng.uniform(0, width * 0.85, n)
    y1 = rng.uniform(0, height * 0.85, n)
    w = rng.uniform(16, width * 0.15, n)
    h = rng.uniform(16, height * 0.15, n)
    xyxy = np.stack([x1, y1, np.minimum(x1 + w, width - 1), np.minimum(y1 + h, height - 1)], axis=1)
    class_id = rng.integers(0, len(CLASS_NAMES), n)
    return sv.Detections(
        xyxy=xyxy.astype(np.float32),
        confidence=rng.uniform(0.25, 0.99, n).astype(np.float32),
        class_id=class_id,
        data={"class_name": np.array([CLASS_NAMES[i] for i in class_id])},
    )


def annotate(frame: np.ndarray, detections: sv.Detections) -> np.ndarray:
    """A copy of ``frame`` with boxes and labels drawn: the event's output image."""
    out = frame.copy()
    thickness = max(out.shape[1] // 640, 1)
    names = detections.data.get("class_name")
    for i, (x1, y1, x2, y2) in enumerate(detections.xyxy.astype(int)):
        color = (0, 255 - 20 * (i % 8), 40 * (i % 6))
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
        label = f"{names[i] if names is not None else 'obj'} {detections.confidence[i]:.2f}"
        cv2.putText(out, label, (x1, max(y1 - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, color, thickness)
    return out


@dataclass(frozen=True)
class EventInputs:
    """What a pipeline hands the sender for one event. Treat the arrays as read-only."""

    output_frame: np.ndarray
    input_frame: np.ndarray
    detections: sv.Detections

    @property
    def size(self) -> tuple[int, int]:
        return self.input_frame.shape[1], self.input_frame.shape[0]


@lru_cache(maxsize=8)
def event_inputs(width: int, height: int, n_detections: int = 10, seed: int = 0) -> EventInputs:
    """Cached inputs of one event: annotated output frame, raw input frame, ``n_detections`` boxes."""
    frame = make_frame(width, height, seed)
    detections = make_detections(n_detections, width, height, seed)
    output = annotate(frame, detections)
    frame.setflags(write=False)
    output.setflags(write=False)
    return EventInputs(output, frame, detections)
