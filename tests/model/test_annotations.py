"""Predictions → annotation lists, checked against real supervision Detections and a
per-detection reference written here the way the reference block computes it."""

from __future__ import annotations

import math
import sys
from typing import Any

import cv2
import numpy as np
import pytest
import supervision as sv
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fastsend import (
    ValidationError,
    classifications_to_wire,
    instance_segmentations_to_wire,
    keypoints_to_wire,
    object_detections_to_wire,
)
from fastsend.annotations import PYTHON_BOXES_UP_TO

CONVERTERS = [object_detections_to_wire, instance_segmentations_to_wire, keypoints_to_wire, classifications_to_wire]


# ---------------------------------------------------------------- the reference, one detection at a time


def reference_box(detections: sv.Detections, i: int) -> dict[str, Any]:
    names = detections.data.get("class_name", [])
    x1, y1, x2, y2 = detections.xyxy[i]
    return {
        "class": str(names[i]) if i < len(names) else "unknown",
        "x": float((x1 + x2) / 2),
        "y": float((y1 + y2) / 2),
        "width": float(x2 - x1),
        "height": float(y2 - y1),
        "confidence": float(detections.confidence[i]) if detections.confidence is not None else 0.0,
    }


def reference_boxes(detections: sv.Detections) -> list[dict[str, Any]]:
    return [reference_box(detections, i) for i in range(len(detections.xyxy))]


def reference_polygon(mask: np.ndarray) -> list[list[float]]:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return []
    largest = max(contours, key=cv2.contourArea)
    return [[float(point[0][0]), float(point[0][1])] for point in largest]


def detections(xyxy, confidence=None, class_name=None, **data) -> sv.Detections:
    xyxy = np.asarray(xyxy, dtype=np.float32).reshape(-1, 4)
    if class_name is not None:
        data["class_name"] = np.asarray(class_name)
    conf = None if confidence is None else np.asarray(confidence, dtype=np.float32)
    return sv.Detections(xyxy=xyxy, confidence=conf, data=data)


BOXES = [[10.3, 20.1, 50.7, 80.9], [0.1, 0.2, 0.7, 0.9], [100, 200, 101, 201]]


# ---------------------------------------------------------------- object detections


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_boxes_are_centre_based_like_the_reference(dtype):
    det = sv.Detections(
        xyxy=np.array(BOXES).astype(dtype),
        confidence=np.array([0.9, 0.25, 0.6], dtype=np.float32),
        data={"class_name": np.array(["car", "person", "dog"])},
    )
    wire = object_detections_to_wire(det)
    assert wire == reference_boxes(det)
    assert [entry["class"] for entry in wire] == ["car", "person", "dog"]
    assert all(type(value) is float for entry in wire for key, value in entry.items() if key != "class")


def test_empty_detections_give_empty_lists():
    for convert in CONVERTERS:
        assert convert(sv.Detections.empty()) == []


def test_missing_confidence_is_zero():
    det = detections(BOXES, class_name=["a", "b", "c"])
    assert det.confidence is None
    assert [entry["confidence"] for entry in object_detections_to_wire(det)] == [0.0, 0.0, 0.0]


def test_missing_class_names_are_unknown():
    det = detections(BOXES, confidence=[0.5, 0.5, 0.5])
    assert "class_name" not in det.data
    assert [entry["class"] for entry in object_detections_to_wire(det)] == ["unknown"] * 3


def test_a_short_class_name_list_leaves_the_rest_unknown():
    det = detections(BOXES, confidence=[0.5, 0.5, 0.5], class_name=["a", "b", "c"])
    det.data["class_name"] = np.array(["a"])  # shorter than the boxes, as a hand-built dict may be
    wire = object_detections_to_wire(det)
    assert wire == reference_boxes(det)
    assert [entry["class"] for entry in wire] == ["a", "unknown", "unknown"]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_coordinates_are_rejected(bad):
    det = sv.Detections(xyxy=np.array(BOXES, dtype=np.float64))
    det.xyxy[1, 2] = bad  # after construction: supervision itself refuses NaN boxes
    with pytest.raises(ValidationError) as info:
        object_detections_to_wire(det)
    assert info.value.field == "object_detections.xyxy"


