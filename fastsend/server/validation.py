"""The rules for a ``POST /v2/events`` body, on top of :mod:`fastsend.events`.

``fastsend.events`` owns the schema, ``event_data``, ``custom_metadata``,
timestamp and ``solution`` rules, so a body the library builds is one the
service accepts; this module adds the envelope: the exact top-level keys,
the image entry (at most one), its images and its annotation lists.

An event may carry no image (``images: []``, then no ``displayImagePosition``),
as the Vision Events block sends one made without images; an image entry holds
the output image, the input image, or both.
Everything is strict: unknown keys are rejected at every level, numbers must
be finite and not bools, and a list the client should have omitted (empty)
is an error. Every failure is a :class:`~fastsend.events.ValidationError`
naming the field, the value and the rule.

Some rules are the service's own, in :class:`BodyLimits`: an image may
declare at most ``max_image_pixels`` pixels (read from its header; nothing is
decoded), so no stored image is a decompression bomb for the viewer's
thumbnails; an annotation list may hold at most ``max_annotations``
annotations (1,000, as in Roboflow's bundle format), a polygon at most
``max_points`` points and a detection as many keypoints (1,000: a
simplified contour of a large object in a 4K frame fits), and the image
entry at most ``max_total_points`` points and keypoints in all (100,000), so
what its annotations cost once parsed stays within some 50 MB.
:mod:`.structure` holds a body to the same limits on its bytes before it is parsed.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pybase64
import simplejpeg

from fastsend.events import (
    INT64_MIN,
    UINT64_MAX,
    ValidationError,
    validate_custom_metadata,
    validate_event_data,
    validate_inference_timestamp,
    validate_solution,
    validate_text,
)
from fastsend.imaging.jpeg import check_image_file

__all__ = [
    "ANNOTATION_LISTS",
    "DEFAULT_MAX_ANNOTATIONS",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_POINTS",
    "DEFAULT_MAX_TOTAL_POINTS",
    "POINT_LISTS",
    "BodyLimits",
    "EventBody",
    "Image",
    "check_image",
    "check_keys",
    "display_image_position",
    "image_entry_details",
    "single_image_entry",
    "too_many",
    "too_many_points",
    "validate_body",
]

#: 50 megapixels: 8K video is 33; a 50 MP image takes 150 MB once decoded.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000
#: Annotations per list: what Roboflow's bundle format allows.
DEFAULT_MAX_ANNOTATIONS = 1000
#: Points per polygon, and keypoints per detection.
DEFAULT_MAX_POINTS = 1000
#: Polygon points and keypoints of a body in all.
DEFAULT_MAX_TOTAL_POINTS = 100_000


@dataclass(frozen=True, slots=True)
class BodyLimits:
    """The service's own limits on a body, each a service option of the same name."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_annotations: int = DEFAULT_MAX_ANNOTATIONS
    max_points: int = DEFAULT_MAX_POINTS
    max_total_points: int = DEFAULT_MAX_TOTAL_POINTS

    def __post_init__(self) -> None:
        for name in ("max_image_pixels", "max_annotations", "max_points", "max_total_points"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")


_REQUIRED_KEYS = ("inference_timestamp", "event_schema", "event_data", "images")
# displayImagePosition: required with an image entry, absent without one.
_OPTIONAL_KEYS = ("displayImagePosition", "custom_metadata", "solution")

_BOX_KEYS = ("class", "x", "y", "width", "height", "confidence")
_ANNOTATION_KEYS = {
    "objectDetections": _BOX_KEYS,
    "classifications": ("class", "confidence"),
    "instanceSegmentations": (*_BOX_KEYS, "points"),
    "keypoints": (*_BOX_KEYS, "keypoints"),
}
_IMAGE_KEYS = ("base64Image", "inputBase64Image")
_DETAIL_KEYS = ("label", *_ANNOTATION_KEYS)
#: The image entry's annotation lists.
ANNOTATION_LISTS = tuple(_ANNOTATION_KEYS)
#: The annotation fields that are lists of points (at most ``max_points``), and what their items are called.
POINT_LISTS = {"points": "points", "keypoints": "keypoints"}


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


_MISSING = _Missing()


@dataclass(frozen=True, slots=True)
class Image:
    """Decoded image bytes and their media type (``image/jpeg`` or ``image/png``)."""

    data: bytes
    content_type: str


@dataclass(frozen=True, slots=True)
class EventBody:
    """A body that passed every rule, with its images decoded.

    ``inference_timestamp`` is in UTC, as the library writes it (a body sent
    with ``+05:30`` or ``Z`` is stored as the same moment in ``+00:00``).
    ``image_details`` is the image entry without its images: ``label`` and
    the annotation lists, exactly as sent. An event without an image entry has
    neither image, ``display_image_position`` ``None`` and empty details.
    ``custom_metadata`` and ``solution`` are ``None`` when the body did not
    carry them. ``vision_event_id`` is the client's ``eventId`` of an event
    that came through the Vision Events API (``None`` for a v2 body); the store
    keeps one event per ``vision_event_id``.
    """

    inference_timestamp: str
    event_schema: str
    event_data: dict[str, Any]
    display_image_position: int | None
    output_image: Image | None
    input_image: Image | None
    image_details: dict[str, Any]
    custom_metadata: dict[str, Any] | None
    solution: str | None
    vision_event_id: str | None = None

    @property
    def image_bytes(self) -> int:
        """The size of the event's images together."""
        return sum(len(image.data) for image in (self.output_image, self.input_image) if image is not None)


def validate_body(
    body: Any, *, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, limits: BodyLimits | None = None
) -> EventBody:
    """Check a parsed JSON body against the v2 contract; raises ``ValidationError``.

    ``limits`` (default :class:`BodyLimits` with ``max_image_pixels``) are the
    service's own: more pixels, annotations or points than they allow are refused.
    """
    limits = limits or BodyLimits(max_image_pixels=max_image_pixels)
    check_keys("", body, _REQUIRED_KEYS, _OPTIONAL_KEYS)
    timestamp = _timestamp(body["inference_timestamp"])
    event_data = validate_event_data(body["event_schema"], body["event_data"])
    output_image, input_image, details = _image_entry(body["images"], limits)
    position = display_image_position(body, has_image=output_image is not None or input_image is not None)
    metadata = validate_custom_metadata(body["custom_metadata"]) if "custom_metadata" in body else None
    solution = validate_solution(body["solution"]) if "solution" in body else None
    return EventBody(
        inference_timestamp=timestamp,
        event_schema=body["event_schema"],
        event_data=event_data,
        display_image_position=position,
        output_image=output_image,
        input_image=input_image,
        image_details=details,
        custom_metadata=metadata,
        solution=solution,
    )


def display_image_position(body: dict[str, Any], *, has_image: bool) -> int | None:
    """``displayImagePosition``: the integer 0 when the event has an image entry, absent when it has none."""
    position = body.get("displayImagePosition", _MISSING)
    if not has_image:
        if position is not _MISSING:
            # Named as images: a body that lost its image entry is the likelier mistake than one given a position.
            raise ValidationError(
                "images", [], "must hold one image entry when displayImagePosition is given (else omit that key)"
            )
        return None
    if position is _MISSING:
        raise ValidationError("displayImagePosition", position, "is required with an image entry")
    if isinstance(position, bool) or not isinstance(position, int) or position != 0:
        raise ValidationError("displayImagePosition", position, "must be the integer 0 (the only image)")
    return position


def check_keys(field: str, value: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> None:
    """``value`` must be an object with every ``required`` key and no key outside ``required`` + ``optional``."""
    where = field or "body"
    if not isinstance(value, dict):
        raise ValidationError(where, value, "must be an object")
    prefix = f"{field}." if field else ""
    allowed = (*required, *optional)
    for key, item in value.items():
        if key not in allowed:
            raise ValidationError(
                f"{prefix}{key}", item, f"is not an allowed key of {where} (allowed: {', '.join(allowed)})"
            )
    for key in required:
        if key not in value:
            raise ValidationError(f"{prefix}{key}", _MISSING, "is required")


def _timestamp(value: Any) -> str:
    # JSON has no datetime: on the wire only the library's string form applies.
    if not isinstance(value, str):
        raise ValidationError("inference_timestamp", value, f"must be an ISO-8601 string, not {type(value).__name__}")
    return validate_inference_timestamp(value)


def _image_entry(images: Any, limits: BodyLimits) -> tuple[Image | None, Image | None, dict[str, Any]]:
    entry = single_image_entry(images)
    if entry is None:
        return None, None, {}
    field = "images[0]"
    details = image_entry_details(field, entry, _IMAGE_KEYS, limits)
    output_image, input_image = (
        _base64_image(f"{field}.{key}", entry[key], limits.max_image_pixels) if key in entry else None
        for key in _IMAGE_KEYS
    )
    return output_image, input_image, details


def single_image_entry(images: Any) -> Any:
    """The one entry of ``images``, or ``None`` when the list is empty."""
    if not isinstance(images, list):
        raise ValidationError("images", images, "must be a list")
    if len(images) > 1:
        raise ValidationError("images", f"<{len(images)} entries>", "must hold at most one image entry")
    return images[0] if images else None


def image_entry_details(
    field: str, entry: Any, image_keys: tuple[str, str], limits: BodyLimits | None = None
) -> dict[str, Any]:
    """Check an image entry's keys, ``label`` and annotation lists; returns the entry without ``image_keys``.

    ``image_keys`` name the output and the input image; the entry must hold at least one of them.
    ``limits`` (default :class:`BodyLimits`) bound its annotations and points.
    """
    limits = limits or BodyLimits()
    check_keys(field, entry, (), (*image_keys, *_DETAIL_KEYS))
    if not any(key in entry for key in image_keys):
        raise ValidationError(field, entry, f"must hold {image_keys[0]}, {image_keys[1]} or both")
    if "label" in entry:
        validate_text(f"{field}.label", entry["label"])
    for name, keys in _ANNOTATION_KEYS.items():
        if name in entry:
            _annotations(f"{field}.{name}", entry[name], keys, limits)
    _total_points(field, entry, limits.max_total_points)
    return {key: value for key, value in entry.items() if key not in image_keys}


def _base64_image(field: str, value: Any, max_pixels: int) -> Image:
    if not isinstance(value, str):
        raise ValidationError(field, value, f"must be a base64 string, not {type(value).__name__}")
    if value.startswith("data:"):
        raise ValidationError(field, value, "must be bare base64, without a data: URL prefix")
    if len(value) % 4:
        raise ValidationError(field, value, "must be padded base64 (length a multiple of 4)")
    try:
        data = pybase64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(
            field, value, "must be standard base64 (RFC 4648 §4: A-Z a-z 0-9 + /, '=' padding, no line breaks)"
        ) from None
    return check_image(field, data, max_pixels, shown=value)


def check_image(field: str, data: bytes, max_pixels: int, *, shown: Any = None) -> Image:
    """``data`` as an :class:`Image`: a whole JPEG or PNG declaring at most ``max_pixels`` pixels.

    ``shown`` is the value an error shows (default: the bytes).
    """
    shown = data if shown is None else shown
    content_type = check_image_file(data, field, shown)
    width, height = _declared_size(data, content_type)
    if width * height > max_pixels:
        raise ValidationError(
            field,
            shown,
            f"must declare at most {max_pixels} pixels (the service's --max-image-pixels);"
            f" this image declares {width}×{height} = {width * height}",
        )
    return Image(data, content_type)


def _declared_size(data: bytes, content_type: str) -> tuple[int, int]:
    """Width and height from the header: libjpeg-turbo's reading for a JPEG, IHDR for a PNG."""
    if content_type == "image/jpeg":
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        return int(width), int(height)
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _annotations(field: str, value: Any, keys: tuple[str, ...], limits: BodyLimits) -> None:
    if not isinstance(value, list):
        raise ValidationError(field, value, "must be a list")
    if not value:
        raise ValidationError(field, value, "must be omitted rather than sent empty")
    if len(value) > limits.max_annotations:
        raise too_many(field, f"<{len(value)} annotations>", "annotations", limits.max_annotations)
    for index, item in enumerate(value):
        item_field = f"{field}[{index}]"
        check_keys(item_field, item, keys)
        for key in keys:
            points = item[key]
            if key in POINT_LISTS and isinstance(points, list) and len(points) > limits.max_points:
                shown = f"<{len(points)} {POINT_LISTS[key]}>"
                raise too_many(f"{item_field}.{key}", shown, POINT_LISTS[key], limits.max_points)
            _ANNOTATION_FIELD_RULES[key](f"{item_field}.{key}", points)


def _total_points(field: str, entry: dict[str, Any], limit: int) -> None:
    total = sum(
        len(annotation[key])
        for name, key in (("instanceSegmentations", "points"), ("keypoints", "keypoints"))
        for annotation in entry.get(name, ())
    )
    if total > limit:
        raise too_many_points(field, f"<{total} points>", limit)


def too_many(field: str, shown: str, noun: str, limit: int) -> ValidationError:
    """The error for a list longer than the service's limit on it (``noun``: what its items are)."""
    option = "--max-annotations" if noun == "annotations" else "--max-points"
    return ValidationError(field, shown, f"must hold at most {limit} {noun} (the service's {option})")


def too_many_points(field: str, shown: str, limit: int) -> ValidationError:
    """The error for an image entry with more polygon points and keypoints in all than the service allows."""
    rule = f"must hold at most {limit} polygon points and keypoints in all (the service's --max-total-points)"
    return ValidationError(field, shown, rule)


def _number(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(field, value, f"must be a number, not {type(value).__name__}")
    # An int has no NaN, but one beyond 64 bits cannot be stored as JSON (nor checked by math.isfinite).
    if isinstance(value, int) and not INT64_MIN <= value <= UINT64_MAX:
        raise ValidationError(field, value, "must fit in 64 bits")
    if not math.isfinite(value):
        raise ValidationError(field, value, "must be a finite number")


def _points(field: str, value: Any) -> None:
    if not isinstance(value, list) or len(value) < 3:
        raise ValidationError(field, value, "must be a list of at least 3 [x, y] points")
    for index, point in enumerate(value):
        if not isinstance(point, list) or len(point) != 2:
            raise ValidationError(f"{field}[{index}]", point, "must be an [x, y] pair")
        for coordinate in point:
            _number(f"{field}[{index}]", coordinate)


def _keypoint_list(field: str, value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise ValidationError(field, value, "must be a list of at least one {id, x, y}")
    for index, keypoint in enumerate(value):
        keypoint_field = f"{field}[{index}]"
        check_keys(keypoint_field, keypoint, ("id", "x", "y"))
        keypoint_id = keypoint["id"]
        if isinstance(keypoint_id, bool) or not isinstance(keypoint_id, int) or not 0 <= keypoint_id <= UINT64_MAX:
            raise ValidationError(f"{keypoint_field}.id", keypoint_id, f"must be an integer from 0 to {UINT64_MAX}")
        _number(f"{keypoint_field}.x", keypoint["x"])
        _number(f"{keypoint_field}.y", keypoint["y"])


_ANNOTATION_FIELD_RULES: dict[str, Callable[[str, Any], object]] = {
    "class": validate_text,  # the client's rule too (events.validate_class_names)
    "x": _number,
    "y": _number,
    "width": _number,
    "height": _number,
    "confidence": _number,
    "points": _points,
    "keypoints": _keypoint_list,
}
