"""JPEG segment reuse: the output frame's JPEG made of its input's unchanged segments.

The spliced output must be byte for byte what an encode of the whole output with the same
settings gives, and so decode to the same pixels as an ordinary encode (no restart markers).
"""

from __future__ import annotations

import logging
import sys

import numpy as np
import pybase64
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.scripted_server import Reply

import fastsend
import fastsend.imaging.pair as reuse
from fastsend import Event, EventWriter, JpegOptions, ValidationError
from fastsend.config import SUBSAMPLINGS
from fastsend.imaging.jpeg import RawImage, encode_jpeg
from fastsend.imaging.pair import Layout, changed_segments, encode_pair, encode_with_restarts, layout_of

cv2 = pytest.importorskip("cv2")

FORMATS = ("BGR", "RGB", "GRAY", "BGRA", "RGBA")


@pytest.fixture(autouse=True)
def fresh_codec(monkeypatch):
    """Every test looks for the encoder anew; monkeypatch restores the module's cache afterwards."""
    monkeypatch.delenv("FASTSEND_JPEG_REUSE", raising=False)
    monkeypatch.setattr(reuse, "_codec", None)
    monkeypatch.setattr(reuse, "_codec_missing", None)


def scene(height: int, width: int, seed: int) -> np.ndarray:
    """A BGR frame with smooth areas, hard edges and grain (grain gives 0xFF bytes to stuff)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([(xs * 3 + ys) % 256, (ys * 2) % 256, (xs + 80) % 256], axis=-1)
    frame = (base + rng.integers(0, 24, size=(height, width, 3))).clip(0, 255).astype(np.uint8)
    for _ in range(3):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        cv2.circle(frame, (x, y), max(width // 8, 2), tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
    return frame


def draw(frame: np.ndarray, boxes: list[tuple[int, int, int, int, int]], labels: bool = True) -> np.ndarray:
    """A copy of ``frame`` with boxes (x, y, w, h, thickness) and their labels drawn, as a visualization does."""
    out = frame.copy()
    for index, (x, y, w, h, thickness) in enumerate(boxes):
        color = (0, 255 - 20 * (index % 8), 40 * (index % 6))
        cv2.rectangle(out, (x, y), (x + w, y + h), color, thickness)
        if labels:
            cv2.putText(out, f"obj {index}", (x, max(y - 3, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.35, color, 1)
    return out


def as_format(bgr: np.ndarray, pixel_format: str) -> np.ndarray:
    conversions = {
        "BGR": None,
        "RGB": cv2.COLOR_BGR2RGB,
        "GRAY": cv2.COLOR_BGR2GRAY,
        "BGRA": cv2.COLOR_BGR2BGRA,
        "RGBA": cv2.COLOR_BGR2RGBA,
    }
    code = conversions[pixel_format]
    return bgr.copy() if code is None else np.ascontiguousarray(cv2.cvtColor(bgr, code))


def ordinary_jpeg(array: np.ndarray, pixel_format: str, options: JpegOptions) -> bytes:
    """An encode of the whole frame with OpenCV and no restart markers: what reuse must equal in pixels."""
    if pixel_format in ("RGB", "RGBA"):
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR if pixel_format == "RGB" else cv2.COLOR_RGBA2BGR)
    factor = getattr(cv2, f"IMWRITE_JPEG_SAMPLING_FACTOR_{options.subsampling}")
    params = [cv2.IMWRITE_JPEG_QUALITY, options.quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor]
    ok, encoded = cv2.imencode(".jpg", array, params)
    assert ok
    return encoded.tobytes()


def pixels(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_UNCHANGED)


def restart_markers(jpeg: bytes) -> list[int]:
    """The restart markers' numbers (0–7) in the order they appear in the scan."""
    scan = jpeg[jpeg.index(b"\xff\xda") :]
    return [scan[i + 1] - 0xD0 for i in range(len(scan) - 1) if scan[i] == 0xFF and 0xD0 <= scan[i + 1] <= 0xD7]


def check_pair(output: np.ndarray, original: np.ndarray, pixel_format: str, options: JpegOptions) -> float:
    """Encode as a pair with every share of changes allowed; assert it equals separate encodes. The share changed."""
    pair = encode_pair(RawImage(output, pixel_format), RawImage(original, pixel_format), options, max_changed_share=1)
    assert pair is not None
    layout = layout_of(*original.shape[:2], pixel_format, options.subsampling)
    assert pair[0] == encode_with_restarts(output, pixel_format, options, layout.interval)
    assert pair[1] == encode_with_restarts(original, pixel_format, options, layout.interval)
    assert np.array_equal(pixels(pair[0]), pixels(ordinary_jpeg(output, pixel_format, options)))
    assert np.array_equal(pixels(pair[1]), pixels(ordinary_jpeg(original, pixel_format, options)))
    markers = restart_markers(pair[0])
    assert markers == [i % 8 for i in range(layout.rows * layout.per_row - 1)]
    return float(changed_segments(layout, output, original).mean())