def test_non_finite_confidence_is_rejected():
    det = detections(BOXES, confidence=[0.5, math.nan, 0.5])
    with pytest.raises(ValidationError) as info:
        object_detections_to_wire(det)
    assert info.value.field == "object_detections.confidence"


@pytest.mark.parametrize("count", [2, 4])
def test_a_confidence_per_box_is_required(count):
    det = detections(BOXES, confidence=[0.5, 0.5, 0.5])
    det.confidence = np.full(count, 0.5, np.float32)  # after construction: supervision checks the length itself
    with pytest.raises(ValidationError, match="one number per box") as info:
        object_detections_to_wire(det)
    assert info.value.field == "object_detections.confidence"


def test_the_field_name_is_the_callers():
    det = detections(BOXES)
    det.xyxy[0, 0] = np.nan
    with pytest.raises(ValidationError, match=r"^my_boxes\.xyxy"):
        object_detections_to_wire(det, field="my_boxes")


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(
    xyxy=st.integers(min_value=1, max_value=12).flatmap(
        lambda n: hnp.arrays(st.sampled_from([np.float32, np.float64]), (n, 4), elements=finite)
    ),
    with_confidence=st.booleans(),
    named=st.integers(min_value=0, max_value=12),
    seed=st.integers(min_value=0, max_value=2**16),
)
def test_property_boxes_equal_the_reference(xyxy, with_confidence, named, seed):
    rng = np.random.default_rng(seed)
    count = len(xyxy)
    confidence = rng.random(count).astype(np.float32) if with_confidence else None
    det = sv.Detections(xyxy=xyxy, confidence=confidence)
    det.data["class_name"] = np.array([f"c{i}" for i in range(min(named, count))], dtype=str)
    assert object_detections_to_wire(det) == reference_boxes(det)


def boxes_over_the_whole_range(dtype: Any) -> st.SearchStrategy[np.ndarray]:
    """Any finite value of ``dtype``: subnormals, and sums that overflow to infinity as in numpy."""
    width = np.dtype(dtype).itemsize * 8
    values = st.floats(width=width, allow_nan=False, allow_infinity=False)
    counts = st.sampled_from([1, 2, PYTHON_BOXES_UP_TO, PYTHON_BOXES_UP_TO + 1, 3 * PYTHON_BOXES_UP_TO])  # both paths
    return counts.flatmap(lambda n: hnp.arrays(dtype, (n, 4), elements=values))


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the reference's own float32 overflow
@settings(max_examples=150, deadline=None)
@given(xyxy=st.sampled_from([np.float16, np.float32, np.float64]).flatmap(boxes_over_the_whole_range))
@example(xyxy=np.array([[np.finfo(np.float32).smallest_subnormal, 0, 0, 0]], np.float32))  # half of it rounds to 0
@example(xyxy=np.array([[3e38, 3e38, 3e38, -3e38]], np.float32))  # float32 sums overflow to inf
def test_property_boxes_equal_the_reference_in_the_boxes_own_precision(xyxy):
    det = sv.Detections(xyxy=xyxy, confidence=np.full(len(xyxy), 0.5, np.float32))
    det.xyxy = xyxy  # supervision may have validated a copy; keep the exact array under test
    assert object_detections_to_wire(det) == reference_boxes(det)


# ---------------------------------------------------------------- inference prediction dicts


PREDICTIONS = {
    "predictions": [
        {"x": 30.5, "y": 50.5, "width": 40.4, "height": 60.8, "confidence": 0.91, "class": "car", "class_id": 2},
        {"x": 5, "y": 6, "width": 2, "height": 4, "class": "dog"},
        {"x": 1.0, "y": 2.0, "width": 3.0, "height": 4.0, "confidence": 0.5},
    ]
}


