"""The demo scenario: a synthetic video with tracked shapes, one event per frame.

Frames are moving shapes on a textured background; the "detections" are the
shapes' true boxes, so every event carries annotations that match its image.
Nothing here prints: the CLI renders progress and the summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fastsend.events import Event
from fastsend.results import Result
from fastsend.send.writer import EventWriter

__all__ = ["DemoSummary", "SyntheticVideo", "run_demo"]

_SHAPE_CLASSES = ("box", "bottle", "helmet", "pallet")
_SHAPE_COLOURS = np.array([[40, 40, 220], [40, 200, 40], [220, 160, 30], [200, 60, 200]], dtype=np.uint8)
_BOX_COLOUR = np.array([0, 255, 255], dtype=np.uint8)


@dataclass
class _Shape:
    kind: int
    x: float
    y: float
    vx: float
    vy: float
    w: int
    h: int


class SyntheticVideo:
    """Deterministic frames (BGR uint8) with the ground-truth detections of their shapes."""

    def __init__(self, width: int = 1280, height: int = 720, shapes: int = 5, seed: int = 0) -> None:
        self.width, self.height = width, height
        rng = np.random.default_rng(seed)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        texture = 90 + 40 * np.sin(xx / 23.0) * np.cos(yy / 17.0) + rng.normal(0, 2, (height, width))
        self._background = np.clip(np.stack([texture, texture * 0.9 + 10, texture * 0.8 + 20], axis=-1), 0, 255).astype(
            np.uint8
        )
        side = max(16, min(width, height) // 8)
        self._shapes = [
            _Shape(
                kind=i % len(_SHAPE_CLASSES),
                x=float(rng.uniform(0, width - side)),
                y=float(rng.uniform(0, height - side)),
                vx=float(rng.uniform(-9, 9)),
                vy=float(rng.uniform(-6, 6)),
                w=int(side * rng.uniform(0.7, 1.5)),
                h=int(side * rng.uniform(0.7, 1.5)),
            )
            for i in range(shapes)
        ]

    def frames(self, count: int) -> Iterator[tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8], list[dict[str, Any]]]]:
        """Yield ``(frame, annotated, predictions)`` for ``count`` frames."""
        for _ in range(count):
            frame = self._background.copy()
            predictions = []
            for shape in self._shapes:
                self._move(shape)
                x0, y0 = int(shape.x), int(shape.y)
                frame[y0 : y0 + shape.h, x0 : x0 + shape.w] = _SHAPE_COLOURS[shape.kind]
                predictions.append(
                    {
                        "x": x0 + shape.w / 2,
                        "y": y0 + shape.h / 2,
                        "width": float(shape.w),
                        "height": float(shape.h),
                        "confidence": 0.99,
                        "class": _SHAPE_CLASSES[shape.kind],
                    }
                )
            yield frame, self._annotate(frame, predictions), predictions

    def _move(self, shape: _Shape) -> None:
        shape.x += shape.vx
        shape.y += shape.vy
        if not 0 <= shape.x <= self.width - shape.w:
            shape.vx = -shape.vx
            shape.x = min(max(shape.x, 0), self.width - shape.w)
        if not 0 <= shape.y <= self.height - shape.h:
            shape.vy = -shape.vy
            shape.y = min(max(shape.y, 0), self.height - shape.h)

    @staticmethod
    def _annotate(frame: npt.NDArray[np.uint8], predictions: list[dict[str, Any]]) -> npt.NDArray[np.uint8]:
        out: npt.NDArray[np.uint8] = frame.copy()  # some numpy stubs type copy() as Any
        for p in predictions:
            x0, y0 = int(p["x"] - p["width"] / 2), int(p["y"] - p["height"] / 2)
            x1, y1 = x0 + int(p["width"]) - 1, y0 + int(p["height"]) - 1
            out[y0 : y1 + 1, (x0, x1)] = _BOX_COLOUR
            out[(y0, y1), x0 : x1 + 1] = _BOX_COLOUR
        return out


def _event_for(index: int, predictions: list[dict[str, Any]]) -> Event:
    metadata = {"camera": "demo-cam-1", "frame": index}
    kind = index % 4
    if kind == 0:
        return Event.quality_check(
            result="pass" if len(predictions) < 6 else "fail", external_id=f"frame-{index}", custom_metadata=metadata
        )
    if kind == 1:
        return Event.inventory_count(
            location="aisle-7", item_count=len(predictions), item_type="mixed", custom_metadata=metadata
        )
    if kind == 2:
        return Event.safety_alert(
            alert_type="zone_intrusion", severity="medium", description="shape entered zone", custom_metadata=metadata
        )
    return Event.custom(value=f"{len(predictions)} shapes tracked", custom_metadata=metadata)


@dataclass
class DemoSummary:
    """What the demo did, for the CLI to print."""

    events: int
    acknowledged: list[str]
    failures: dict[str, int]
    seconds: float
    stats: dict[str, Any]

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def run_demo(
    writer: EventWriter,
    *,
    frames: int = 300,
    width: int = 1280,
    height: int = 720,
    fps: float = 0.0,
    on_progress: Callable[[int, int, float], None] | None = None,
) -> DemoSummary:
    """Send one fire-and-forget event per synthetic frame, then flush; ``fps`` 0 is full speed.

    ``on_progress(done, failed, elapsed)`` is called as results arrive.
    """
    video = SyntheticVideo(width, height)
    futures: list[Future[Result]] = []
    interval = 1.0 / fps if fps > 0 else 0.0
    started = time.perf_counter()
    for index, (frame, annotated, predictions) in enumerate(video.frames(frames)):
        if interval:
            delay = started + index * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        # The generator hands over fresh arrays each frame, so no defensive copy is needed.
        futures.append(
            writer.submit(
                _event_for(index, predictions),
                annotated,
                input_image=frame,
                label="demo",
                object_detections=predictions,
                copy=False,
            )
        )
        if on_progress is not None and index % 10 == 0:
            on_progress(*_progress(writer), time.perf_counter() - started)
    while writer.flush(timeout=0.25):
        if on_progress is not None:
            on_progress(*_progress(writer), time.perf_counter() - started)
    seconds = time.perf_counter() - started
    if on_progress is not None:
        on_progress(*_progress(writer), seconds)
    results = [f.result() for f in futures]
    failures: dict[str, int] = {}
    for result in results:
        if result.error_status:
            failures[result.message] = failures.get(result.message, 0) + 1
    return DemoSummary(
        events=len(results),
        acknowledged=[r.event_id for r in results if not r.error_status],
        failures=failures,
        seconds=seconds,
        stats=writer.stats(),
    )


def _progress(writer: EventWriter) -> tuple[int, int]:
    stats = writer.stats()
    unsuccessful = stats["failed"] + stats["dropped"]
    return stats["sent"] + unsuccessful, unsuccessful
