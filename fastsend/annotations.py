"""Predictions → the v2 annotation lists, with the reference block's numbers.

Accepted without importing supervision or inference:
- anything shaped like ``supervision.Detections`` (``xyxy``, ``confidence``,
  ``mask``, ``data``);
- inference's serialized predictions, ``{"predictions": [{x, y, width, height,
  confidence, class, points?, keypoints?}, …]}``, or that list alone;
- the classification shapes in ``classifications_to_wire``.

A frame's few float32/float64 boxes are converted in plain Python from one
``tolist()``: a dozen small numpy calls cost little in a tight loop but several
times more in a video loop, where each call starts with cold caches. Many boxes
go through numpy, which is cheaper per box.
"""

from __future__ import annotations

import math
from array import array as typed_array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from fastsend.events import ValidationError, validate_class_names

__all__ = [
    "classifications_to_wire",
    "instance_segmentations_to_wire",
    "keypoints_to_wire",
    "object_detections_to_wire",
]

UNKNOWN_CLASS = "unknown"
#: Up to this many boxes, plain Python beats numpy's per-call overhead (measured: ~15 warm, more when cold).
PYTHON_BOXES_UP_TO = 16
_MASKS_EXTRA_HINT = "tracing instance masks needs OpenCV: pip install 'fastsend[masks]'"

Wire = list[dict[str, Any]]
Boxes = Sequence[Sequence[float]]  # (centre x, centre y, width, height) rows


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


def _missing_key(prediction: Mapping[str, Any], field: str) -> ValidationError:
    return ValidationError(field, _MISSING, f"is required in every prediction (this one has {list(prediction)})")


def _required(prediction: Mapping[str, Any], key: str, field: str) -> Any:
    """``prediction[key]``, which must be there and not ``None``."""
    value = prediction.get(key)
    if value is None:
        raise _missing_key(prediction, field)
    return value


def _is_detections(obj: Any) -> bool:
    return hasattr(obj, "xyxy") and hasattr(obj, "data")


def _predictions_list(obj: Any, field: str) -> list[Mapping[str, Any]]:
    if isinstance(obj, Mapping) and "predictions" in obj:
        obj = obj["predictions"]
    if isinstance(obj, Sequence) and not isinstance(obj, (str, bytes)) and all(isinstance(p, Mapping) for p in obj):
        return list(obj)
    raise ValidationError(
        field, obj, "must be supervision-like Detections, {'predictions': [...]} or a list of prediction dicts"
    )


def _length(values: Any, field: str, rule: str) -> int:
    try:
        return len(values)
    except TypeError:  # a scalar, None, a 0-d array
        raise ValidationError(field, values, rule) from None


def _numbers(values: Any, field: str, shape: tuple[int, ...], dtype: Any = np.float64) -> npt.NDArray[np.floating[Any]]:
    try:
        return np.asarray(values, dtype=dtype).reshape(shape)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an int beyond float range
        raise ValidationError(field, values, "must be numbers") from None


def _not_finite(values: Any, field: str) -> ValidationError:
    return ValidationError(field, values, "must be finite numbers (no NaN or infinity)")


def _finite_column(values: Any, field: str, count: int, dtype: Any = np.float64) -> npt.NDArray[np.floating[Any]]:
    column = _numbers(values, field, (count, -1), dtype)
    if not np.isfinite(column).all():
        raise _not_finite(values, field)
    return column


def _finite_list(numbers: list[float], values: Any, field: str) -> list[float]:
    # NaN and infinities survive a sum; a sum that overflowed is checked term by term.
    if not math.isfinite(sum(numbers)) and not all(map(math.isfinite, numbers)):
        raise _not_finite(values, field)
    return numbers


def _float32(numbers: list[float]) -> list[float]:
    """Each value rounded to float32: what numpy's float32 arithmetic gives for the same operation.

    The sum or difference of two float32 values, taken in float64 and rounded once to
    float32, is exactly the float32 result (float64 has more than twice the digits).
    """
    return typed_array("f", numbers).tolist()


# ---------------------------------------------------------------- boxes