def test_inference_predictions_are_already_centre_based():
    expected = [
        {
            "class": p.get("class", "unknown"),
            "x": p["x"],
            "y": p["y"],
            "width": p["width"],
            "height": p["height"],
            "confidence": p.get("confidence", 0.0),
        }
        for p in PREDICTIONS["predictions"]
    ]
    assert object_detections_to_wire(PREDICTIONS) == expected
    assert object_detections_to_wire(PREDICTIONS["predictions"]) == expected
    assert object_detections_to_wire({"predictions": []}) == []


@pytest.mark.parametrize("key", ["x", "y", "width", "height"])
def test_inference_predictions_need_every_coordinate_and_the_error_names_the_index(key):
    good = dict(PREDICTIONS["predictions"][0])
    broken = {name: value for name, value in good.items() if name != key}
    with pytest.raises(ValidationError) as info:
        object_detections_to_wire({"predictions": [good, good, broken]})
    assert info.value.field == f"object_detections[2].{key}"
    assert (
        str(info.value)
        == f"object_detections[2].{key}: <missing> is required in every prediction (this one has {list(broken)})"
    )


def test_inference_predictions_with_nan_are_rejected():
    with pytest.raises(ValidationError, match="finite"):
        object_detections_to_wire([{"x": math.nan, "y": 1, "width": 1, "height": 1}])


@pytest.mark.parametrize("bad", ["predictions", 42, None, [1, 2], {"boxes": []}, b"bytes"])
def test_unrecognised_prediction_shapes_are_rejected(bad):
    for convert in (object_detections_to_wire, instance_segmentations_to_wire, keypoints_to_wire):
        with pytest.raises(ValidationError):
            convert(bad)


# ---------------------------------------------------------------- instance segmentation


def masks_scene() -> tuple[np.ndarray, np.ndarray]:
    """Four masks: two blobs (the larger must win), one plain box, one line, one empty."""
    masks = np.zeros((5, 60, 80), dtype=bool)
    masks[0, 5:15, 5:15] = True  # small blob
    cv2.circle(masks[0].view(np.uint8), (50, 35), 15, 1, -1)  # larger blob
    masks[1, 10:40, 20:30] = True
    masks[2, 30, 10:40] = True  # a line: a 2-point contour
    masks[3, 50, 50] = True  # one pixel: a 1-point contour
    # masks[4] stays empty: no contour at all
    xyxy = np.array([[5, 5, 65, 50], [20, 10, 30, 40], [10, 30, 40, 31], [50, 50, 51, 51], [0, 0, 1, 1]], np.float32)
    return masks, xyxy


def test_polygons_are_the_largest_external_contour_of_each_mask():
    masks, xyxy = masks_scene()
    det = sv.Detections(
        xyxy=xyxy,
        mask=masks,
        confidence=np.linspace(0.1, 0.9, 5, dtype=np.float32),
        data={"class_name": np.array(list("abcde"))},
    )
    expected = [
        dict(reference_box(det, i), points=polygon)
        for i, polygon in enumerate(reference_polygon(mask) for mask in masks)
        if len(polygon) >= 3
    ]
    wire = instance_segmentations_to_wire(det)
    assert wire == expected
    assert [entry["class"] for entry in wire] == ["a", "b"]  # line, pixel and empty mask dropped
    # the larger of mask 0's two blobs won: its centre lies inside the polygon
    assert cv2.pointPolygonTest(np.array(wire[0]["points"], np.float32), (50, 35), False) > 0