# ---------------------------------------------------------------- the splice equals a whole encode


@pytest.mark.parametrize("subsampling", ["420", "444"])
@pytest.mark.parametrize(
    ("width", "height", "pixel_format"),
    [(1920, 1080, "BGR"), (640, 480, "BGR"), (641, 479, "BGR"), (1920, 1080, "GRAY"), (641, 479, "RGB")],
)
def test_ten_boxes_with_labels_reuse_the_input_and_decode_as_an_ordinary_encode(
    width, height, pixel_format, subsampling
):
    rng = np.random.default_rng(width + height)
    boxes = [
        (int(rng.integers(0, width - 40)), int(rng.integers(10, height - 40)), 30 + int(rng.integers(0, width // 6)),
         30 + int(rng.integers(0, height // 6)), 2)
        for _ in range(10)
    ]  # fmt: skip
    original = scene(height, width, seed=width)
    share = check_pair(
        as_format(draw(original, boxes), pixel_format),
        as_format(original, pixel_format),
        pixel_format,
        JpegOptions(quality=95, subsampling=subsampling),
    )
    assert 0 < share < reuse.MAX_CHANGED_SHARE  # the case reuse is for


boxes_strategy = st.lists(
    st.tuples(
        st.integers(-10, 200), st.integers(-10, 200), st.integers(0, 120), st.integers(0, 120), st.integers(-1, 4)
    ),
    max_size=6,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    height=st.integers(1, 150),
    width=st.integers(1, 150),
    pixel_format=st.sampled_from(FORMATS),
    subsampling=st.sampled_from(SUBSAMPLINGS),
    quality=st.integers(1, 100),
    boxes=boxes_strategy,
    labels=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_any_drawing_on_any_size_splices_to_the_whole_encode(
    height, width, pixel_format, subsampling, quality, boxes, labels, seed
):
    original = scene(height, width, seed)
    output = draw(original, [(x, y, w, h, t if t else -1) for x, y, w, h, t in boxes], labels)
    check_pair(
        as_format(output, pixel_format),
        as_format(original, pixel_format),
        pixel_format,
        JpegOptions(quality=quality, subsampling=subsampling),
    )


@settings(max_examples=60, deadline=None)
@given(
    height=st.integers(1, 90),
    width=st.integers(1, 90),
    subsampling=st.sampled_from(SUBSAMPLINGS),
    pixel_format=st.sampled_from(FORMATS),
    changes=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 3)), max_size=5),
)
def test_changed_segments_marks_exactly_the_segments_holding_a_changed_byte(
    height, width, subsampling, pixel_format, changes
):
    original = as_format(scene(height, width, seed=1), pixel_format)
    output = original.copy()
    for y, x, channel in changes:
        flat = output.reshape(height, width, -1)
        flat[y % height, x % width, channel % flat.shape[2]] ^= 0x40
    layout = layout_of(height, width, pixel_format, subsampling)
    expected = np.zeros((layout.rows, layout.per_row), bool)
    for y, x in zip(*np.nonzero((output != original).reshape(height, width, -1).any(axis=2)), strict=True):
        expected[y // layout.mcu_height, x // layout.segment_width] = True
    assert np.array_equal(changed_segments(layout, output, original), expected)


def test_nothing_changed_gives_the_input_jpeg_twice():
    original = scene(120, 192, seed=3)
    pair = encode_pair(RawImage(original.copy(), "BGR"), RawImage(original, "BGR"), JpegOptions())
    assert pair is not None
    assert pair[0] == pair[1] == encode_with_restarts(original, "BGR", JpegOptions(), 4)
    assert np.array_equal(pixels(pair[0]), pixels(ordinary_jpeg(original, "BGR", JpegOptions())))


def test_everything_changed_is_left_to_two_encodes_but_would_still_splice_right():
    original = scene(96, 160, seed=4)
    inverted = 255 - original
    assert encode_pair(RawImage(inverted, "BGR"), RawImage(original, "BGR"), JpegOptions()) is None
    assert check_pair(inverted, original, "BGR", JpegOptions()) == 1.0


# ---------------------------------------------------------------- layout


@pytest.mark.parametrize(
    ("height", "width", "pixel_format", "subsampling", "expected"),
    [
        (1080, 1920, "BGR", "420", Layout(1080, 1920, 16, 16, 4)),  # 120 MCUs a row
        (480, 640, "BGR", "422", Layout(480, 640, 8, 16, 4)),
        (479, 641, "BGR", "420", Layout(479, 641, 16, 16, 1)),  # 41 MCUs a row: prime
        (479, 641, "BGR", "444", Layout(479, 641, 8, 8, 3)),  # 81 MCUs a row
        (100, 100, "GRAY", "420", Layout(100, 100, 8, 8, 1)),  # 13 MCUs a row
        (100, 120, "GRAY", "420", Layout(100, 120, 8, 8, 5)),  # 15 MCUs a row
        (480, 640, "BGR", "411", Layout(480, 640, 8, 32, 4)),
        (480, 640, "BGR", "440", Layout(480, 640, 16, 8, 4)),
    ],
)
def test_the_restart_interval_divides_the_mcus_of_a_row(height, width, pixel_format, subsampling, expected):
    layout = layout_of(height, width, pixel_format, subsampling)
    assert layout == expected
    assert (-(-width // layout.mcu_width)) % layout.interval == 0


def test_1080p_segments():
    layout = layout_of(1080, 1920, "BGR", "420")
    assert (layout.rows, layout.per_row, layout.whole_rows, layout.whole_per_row) == (68, 30, 67, 30)
    assert layout.segment_width == 64


# ---------------------------------------------------------------- when reuse does not apply


def test_frames_of_different_sizes_or_formats_or_downscaled_are_not_paired():
    original = scene(128, 192, seed=5)
    output = draw(original, [(5, 5, 20, 20, 2)])
    options = JpegOptions()
    assert encode_pair(RawImage(output[:64], "BGR"), RawImage(original, "BGR"), options) is None
    assert encode_pair(RawImage(output, "RGB"), RawImage(original, "BGR"), options) is None
    assert encode_pair(RawImage(output, "BGR"), RawImage(original, "BGR"), JpegOptions(max_side=64)) is None
    assert encode_pair(RawImage(output, "BGR"), RawImage(original, "BGR"), options) is not None


def test_turned_off_by_the_environment(monkeypatch):
    monkeypatch.setenv("FASTSEND_JPEG_REUSE", "off")
    assert fastsend.jpeg_reuse() == "off (FASTSEND_JPEG_REUSE=off)"
    original = scene(64, 64, seed=6)
    assert (
        encode_pair(RawImage(draw(original, [(5, 5, 9, 9, 1)]), "BGR"), RawImage(original, "BGR"), JpegOptions())
        is None
    )
    assert not reuse.reuse_applies(RawImage(original, "BGR"), RawImage(original, "BGR"), JpegOptions())


def test_a_bad_environment_value_is_named(monkeypatch):
    monkeypatch.setenv("FASTSEND_JPEG_REUSE", "sometimes")
    with pytest.raises(ValidationError, match=r"FASTSEND_JPEG_REUSE.*must be auto, off"):
        fastsend.jpeg_reuse()


def test_without_opencv_reuse_is_off_and_says_why(monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 raises ImportError
    assert fastsend.jpeg_reuse().startswith("off: needs OpenCV")
    original = scene(32, 32, seed=7)
    assert encode_pair(RawImage(original.copy(), "BGR"), RawImage(original, "BGR"), JpegOptions()) is None
    with pytest.raises(RuntimeError, match="needs OpenCV"):
        encode_with_restarts(original, "BGR", JpegOptions(), 4)


def test_an_opencv_without_a_restart_interval_is_named(monkeypatch):
    class OldOpenCV:
        __version__ = "4.2.0"

    monkeypatch.setitem(sys.modules, "cv2", OldOpenCV())
    assert fastsend.jpeg_reuse() == "off: OpenCV 4.2.0 has no restart interval (needs 4.5.5 or later)"


def test_with_opencv_the_description_names_encoder_and_interval():
    description = fastsend.jpeg_reuse()
    assert description.startswith(f"opencv {cv2.__version__} (")
    assert "restart marker every 4 MCUs" in description


def test_unexpected_patch_tables_fall_back_to_a_whole_encode(monkeypatch, caplog):
    original = scene(80, 128, seed=8)
    output = draw(original, [(10, 10, 30, 30, 2)])
    real = reuse.encode_with_restarts

    def patches_at_another_quality(array, pixel_format, options, interval):
        if array.shape != original.shape:  # a packed image, not a whole frame
            options = JpegOptions(quality=options.quality - 10, subsampling=options.subsampling)
        return real(array, pixel_format, options, interval)

    monkeypatch.setattr(reuse, "encode_with_restarts", patches_at_another_quality)
    with caplog.at_level(logging.WARNING, logger="fastsend"):
        pair = encode_pair(RawImage(output, "BGR"), RawImage(original, "BGR"), JpegOptions())
    assert pair is not None
    assert pair[0] == real(output, "BGR", JpegOptions(), 4)
    assert "unexpected encoder output" in caplog.text


# ---------------------------------------------------------------- against fastsend's own backend


def test_pixels_equal_libjpeg_turbo_with_the_accurate_dct():
    """The reuse encoder is libjpeg-turbo's accurate integer DCT: TurboJPEG with TJFLAG_ACCURATEDCT gives
    the same pixels (its default at quality < 96 is the fast DCT, a level or two off here and there)."""
    turbojpeg = pytest.importorskip("turbojpeg")
    try:
        codec = turbojpeg.TurboJPEG()
    except (OSError, RuntimeError):
        pytest.skip("libturbojpeg not loadable here")
    original = scene(480, 640, seed=9)
    output = draw(original, [(50, 60, 200, 120, 3), (300, 200, 90, 90, 2)])
    pair = encode_pair(RawImage(output, "BGR"), RawImage(original, "BGR"), JpegOptions())
    assert pair is not None
    accurate = codec.encode(output, quality=95, jpeg_subsample=turbojpeg.TJSAMP_420, flags=turbojpeg.TJFLAG_ACCURATEDCT)
    assert np.array_equal(pixels(pair[0]), pixels(accurate))


# ---------------------------------------------------------------- in the writer


def received_jpegs(server) -> tuple[bytes, bytes]:
    (request,) = server.requests
    entry = request.json["images"][0]
    return pybase64.b64decode(entry["base64Image"]), pybase64.b64decode(entry["inputBase64Image"])


def submit_pair(server, output: np.ndarray, original: np.ndarray, **settings) -> EventWriter:
    server.script = Reply(201)
    writer = EventWriter(server.base_url, request_timeout=3.0, deadline=10.0, **settings)
    event = Event.quality_check(result="pass")
    assert writer.submit(event, output, input_image=original).result(10).error_status is False
    return writer


def test_a_writer_sends_an_annotated_pair_with_reuse(server):
    original = scene(240, 320, seed=10)
    output = draw(original, [(20, 30, 80, 60, 2), (150, 100, 60, 90, 2)])
    writer = submit_pair(server, output, original, encode_threads=2)
    try:
        assert writer.stats()["images_encoded"] == 2
    finally:
        writer.close(timeout=5)
    sent_output, sent_input = received_jpegs(server)
    assert sent_output == encode_with_restarts(output, "BGR", JpegOptions(), 4)
    assert sent_input == encode_with_restarts(original, "BGR", JpegOptions(), 4)
    assert np.array_equal(pixels(sent_output), pixels(ordinary_jpeg(output, "BGR", JpegOptions())))


@pytest.mark.parametrize("why", ["everything changed", "turned off", "reuse failed"])
def test_a_writer_encodes_the_two_images_as_usual_when_reuse_does_not_pay(server, monkeypatch, why):
    original = scene(96, 128, seed=11)
    output = 255 - original if why == "everything changed" else draw(original, [(10, 10, 30, 30, 2)])
    if why == "turned off":
        monkeypatch.setenv("FASTSEND_JPEG_REUSE", "off")
    if why == "reuse failed":

        def broken(*args, **kwargs):
            raise RuntimeError("encoder exploded")

        monkeypatch.setattr(fastsend.send.encoding, "encode_pair", broken)
    writer = submit_pair(server, output, original, encode_threads=1)
    writer.close(timeout=5)
    assert received_jpegs(server) == (encode_jpeg(output), encode_jpeg(original))


@pytest.mark.parametrize("view", ["crop", "flipped", "fortran"])
def test_frames_that_are_views_of_other_arrays_pair_as_their_copies_do(view):
    """With ``copy=False`` the encoder gets the caller's arrays as they are: crops, flips, other orders."""
    big = scene(300, 420, seed=12)
    drawn = draw(big, [(40, 50, 150, 100, 2), (200, 120, 90, 60, 1)])
    pick = {
        "crop": lambda frame: frame[7:250, 5:333],
        "flipped": lambda frame: frame[::-1],
        "fortran": np.asfortranarray,
    }[view]
    output, original = pick(drawn), pick(big)
    assert not output.flags.c_contiguous
    assert check_pair(output, original, "BGR", JpegOptions()) > 0