def _detections_boxes(detections: Any, field: str) -> tuple[list[str], Boxes, list[float]]:
    """Class names, ``[x, y, width, height]`` rows (centre-based) and confidences."""
    count = _length(detections.xyxy, f"{field}.xyxy", "must be N×4")
    if count == 0:
        return [], [], []
    # Float boxes keep their dtype: the reference computes in it (float32, usually).
    dtype = getattr(detections.xyxy, "dtype", None)
    dtype = dtype if dtype is not None and dtype.kind == "f" else np.float64
    xyxy = _numbers(detections.xyxy, f"{field}.xyxy", (count, -1), dtype)
    if xyxy.shape[1] != 4:
        raise ValidationError(f"{field}.xyxy", detections.xyxy, "must be N×4")
    if count <= PYTHON_BOXES_UP_TO and (dtype == np.float32 or dtype == np.float64):
        boxes = _centre_boxes(
            _finite_list(xyxy.ravel().tolist(), detections.xyxy, f"{field}.xyxy"), dtype == np.float32
        )
    else:  # numpy computes in the boxes' own precision, float16 and longdouble included
        if not np.isfinite(xyxy).all():
            raise _not_finite(detections.xyxy, f"{field}.xyxy")
        top_left, bottom_right = xyxy[:, :2], xyxy[:, 2:]
        boxes = np.concatenate(((top_left + bottom_right) / 2, bottom_right - top_left), axis=1).tolist()
    confidence = getattr(detections, "confidence", None)
    confidences = [0.0] * count if confidence is None else _confidences(confidence, f"{field}.confidence", count)
    names = (detections.data or {}).get("class_name")
    listed = [] if names is None else (names.tolist() if isinstance(names, np.ndarray) else list(names))[:count]
    # Like the reference: a detection past the end of the name list is "unknown".
    classes = [name if type(name) is str else str(name) for name in listed] + [UNKNOWN_CLASS] * (count - len(listed))
    validate_class_names(field, classes)
    return classes, boxes, confidences


def _confidences(confidence: Any, field: str, count: int) -> list[float]:
    numbers = _numbers(confidence, field, (-1,)).tolist()
    if len(numbers) != count:
        raise ValidationError(field, confidence, f"must be one number per box ({count})")
    return _finite_list(numbers, confidence, field)