def test_polygons_from_data_are_used_as_given():
    masks, xyxy = masks_scene()
    polygons = np.empty(5, dtype=object)
    polygons[0] = np.array([[1, 1], [9, 1], [9, 9], [1, 9]])
    polygons[1] = np.array([[0.5, 0.5], [2.5, 0.5], [1.5, 2.25]])
    polygons[2] = np.array([[1, 1], [2, 2]])  # two points: dropped
    polygons[3] = np.zeros((0, 2))  # none: dropped
    polygons[4] = np.array([[3, 3], [4, 3], [4, 4]])
    det = sv.Detections(xyxy=xyxy, mask=masks, data={"polygon": polygons})
    wire = instance_segmentations_to_wire(det)
    assert [entry["points"] for entry in wire] == [polygons[i].astype(float).tolist() for i in (0, 1, 4)]
    assert [entry["x"] for entry in wire] == [reference_box(det, i)["x"] for i in (0, 1, 4)]


def test_polygons_from_data_need_no_opencv(monkeypatch):
    polygons = np.empty(1, dtype=object)
    polygons[0] = np.array([[0, 0], [4, 0], [4, 4]])
    det = sv.Detections(xyxy=np.array([[0, 0, 4, 4]], np.float32), data={"polygon": polygons})
    monkeypatch.setitem(sys.modules, "cv2", None)
    assert instance_segmentations_to_wire(det)[0]["points"] == [[0.0, 0.0], [4.0, 0.0], [4.0, 4.0]]


def test_a_mask_without_opencv_names_the_masks_extra(monkeypatch):
    masks, xyxy = masks_scene()
    det = sv.Detections(xyxy=xyxy, mask=masks)
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(ImportError, match=r"fastsend\[masks\]"):
        instance_segmentations_to_wire(det)


def test_detections_without_masks_or_polygons_are_refused_saying_what_is_missing():
    with pytest.raises(ValidationError) as info:
        instance_segmentations_to_wire(detections(BOXES, confidence=[1, 1, 1]))
    assert info.value.field == "instance_segmentations.mask"
    assert str(info.value) == (
        "instance_segmentations.mask: None is required: the detections carry neither a mask nor data['polygon']"
        " (boxes alone go in object_detections)"
    )
    assert "object_detections" in info.value.rule


def test_no_detections_need_no_masks():
    assert instance_segmentations_to_wire(sv.Detections.empty()) == []


def test_a_segmentation_prediction_without_points_is_refused_by_index():
    with_points = {"x": 3, "y": 4, "width": 1, "height": 1, "points": [{"x": 0, "y": 0}] * 3}
    without = {"x": 3, "y": 4, "width": 1, "height": 1, "class": "leaf"}
    for missing in (without, dict(without, points=None)):
        with pytest.raises(ValidationError) as info:
            instance_segmentations_to_wire({"predictions": [with_points, missing]})
        assert info.value.field == "instance_segmentations[1].points"
        assert "is required in every prediction" in str(info.value)


def test_nan_polygon_is_rejected():
    polygons = np.empty(1, dtype=object)
    polygons[0] = np.array([[0, 0], [4, np.nan], [4, 4]])
    det = sv.Detections(xyxy=np.array([[0, 0, 4, 4]], np.float32), data={"polygon": polygons})
    with pytest.raises(ValidationError) as info:
        instance_segmentations_to_wire(det)
    assert info.value.field == "instance_segmentations.polygon[0]"


def test_inference_segmentation_predictions():
    points = [{"x": 1.0, "y": 2.0}, {"x": 5.5, "y": 2.0}, {"x": 3.0, "y": 7.25}]
    predictions = {
        "predictions": [
            {"x": 3, "y": 4, "width": 4.5, "height": 5.25, "confidence": 0.7, "class": "leaf", "points": points},
            {"x": 3, "y": 4, "width": 1, "height": 1, "confidence": 0.7, "class": "speck", "points": points[:2]},
            {"x": 3, "y": 4, "width": 1, "height": 1, "confidence": 0.7, "class": "none", "points": []},
        ]
    }
    assert instance_segmentations_to_wire(predictions) == [
        {
            "class": "leaf",
            "x": 3.0,
            "y": 4.0,
            "width": 4.5,
            "height": 5.25,
            "confidence": 0.7,
            "points": [[p["x"], p["y"]] for p in points],
        }
    ]


