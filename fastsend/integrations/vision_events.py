"""Roboflow's Vision Events, as its workflow blocks build them: event data, annotations, the two bodies.

What ``roboflow_core/roboflow_vision_events@v1`` and ``roboflow_core/vision_event_bundle@v1`` put in an
event, rebuilt here so that fastsend's blocks send the same content through fastsend's writers:

- ``vision_event_data``: the per-type fields, camelCase, None dropped;
- ``predictions_to_annotations``: one ``predictions`` input of any kind (Detections of boxes,
  segmentations or keypoints; a classification dict) → the annotation lists of the image entry;
- ``prepare_local_event``: the local event store's ``/v2/events`` body (``solution``, label
  ``"workflow"``, ``images: []`` when there is no image);
- ``prepare_cloud_event``: the Vision Events API's event and its uploads (see ``fastsend.send.cloud``).

Nothing here imports inference; OpenCV is needed only for predictions that carry masks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from fastsend.events import Event
from fastsend.imaging.jpeg import ImageSource, prepare_image
from fastsend.send.cloud import INPUT_QUALITY, INPUT_SOURCE_KEY, OUTPUT_QUALITY, OUTPUT_SOURCE_KEY, cloud_envelope
from fastsend.send.prepare import PreparedEvent, new_idempotency_key
from fastsend.send.wire import INPUT_IMAGE_KEY, OUTPUT_IMAGE_KEY, build_envelope

__all__ = [
    "VISION_EVENT_TYPES",
    "WORKFLOW_LABEL",
    "predictions_to_annotations",
    "prepare_cloud_event",
    "prepare_local_event",
    "vision_event",
    "vision_event_data",
]

VISION_EVENT_TYPES = ("quality_check", "inventory_count", "safety_alert", "custom", "operator_feedback")
WORKFLOW_LABEL = "workflow"  # the label of the one image entry
MIN_POLYGON_POINTS = 3
_KEYPOINT_PADDING = ""  # the class name of a padding slot in keypoints_class_name

# event type -> (block parameter, wire name), in the order Roboflow's block writes them.
_EVENT_FIELDS: dict[str, tuple[tuple[str, str], ...]] = {
    "quality_check": (("qc_result", "result"), ("external_id", "externalId")),
    "inventory_count": (
        ("location", "location"), ("item_count", "itemCount"), ("item_type", "itemType"), ("external_id", "externalId"),
    ),
    "safety_alert": (
        ("alert_type", "alertType"), ("severity", "severity"), ("alert_description", "description"),
        ("external_id", "externalId"),
    ),
    "custom": (("custom_value", "value"), ("external_id", "externalId")),
    "operator_feedback": (("related_event_id", "relatedEventId"), ("feedback", "feedback")),
}  # fmt: skip
EVENT_FIELD_PARAMETERS = frozenset(parameter for fields in _EVENT_FIELDS.values() for parameter, _ in fields)


def vision_event_data(event_type: str, fields: Mapping[str, Any]) -> dict[str, Any]:
    """``eventData`` for ``event_type`` from the block's parameters: camelCase, None values dropped.

    Parameters of other types are ignored, as Roboflow's block ignores them.
    """
    pairs = _EVENT_FIELDS.get(event_type, ())
    return {wire: fields[name] for name, wire in pairs if fields.get(name) is not None}


def vision_event(
    event_type: Any, solution: Any, fields: Mapping[str, Any], custom_metadata: Mapping[str, Any] | None
) -> Event:
    """The validated event: ``ValidationError`` names what the service would refuse."""
    metadata = dict(custom_metadata) if custom_metadata else None
    return Event(event_type, vision_event_data(event_type, fields), custom_metadata=metadata, solution=solution)


# ---------------------------------------------------------------- annotations


def predictions_to_annotations(predictions: Any) -> dict[str, list[dict[str, Any]]]:
    """The non-empty annotation lists (objectDetections, classifications, instanceSegmentations, keypoints).

    Detections are sorted by what they carry: keypoints, else masks or polygons (or a
    ``prediction_type`` naming segmentation), else boxes. A segmentation without a polygon of at
    least 3 points goes to ``objectDetections``. Boxes are centre x/y, width, height in pixels;
    confidence is clamped to [0, 1].
    """
    lists: dict[str, list[dict[str, Any]]] = {
        "objectDetections": [], "classifications": [], "instanceSegmentations": [], "keypoints": [],
    }  # fmt: skip
    if predictions is None:
        return {}
    if isinstance(predictions, dict):
        lists["classifications"] = _classifications(predictions)
    elif _is_detections(predictions) and len(predictions) > 0:
        _add_detections(predictions, lists)
    return {key: items for key, items in lists.items() if items}


def _is_detections(value: Any) -> bool:
    return all(hasattr(value, name) for name in ("xyxy", "confidence", "data", "mask"))


def _detection_kind(detections: Any) -> str:
    data = detections.data
    if "keypoints_xy" in data:
        return "keypoints"
    if detections.mask is not None or "polygon" in data:
        return "instanceSegmentations"
    prediction_type = data.get("prediction_type")
    if prediction_type is not None and len(prediction_type) > 0:
        named = str(prediction_type[0])
        if "segmentation" in named:
            return "instanceSegmentations"
        if "keypoint" in named:
            return "keypoints"
    return "objectDetections"


def _add_detections(detections: Any, lists: dict[str, list[dict[str, Any]]]) -> None:
    kind = _detection_kind(detections)
    data = detections.data
    for index in range(len(detections)):
        row = {key: values[index] for key, values in data.items()}
        box = _box(detections.xyxy[index], None if detections.confidence is None else detections.confidence[index], row)
        if kind == "keypoints":
            lists["keypoints"].append(_with_keypoints(box, row))
        elif kind == "instanceSegmentations":
            mask = None if detections.mask is None else detections.mask[index]
            polygon = _polygon_of(row.get("polygon"), mask)
            if polygon is not None and len(polygon) >= MIN_POLYGON_POINTS:
                points = [[float(point[0]), float(point[1])] for point in polygon]
                lists["instanceSegmentations"].append({**box, "points": points})
            else:
                lists["objectDetections"].append(box)
        else:
            lists["objectDetections"].append(box)


def _box(xyxy: Any, confidence: Any, row: Mapping[str, Any]) -> dict[str, Any]:
    x1, y1, x2, y2 = np.asarray(xyxy).astype(float).tolist()
    width, height = abs(x2 - x1), abs(y2 - y1)
    score = float(confidence) if confidence is not None else 0.0
    return {
        "class": str(row.get("class_name", "unknown")),
        "x": x1 + width / 2,
        "y": y1 + height / 2,
        "width": width,
        "height": height,
        "confidence": max(0.0, min(1.0, score)),
    }


def _with_keypoints(box: dict[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    entry = dict(box)
    xy, ids, names = row.get("keypoints_xy"), row.get("keypoints_class_id"), row.get("keypoints_class_name")
    if xy is None or len(xy) == 0:
        return entry
    count = len(xy) if names is None else sum(1 for name in names if str(name) != _KEYPOINT_PADDING)
    entry["keypoints"] = [
        {"id": int(ids[i]) if ids is not None and i < len(ids) else i, "x": float(x), "y": float(y)}
        for i, (x, y) in enumerate(xy[:count])
    ]
    return entry


def _polygon_of(polygon: Any, mask: Any) -> Any:
    if polygon is None and mask is not None:
        return _mask_polygon(mask)
    if isinstance(polygon, np.ndarray):
        return polygon.astype(float).tolist()
    return polygon


def _mask_polygon(mask: Any) -> Any:
    """The largest contour of a mask, padded to 3 points by repeating its last (None when there is none)."""
    import cv2

    contours, _ = cv2.findContours(np.asarray(mask).astype(np.uint8), cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    if len(contours) == 0:
        return None
    contour = np.squeeze(max(contours, key=cv2.contourArea), axis=1)
    if contour.ndim == 1:
        contour = np.expand_dims(contour, axis=0)
    missing = max(MIN_POLYGON_POINTS - contour.shape[0], 0)
    if missing:
        contour = np.append(contour, np.repeat(contour[-1:], missing, axis=0), axis=0)
    return contour


def _classifications(prediction: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Multi-label (``predicted_classes``), multi-class (a ``predictions`` list or dict), or ``top``."""
    found: list[dict[str, Any]] = []
    predicted = prediction.get("predicted_classes")
    scores = prediction.get("predictions")
    if isinstance(predicted, list):
        for name in predicted:
            confidence = (
                float(scores[name].get("confidence", 0.0)) if isinstance(scores, dict) and name in scores else 0.0
            )
            found.append({"class": str(name), "confidence": confidence})
        if found:
            return found
    scores = prediction.get("predictions", [])
    if isinstance(scores, list):
        for item in scores:
            name = item.get("class_name", item.get("class", "unknown"))
            found.append({"class": str(name), "confidence": float(item.get("confidence", 0.0))})
    elif isinstance(scores, dict):
        for name, details in scores.items():
            if isinstance(details, dict):
                confidence = float(details.get("confidence", 0.0))
            else:
                confidence = float(details) if isinstance(details, (int, float)) else 0.0
            found.append({"class": str(name), "confidence": confidence})
    if not found and "top" in prediction:
        found.append({"class": str(prediction["top"]), "confidence": float(prediction.get("confidence", 0.0))})
    return found