def _centre_boxes(flat: list[float], in_float32: bool) -> Boxes:
    """``[x1, y1, x2, y2, …]`` → ``(centre x, centre y, width, height)`` rows."""
    coordinates = iter(flat)
    quads = list(zip(coordinates, coordinates, coordinates, coordinates, strict=True))
    if not in_float32:
        return [((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1) for x1, y1, x2, y2 in quads]
    sums = _float32([value for x1, y1, x2, y2 in quads for value in (x1 + x2, y1 + y2)])
    centres = iter(_float32([value / 2 for value in sums]))  # halving rounds only below float32's normal range
    sizes = iter(_float32([value for x1, y1, x2, y2 in quads for value in (x2 - x1, y2 - y1)]))
    return list(zip(centres, centres, sizes, sizes, strict=True))


def _prediction_boxes(predictions: list[Mapping[str, Any]], field: str) -> tuple[list[str], Boxes, list[float]]:
    if not predictions:
        return [], [], []
    try:
        rows = [(p["x"], p["y"], p["width"], p["height"], p.get("confidence", 0.0)) for p in predictions]
    except KeyError:
        # Found again, by index, only when one is missing: the loop above is the per-frame path.
        index, key = next(
            (i, k) for i, p in enumerate(predictions) for k in ("x", "y", "width", "height") if k not in p
        )
        raise _missing_key(predictions[index], f"{field}[{index}].{key}") from None
    numbers = _finite_column(rows, field, len(rows))
    classes = [str(p.get("class", UNKNOWN_CLASS)) for p in predictions]
    validate_class_names(field, classes)
    return classes, numbers[:, :4].tolist(), numbers[:, 4].tolist()


def _boxes_to_wire(classes: list[str], boxes: Boxes, confidences: list[float]) -> Wire:
    return [
        {"class": name, "x": x, "y": y, "width": w, "height": h, "confidence": conf}
        for name, (x, y, w, h), conf in zip(classes, boxes, confidences, strict=True)
    ]


def object_detections_to_wire(predictions: Any, field: str = "object_detections") -> Wire:
    """``[{class, x, y, width, height, confidence}]`` from Detections or inference predictions."""
    if _is_detections(predictions):
        return _boxes_to_wire(*_detections_boxes(predictions, field))
    return _boxes_to_wire(*_prediction_boxes(_predictions_list(predictions, field), field))


# ---------------------------------------------------------------- instance segmentation


def _largest_contour(mask: npt.NDArray[Any]) -> list[list[float]]:
    try:
        import cv2
    except ImportError:
        raise ImportError(_MASKS_EXTRA_HINT) from None
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    largest = max(contours, key=cv2.contourArea)
    return largest.reshape(-1, 2).astype(np.float64).tolist()


def _polygon(points: Any, field: str) -> list[list[float]]:
    try:
        array = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ValidationError(field, points, "must be a list of [x, y] points") from None
    if array.size == 0:
        return []
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValidationError(field, points, "must be a list of [x, y] points")
    if not np.isfinite(array).all():
        raise ValidationError(field, points, "must be finite numbers (no NaN or infinity)")
    rows: list[list[float]] = array.tolist()
    return rows


def instance_segmentations_to_wire(predictions: Any, field: str = "instance_segmentations") -> Wire:
    """Boxes plus ``points``: ``data["polygon"]`` as given, else the largest external contour of each mask.

    A detection whose polygon has fewer than 3 points is dropped. Boxes with nothing to
    outline them (Detections without ``mask`` or ``data["polygon"]``, a prediction
    without ``points``) are refused: they would vanish from the event.
    """
    if _is_detections(predictions):
        entries = _boxes_to_wire(*_detections_boxes(predictions, field))
        polygons = (predictions.data or {}).get("polygon")
        per_detection = "must be one polygon per detection"
        if polygons is not None and _length(polygons, f"{field}.polygon", per_detection) >= len(entries):
            points = [_polygon(polygons[i], f"{field}.polygon[{i}]") for i in range(len(entries))]
        elif getattr(predictions, "mask", None) is not None:
            points = [_largest_contour(mask) for mask in predictions.mask]
        elif entries:  # boxes with nothing to outline: they would vanish from the event
            rule = "is required: the detections carry neither a mask nor data['polygon']"
            raise ValidationError(f"{field}.mask", None, f"{rule} (boxes alone go in object_detections)")
        else:
            points = []
    else:
        listed = _predictions_list(predictions, field)
        entries = _boxes_to_wire(*_prediction_boxes(listed, field))
        points = [
            _prediction_polygon(_required(p, "points", f"{field}[{i}].points"), f"{field}[{i}].points")
            for i, p in enumerate(listed)
        ]
    # Masks pair with boxes up to the shorter of the two.
    return [dict(entry, points=polygon) for entry, polygon in zip(entries, points, strict=False) if len(polygon) >= 3]


def _prediction_polygon(points: Any, field: str) -> list[list[float]]:
    try:
        pairs = [(pt["x"], pt["y"]) for pt in (() if points is None else points)]
    except (KeyError, TypeError, IndexError):
        raise ValidationError(field, points, "must be a list of {x, y} dicts") from None
    return _polygon(pairs, field)


# ---------------------------------------------------------------- keypoints


def _real_keypoint_count(names: Any, slots: int) -> int:
    if names is None:
        return slots
    padding = [i for i, name in enumerate(list(names)[:slots]) if name == ""]
    return padding[0] if padding else min(slots, len(names))


def keypoints_to_wire(predictions: Any, field: str = "keypoint_detections") -> Wire:
    """Boxes plus ``keypoints: [{id, x, y}]``; padding slots skipped, detections with none dropped.

    Boxes without keypoints at all (Detections without ``data["keypoints_xy"]``, a
    prediction without ``keypoints``) are refused: they would vanish from the event.
    """
    if _is_detections(predictions):
        entries = _boxes_to_wire(*_detections_boxes(predictions, field))
        data = predictions.data or {}
        if not entries:
            return []
        xy = data.get("keypoints_xy")
        if xy is None:  # boxes without keypoints: they would vanish from the event
            rule = "is required: the detections carry no data['keypoints_xy']"
            raise ValidationError(f"{field}.keypoints_xy", None, f"{rule} (boxes alone go in object_detections)")
        xy = _finite_column(xy, f"{field}.keypoints_xy", len(entries))
        if xy.shape[1] % 2:
            raise ValidationError(f"{field}.keypoints_xy", data.get("keypoints_xy"), "must be N×K×2")
        xy = xy.reshape(len(entries), -1, 2)
        names = data.get("keypoints_class_name")
        # A detection past the end of the name rows keeps all its slots.
        names = [] if names is None else list(names)
        slots = [_real_keypoint_count(names[i] if i < len(names) else None, xy.shape[1]) for i in range(len(entries))]
        keypoint_lists: Iterable[list[dict[str, Any]]] = (
            [{"id": j, "x": x, "y": y} for j, (x, y) in enumerate(xy[i, : slots[i]].tolist())]
            for i in range(len(entries))
        )
    else:
        listed = _predictions_list(predictions, field)
        entries = _boxes_to_wire(*_prediction_boxes(listed, field))
        keypoint_lists = (
            _prediction_keypoints(_required(p, "keypoints", f"{field}[{i}].keypoints"), f"{field}[{i}].keypoints")
            for i, p in enumerate(listed)
        )
    return [dict(entry, keypoints=points) for entry, points in zip(entries, keypoint_lists, strict=True) if points]


def _prediction_keypoints(keypoints: Iterable[Mapping[str, Any]] | None, field: str) -> list[dict[str, Any]]:
    try:
        keypoints = list(keypoints if keypoints is not None else ())
        rows = [(kp["x"], kp["y"]) for kp in keypoints]
        ids = [int(kp.get("class_id", j)) for j, kp in enumerate(keypoints)]
    except (KeyError, TypeError, IndexError, AttributeError, ValueError, OverflowError):
        raise ValidationError(field, keypoints, "must be a list of {x, y, class_id?} dicts") from None
    if any(keypoint_id < 0 for keypoint_id in ids):
        raise ValidationError(f"{field}.class_id", ids, "must be integers ≥ 0")
    xy = _finite_column(rows, field, len(rows)).tolist() if rows else []
    return [{"id": keypoint_id, "x": x, "y": y} for keypoint_id, (x, y) in zip(ids, xy, strict=True)]


# ---------------------------------------------------------------- classification


def _classification_pairs(predictions: Any, field: str) -> tuple[list[Any], list[Any]]:
    if _is_detections(predictions):
        names = (predictions.data or {}).get("class_name")
        names = [] if names is None else list(names)
        confidence = getattr(predictions, "confidence", None)
        return names, [0.0] * len(names) if confidence is None else list(confidence)[: len(names)]
    if isinstance(predictions, Mapping):
        if "class_name" in predictions:
            names = list(predictions["class_name"])
            confidences = predictions.get("confidence")
            return names, [0.0] * len(names) if confidences is None else list(confidences)
        inner = predictions.get("predictions")
        if isinstance(inner, Mapping):  # multi-label: {name: {"confidence": c}}
            chosen = predictions.get("predicted_classes")
            items = (
                [(name, inner[name]) for name in chosen if name in inner] if chosen is not None else list(inner.items())
            )
            return [name for name, _ in items], [value.get("confidence", 0.0) for _, value in items]
        if inner is not None:
            return _classification_pairs(inner, field)
        if "top" in predictions:
            return [predictions["top"]], [predictions.get("confidence", 0.0)]
    if isinstance(predictions, Sequence) and not isinstance(predictions, (str, bytes)):
        if all(isinstance(p, Mapping) for p in predictions):
            return [p.get("class", UNKNOWN_CLASS) for p in predictions], [p.get("confidence", 0.0) for p in predictions]
    raise ValidationError(
        field,
        predictions,
        "must be {'class_name': [...], 'confidence': [...]}, inference classification output or Detections",
    )


def classifications_to_wire(predictions: Any, field: str = "classifications") -> Wire:
    """``[{class, confidence}]`` from a class-name dict, inference classification output or Detections."""
    try:
        names, confidences = _classification_pairs(predictions, field)
    except (TypeError, AttributeError):  # a shape that looked right but is not: a scalar class_name, a non-dict entry
        raise ValidationError(field, predictions, "has the wrong shape for classification predictions") from None
    # Like the reference: a class without a confidence gets 0.0.
    confidences = list(confidences[: len(names)]) + [0.0] * (len(names) - len(confidences))
    values = _finite_column(confidences, f"{field}.confidence", len(names))[:, 0].tolist() if names else []
    classes = [str(name) for name in names]
    validate_class_names(field, classes)
    return [{"class": name, "confidence": conf} for name, conf in zip(classes, values, strict=True)]