def test_inference_segmentation_with_nan_point_is_rejected():
    points = [{"x": 1.0, "y": 2.0}, {"x": math.nan, "y": 2.0}, {"x": 3.0, "y": 7.25}]
    with pytest.raises(ValidationError) as info:
        instance_segmentations_to_wire([{"x": 3, "y": 4, "width": 1, "height": 1, "points": points}])
    assert info.value.field == "instance_segmentations[0].points"


# ---------------------------------------------------------------- keypoints


def keypoint_scene(with_names: bool = True) -> sv.Detections:
    xy = np.arange(3 * 4 * 2, dtype=np.float32).reshape(3, 4, 2) + 0.25
    data: dict[str, Any] = {"keypoints_xy": xy, "class_name": np.array(["person", "person", "ghost"])}
    if with_names:
        data["keypoints_class_name"] = np.array(
            [["nose", "eye", "", ""], ["nose", "eye", "ear", "hip"], ["", "", "", ""]]
        )
    return sv.Detections(xyxy=np.array(BOXES, np.float32), confidence=np.array([0.8, 0.7, 0.6], np.float32), data=data)


def test_keypoint_padding_slots_are_skipped_and_empty_detections_dropped():
    det = keypoint_scene()
    xy, names = det.data["keypoints_xy"], det.data["keypoints_class_name"]
    expected = []
    for i in range(len(det)):
        real = [{"id": j, "x": float(xy[i, j, 0]), "y": float(xy[i, j, 1])} for j in range(4) if names[i][j] != ""]
        if real:
            expected.append(dict(reference_box(det, i), keypoints=real))
    wire = keypoints_to_wire(det)
    assert wire == expected
    assert [len(entry["keypoints"]) for entry in wire] == [2, 4]


def test_without_keypoint_names_every_slot_is_real():
    det = keypoint_scene(with_names=False)
    xy = det.data["keypoints_xy"]
    assert keypoints_to_wire(det) == [
        dict(
            reference_box(det, i), keypoints=[{"id": j, "x": float(x), "y": float(y)} for j, (x, y) in enumerate(xy[i])]
        )
        for i in range(len(det))
    ]


def test_detections_without_keypoints_are_refused_saying_what_is_missing():
    with pytest.raises(ValidationError) as info:
        keypoints_to_wire(detections(BOXES, confidence=[1, 1, 1]))
    assert info.value.field == "keypoint_detections.keypoints_xy"
    assert "the detections carry no data['keypoints_xy']" in info.value.rule


def test_no_detections_need_no_keypoints():
    assert keypoints_to_wire(sv.Detections.empty()) == []


def test_a_keypoint_prediction_without_keypoints_is_refused_by_index():
    with pytest.raises(ValidationError) as info:
        keypoints_to_wire(
            [{"x": 10, "y": 20, "width": 4, "height": 8, "keypoints": []}, {"x": 1, "y": 1, "width": 1, "height": 1}]
        )
    assert info.value.field == "keypoint_detections[1].keypoints"


def test_nan_keypoint_is_rejected():
    det = keypoint_scene()
    det.data["keypoints_xy"][1, 2, 0] = np.nan
    with pytest.raises(ValidationError) as info:
        keypoints_to_wire(det)
    assert info.value.field == "keypoint_detections.keypoints_xy"


def test_inference_keypoint_predictions():
    keypoints = [
        {"x": 1.5, "y": 2.5, "confidence": 0.9, "class_id": 0, "class": "nose"},
        {"x": 3.0, "y": 4.0, "confidence": 0.8, "class_id": 3, "class": "ear"},
    ]
    predictions = {
        "predictions": [
            {"x": 10, "y": 20, "width": 4, "height": 8, "confidence": 0.6, "class": "person", "keypoints": keypoints},
            {"x": 10, "y": 20, "width": 4, "height": 8, "confidence": 0.6, "class": "nobody", "keypoints": []},
        ]
    }
    assert keypoints_to_wire(predictions) == [
        {
            "class": "person",
            "x": 10.0,
            "y": 20.0,
            "width": 4.0,
            "height": 8.0,
            "confidence": 0.6,
            "keypoints": [{"id": kp["class_id"], "x": kp["x"], "y": kp["y"]} for kp in keypoints],
        }
    ]


