"""Inputs shared by the Vision Events parity tests: frames, every prediction kind, workflows of both blocks.

Roboflow's blocks and fastsend's run as steps of one workflow on the same inputs; each step names itself
in ``custom_metadata`` so that what one sent can be paired with what the other sent.
"""

from __future__ import annotations

import base64
from typing import Any

import cv2
import numpy as np
import supervision as sv

__all__ = [
    "EVENT_FIELDS",
    "EVENT_TYPES",
    "IMAGE_COMBINATIONS",
    "INPUTS",
    "PREDICTION_INPUTS",
    "decoded",
    "frames",
    "jpeg_of",
    "runtime",
    "vision_step",
    "workflow",
]

HEIGHT, WIDTH = 48, 64
EVENT_TYPES = ("quality_check", "inventory_count", "safety_alert", "custom", "operator_feedback")
EVENT_FIELDS: dict[str, dict[str, Any]] = {
    "quality_check": {"qc_result": "fail", "external_id": "$inputs.tag"},
    "inventory_count": {"location": "dock 4", "item_count": 12, "item_type": "pallet", "external_id": "$inputs.tag"},
    "safety_alert": {"alert_type": "no_helmet", "severity": "high", "alert_description": "worker without helmet"},
    "custom": {"custom_value": "anything at all", "external_id": "$inputs.tag"},
    "operator_feedback": {"related_event_id": "evt-1", "feedback": "incorrect"},
}
# (output image, input image) selectors: none, one, the other, both.
IMAGE_COMBINATIONS: dict[str, dict[str, str]] = {
    "none": {},
    "output": {"output_image": "$inputs.image"},
    "input": {"input_image": "$inputs.frame"},
    "both": {"output_image": "$inputs.image", "input_image": "$inputs.frame"},
}
PREDICTION_INPUTS = ("boxes", "masks", "bare_segments", "poses", "classes")

INPUTS: list[dict[str, Any]] = [
    {"type": "WorkflowImage", "name": "image"},
    {"type": "WorkflowImage", "name": "frame"},
    {"type": "WorkflowParameter", "name": "url"},
    {"type": "WorkflowParameter", "name": "tag"},
    {"type": "WorkflowParameter", "name": "directory"},
    {"type": "WorkflowBatchInput", "name": "boxes", "kind": ["object_detection_prediction"]},
    {"type": "WorkflowBatchInput", "name": "masks", "kind": ["instance_segmentation_prediction"]},
    {"type": "WorkflowBatchInput", "name": "bare_segments", "kind": ["instance_segmentation_prediction"]},
    {"type": "WorkflowBatchInput", "name": "poses", "kind": ["keypoint_detection_prediction"]},
    {"type": "WorkflowBatchInput", "name": "classes", "kind": ["classification_prediction"]},
]


def vision_step(
    name: str, block: str, event_type: str, images: str, predictions: str | None, **extra: Any
) -> dict[str, Any]:
    step = {
        "type": block,
        "name": name,
        "event_type": event_type,
        "solution": "line-7",
        "custom_metadata": {"pair": name.split("_", 1)[1], "run": "$inputs.tag"},
        "cooldown_seconds": 0,
        "fire_and_forget": False,
        **EVENT_FIELDS[event_type],
        **IMAGE_COMBINATIONS[images],
        **extra,
    }
    if predictions is not None:
        step["predictions"] = f"$inputs.{predictions}"
    return step


def workflow(*steps: dict[str, Any]) -> dict[str, Any]:
    outputs = [{"type": "JsonField", "name": s["name"], "selector": f"$steps.{s['name']}.*"} for s in steps]
    return {"version": "1.0", "inputs": INPUTS, "steps": list(steps), "outputs": outputs}


def frames() -> list[np.ndarray]:
    rows = np.linspace(0, 255, HEIGHT, dtype=np.uint8)[:, None, None]
    cols = np.linspace(0, 255, WIDTH, dtype=np.uint8)[None, :, None]
    first = np.broadcast_to(rows // 2 + cols // 2, (HEIGHT, WIDTH, 3)).copy()
    second = first[::-1].copy()
    second[..., 2] = 200
    return [first, second]


def jpeg_of(frame: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return bytes(encoded)


def decoded(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def _detections(**data: Any) -> sv.Detections:
    found = sv.Detections(
        xyxy=np.array([[5.0, 5.0, 30.0, 20.0], [30.0, 25.0, 60.0, 40.0]]),
        confidence=np.array([0.9, 1.2]),  # the second is clamped to 1
        class_id=np.array([0, 1]),
        mask=data.pop("mask", None),
        data={"class_name": np.array(["scratch", "dent"])},
    )
    found.data.update(data)
    return found


def predictions() -> dict[str, Any]:
    """One value of every kind: boxes, masks, a segmentation with neither mask nor polygon, poses, classes."""
    mask = np.zeros((2, HEIGHT, WIDTH), dtype=bool)
    mask[0, 5:20, 5:30] = True
    mask[1, 25:40, 30:60] = True
    poses = _detections(
        keypoints_xy=np.array([[[6.0, 7.0], [8.0, 9.0], [0.0, 0.0]], [[31.0, 26.0], [40.0, 30.0], [50.0, 35.0]]]),
        keypoints_class_id=np.array([[0, 1, 0], [0, 1, 2]]),
        keypoints_class_name=np.array([["nose", "eye", ""], ["nose", "eye", "ear"]]),
        keypoints_confidence=np.array([[0.9, 0.8, 0.0], [0.7, 0.6, 0.5]]),
    )
    classes = {
        "image": {"width": WIDTH, "height": HEIGHT},
        "predictions": [
            {"class": "ok", "class_id": 0, "confidence": 0.8},
            {"class": "bad", "class_id": 1, "confidence": 0.2},
        ],
        "top": "ok",
        "confidence": 0.8,
    }
    return {
        "boxes": _detections(),
        "masks": _detections(mask=mask),
        "bare_segments": _detections(prediction_type=np.array(["instance-segmentation"] * 2)),
        "poses": poses,
        "classes": classes,
    }


def runtime(tag: str, *, url: str = "", directory: str = "", batch: int = 2) -> dict[str, Any]:
    """Two images: a numpy frame, and a JPEG that arrives as base64 (as through the HTTP API)."""
    first, second = frames()
    images: list[Any] = [first, {"type": "base64", "value": base64.b64encode(jpeg_of(second)).decode()}][:batch]
    made = [predictions() for _ in range(batch)]
    return {
        "image": images,
        "frame": [first, second][:batch],
        "url": url,
        "tag": tag,
        "directory": directory,
        **{name: [m[name] for m in made] for name in PREDICTION_INPUTS},
    }
