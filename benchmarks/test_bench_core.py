"""Foundation micro-benchmarks (issue 2): JPEG encode, annotations, body build.

Each group holds the contenders of one comparison, so pytest-benchmark's table
shows their ratio directly (``--benchmark-columns=median,...``).
"""

from __future__ import annotations

import cv2
import pybase64
import pytest

import fastsend
from benchmarks.frames import SIZES, event_inputs, make_detections
from benchmarks.reference_sender import (
    JPEG_PARAMS,
    reference_body,
    reference_body_bytes,
    reference_detections_to_wire,
    reference_encode_b64,
)
from fastsend.imaging.jpeg import _load_turbojpeg, _simplejpeg_encode
from fastsend.send.encoding import render_body
from fastsend.send.wire import build_envelope, splice

_TURBOJPEG = _load_turbojpeg()
# The JPEG as the encoders use it: a view of the thread's output buffer, base64-encoded from there.
_TURBO = _TURBOJPEG.compress if _TURBOJPEG is not None else None


def _cv2_encode(array, pixel_format, quality, subsampling):
    return cv2.imencode(".jpg", array, [cv2.IMWRITE_JPEG_QUALITY, quality])[1]


_ENCODERS = {"turbojpeg": _TURBO, "simplejpeg": _simplejpeg_encode, "cv2": _cv2_encode}


@pytest.mark.parametrize("backend", list(_ENCODERS))
@pytest.mark.parametrize("size", list(SIZES))
def test_jpeg_encode(benchmark, size, backend):
    encode = _ENCODERS[backend]
    if encode is None:
        pytest.skip("libturbojpeg cannot be loaded here")
    frame = event_inputs(*SIZES[size]).input_frame
    benchmark.group = f"jpeg-encode-{size}"
    benchmark.extra_info.update(size=size, quality=95, subsampling="420")
    benchmark(encode, frame, "BGR", 95, "420")


@pytest.mark.parametrize("implementation", ["fastsend", "reference-loop"])
@pytest.mark.parametrize("count", [10, 100, 1000])  # 10: a typical frame, on the plain-Python path
def test_annotations(benchmark, count, implementation):
    detections = make_detections(count)
    convert = fastsend.object_detections_to_wire if implementation == "fastsend" else reference_detections_to_wire
    benchmark.group = f"annotations-{count}"
    result = benchmark(convert, detections)
    assert len(result) == count


def _event_1080p():
    return event_inputs(*SIZES["1080p"])


@pytest.mark.parametrize("implementation", ["fastsend", "reference"])
def test_body_build_1080p(benchmark, implementation):
    """One two-image 1080p event from frames to body bytes (chunks for fastsend)."""
    inputs = _event_1080p()
    out, inp, dets = inputs.output_frame, inputs.input_frame, inputs.detections
    benchmark.group = "body-build-1080p"
    if implementation == "fastsend":
        options = fastsend.JpegOptions()
        benchmark.extra_info["jpeg_backend"] = fastsend.jpeg_backend()

        def build():
            event = fastsend.Event.quality_check(result="fail")
            prepared = fastsend.prepare_event(event, out, input_image=inp, object_detections=dets)
            return render_body(prepared, options)

    else:
        benchmark.extra_info["note"] = (
            "cv2.imencode x2, base64.b64encode, dict, json.dumps(...).encode() as requests does"
        )

        def build():
            body = reference_body(
                reference_encode_b64(out), reference_encode_b64(inp), reference_detections_to_wire(dets)
            )
            return reference_body_bytes(body)

    result = benchmark(build)
    benchmark.extra_info["body_bytes"] = sum(map(len, result)) if isinstance(result, list) else len(result)


@pytest.mark.parametrize("implementation", ["fastsend", "reference"])
def test_body_serialize_1080p(benchmark, implementation):
    """Serialization only: images already base64, annotations already converted."""
    inputs = _event_1080p()
    out_jpeg = cv2.imencode(".jpg", inputs.output_frame, JPEG_PARAMS)[1].tobytes()
    in_jpeg = cv2.imencode(".jpg", inputs.input_frame, JPEG_PARAMS)[1].tobytes()
    benchmark.group = "body-serialize-1080p"
    if implementation == "fastsend":
        out_b64, in_b64 = pybase64.b64encode(out_jpeg), pybase64.b64encode(in_jpeg)
        annotations = {"objectDetections": fastsend.object_detections_to_wire(inputs.detections)}
        event = fastsend.Event.quality_check(result="fail")

        def serialize():
            return splice(build_envelope(event, annotations=annotations), out_b64, in_b64)

    else:
        out_b64, in_b64 = pybase64.b64encode(out_jpeg).decode(), pybase64.b64encode(in_jpeg).decode()
        wire = reference_detections_to_wire(inputs.detections)

        def serialize():
            return reference_body_bytes(reference_body(out_b64, in_b64, wire))

    benchmark(serialize)