# ---------------------------------------------------------------- the two bodies


def prepare_local_event(
    event: Event,
    *,
    output_image: Any,
    input_image: Any,
    annotations: Mapping[str, list[dict[str, Any]]],
    copy: bool = True,
) -> PreparedEvent:
    """The local event store's event: one entry with whichever images there are, or ``images: []``."""
    output = None if output_image is None else prepare_image(output_image, field="output_image", copy=copy)
    if input_image is None:
        source = None
    elif input_image is output_image:
        source = output
    else:
        source = prepare_image(input_image, field="input_image", copy=copy)
    if output is None and source is None:
        envelope = build_envelope(event, first_image=None)
    elif output is None:
        envelope = build_envelope(event, label=WORKFLOW_LABEL, annotations=annotations, first_image=INPUT_IMAGE_KEY)
        output, source = source, None
    else:
        envelope = build_envelope(event, label=WORKFLOW_LABEL, annotations=annotations, first_image=OUTPUT_IMAGE_KEY)
    return PreparedEvent(event, envelope, output, source, new_idempotency_key())


def prepare_cloud_event(
    event: Event,
    *,
    output_image: Any,
    input_image: Any,
    annotations: Mapping[str, list[dict[str, Any]]],
    copy: bool = True,
    event_id: str | None = None,
    reencode: bool = True,
) -> PreparedEvent:
    """The Vision Events API's event and its uploads: output image at quality 85, input at 95.

    Its ``eventId`` (drawn here unless given) is its idempotency key. An image that arrived
    encoded is encoded again at its quality, as Roboflow's block does, unless ``reencode`` is
    False (a bundle's JPEGs, already at those qualities).
    """
    event_id = event_id or new_idempotency_key()
    images: list[tuple[str, ImageSource]] = []
    if output_image is not None:
        quality = OUTPUT_QUALITY if reencode else None
        images.append((OUTPUT_SOURCE_KEY, _at_quality(output_image, "output_image", quality, copy)))
    if input_image is not None:
        # The same image for both is taken twice: each copy is encoded at its own quality.
        quality = INPUT_QUALITY if reencode else None
        images.append((INPUT_SOURCE_KEY, _at_quality(input_image, "input_image", quality, copy)))
    body: dict[str, Any] = {
        "eventId": event_id,
        "eventType": event.schema,
        "useCaseId": event.solution,
        "timestamp": event.inference_timestamp,
        "images": [{"label": WORKFLOW_LABEL, **annotations}] if images else [],
    }
    if event.data:
        body["eventData"] = event.data
    if event.custom_metadata:
        body["customMetadata"] = event.custom_metadata
    if images:
        body["displayImagePosition"] = 0
    envelope = cloud_envelope(body, [key for key, _ in images])
    first = images[0][1] if images else None
    second = images[1][1] if len(images) > 1 else None
    return PreparedEvent(event, envelope, first, second, event_id)


def _at_quality(image: Any, field: str, quality: int | None, copy: bool) -> ImageSource:
    return dataclasses.replace(prepare_image(image, field=field, copy=copy), quality=quality)