def test_inference_keypoints_with_nan_are_rejected():
    with pytest.raises(ValidationError):
        keypoints_to_wire([{"x": 1, "y": 1, "width": 1, "height": 1, "keypoints": [{"x": math.inf, "y": 0}]}])


# ---------------------------------------------------------------- classifications


@pytest.mark.parametrize(
    "predictions, expected",
    [
        ({"class_name": ["cat", "dog"], "confidence": [0.75, 0.25]}, [("cat", 0.75), ("dog", 0.25)]),
        ({"class_name": np.array(["cat"]), "confidence": np.array([0.5], np.float32)}, [("cat", 0.5)]),
        ({"class_name": ["cat", "dog"]}, [("cat", 0.0), ("dog", 0.0)]),
        ({"class_name": ["cat", "dog"], "confidence": None}, [("cat", 0.0), ("dog", 0.0)]),
        ({"class_name": ["cat", "dog"], "confidence": [0.5]}, [("cat", 0.5), ("dog", 0.0)]),
        ({"class_name": []}, []),
        (
            {
                "predictions": [
                    {"class": "cat", "class_id": 0, "confidence": 0.875},
                    {"class": "dog", "confidence": 0.125},
                ]
            },
            [("cat", 0.875), ("dog", 0.125)],
        ),
        ([{"class": "cat", "confidence": 0.5}, {"class": "dog"}], [("cat", 0.5), ("dog", 0.0)]),
        (
            {
                "predictions": {
                    "cat": {"confidence": 0.75, "class_id": 0},
                    "dog": {"confidence": 0.5},
                    "eel": {"confidence": 0.1},
                },
                "predicted_classes": ["dog", "cat"],
            },
            [("dog", 0.5), ("cat", 0.75)],
        ),
        ({"predictions": {"cat": {"confidence": 0.75}, "dog": {}}}, [("cat", 0.75), ("dog", 0.0)]),
        ({"top": "cat", "confidence": 0.625}, [("cat", 0.625)]),
        ({"top": "cat"}, [("cat", 0.0)]),
    ],
    ids=[
        "class_name-dict",
        "numpy-dict",
        "no-confidence",
        "null-confidence",
        "short-confidence",
        "empty",
        "inference-list",
        "bare-list",
        "multi-label",
        "multi-label-unfiltered",
        "top",
        "top-no-confidence",
    ],
)
def test_classification_shapes(predictions, expected):
    assert classifications_to_wire(predictions) == [{"class": name, "confidence": conf} for name, conf in expected]


def test_classifications_from_detections():
    det = detections(BOXES[:2], confidence=[0.5, 0.25], class_name=["cat", "dog"])
    assert classifications_to_wire(det) == [{"class": "cat", "confidence": 0.5}, {"class": "dog", "confidence": 0.25}]
    det = detections(BOXES[:2], class_name=["cat", "dog"])
    assert classifications_to_wire(det) == [{"class": "cat", "confidence": 0.0}, {"class": "dog", "confidence": 0.0}]


@pytest.mark.parametrize("bad", [math.nan, math.inf, "high"])
def test_classification_confidence_must_be_a_finite_number(bad):
    with pytest.raises(ValidationError) as info:
        classifications_to_wire({"class_name": ["cat"], "confidence": [bad]})
    assert info.value.field == "classifications.confidence"


@pytest.mark.parametrize("bad", ["cat", 3, None, [1, 2]])
def test_unrecognised_classification_shapes_are_rejected(bad):
    with pytest.raises(ValidationError) as info:
        classifications_to_wire(bad)
    assert info.value.field == "classifications"
