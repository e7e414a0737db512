"""JPEG core: backends, accepted inputs, pass-through, settings and who owns the frame."""

from __future__ import annotations

import base64
import logging
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
import simplejpeg

import fastsend.imaging.jpeg as jpeg
from fastsend import ValidationError, jpeg_backend
from fastsend.config import SUBSAMPLINGS
from fastsend.imaging.jpeg import (
    EncodedImage,
    JpegOptions,
    RawImage,
    encode_jpeg,
    prepare_image,
    to_base64,
)

BACKENDS = ("turbojpeg", "simplejpeg")
TURBOJPEG_LOADS = jpeg._load_turbojpeg() is not None
needs_both_backends = pytest.mark.skipif(not TURBOJPEG_LOADS, reason="libturbojpeg not loadable here")


@pytest.fixture(autouse=True)
def fresh_backend(monkeypatch):
    """Every test selects the backend anew; monkeypatch restores the module's cache afterwards."""
    monkeypatch.delenv("FASTSEND_JPEG_BACKEND", raising=False)
    monkeypatch.setattr(jpeg, "_backend", None)


@pytest.fixture
def use_backend(monkeypatch):
    def select(name: str) -> None:
        if name == "turbojpeg" and not TURBOJPEG_LOADS:
            pytest.skip("libturbojpeg not loadable here")
        monkeypatch.setenv("FASTSEND_JPEG_BACKEND", name)
        monkeypatch.setattr(jpeg, "_backend", None)
        assert jpeg_backend() == name

    return select


def jpeg_of(source, options: JpegOptions = JpegOptions()) -> bytes:
    return base64.b64decode(to_base64(source, options), validate=True)


def decode_rgb(data: bytes) -> np.ndarray:
    return simplejpeg.decode_jpeg(data, colorspace="RGB")


def solid(color_bgr: tuple[int, ...], height: int = 32, width: int = 48) -> np.ndarray:
    return np.broadcast_to(np.array(color_bgr, np.uint8), (height, width, len(color_bgr))).copy()


# ---------------------------------------------------------------- backends


def test_the_backend_is_visible_and_cached():
    name = jpeg_backend()
    assert name in BACKENDS
    assert name == ("turbojpeg" if TURBOJPEG_LOADS else "simplejpeg")
    assert jpeg._backend is not None and jpeg._backend[0] == name


@pytest.mark.parametrize("name", BACKENDS)
def test_the_backend_can_be_chosen(use_backend, name):
    use_backend(name)


@pytest.mark.parametrize("name", BACKENDS)
def test_the_backend_chosen_is_logged_at_info_once(use_backend, caplog, name):
    with caplog.at_level(logging.INFO, logger="fastsend"):
        use_backend(name)
        jpeg_backend()
        encode_jpeg(solid((1, 2, 3)))
    chosen = [record for record in caplog.records if record.getMessage().startswith("JPEG encoder backend")]
    assert [(record.levelno, record.getMessage()) for record in chosen] == [
        (logging.INFO, f"JPEG encoder backend: {name}")
    ]


def test_an_unknown_backend_name_is_rejected(monkeypatch):
    monkeypatch.setenv("FASTSEND_JPEG_BACKEND", "libjpeg")
    with pytest.raises(ValidationError) as info:
        jpeg_backend()
    assert info.value.field == "FASTSEND_JPEG_BACKEND"


def test_asking_for_turbojpeg_without_the_library_fails_clearly(monkeypatch):
    monkeypatch.setenv("FASTSEND_JPEG_BACKEND", "turbojpeg")
    monkeypatch.setattr(jpeg, "_load_turbojpeg", lambda: None)
    with pytest.raises(ValidationError, match="libturbojpeg"):
        jpeg_backend()


def test_auto_falls_back_to_simplejpeg(monkeypatch):
    monkeypatch.setattr(jpeg, "_load_turbojpeg", lambda: None)
    assert jpeg_backend() == "simplejpeg"


@needs_both_backends
@pytest.mark.parametrize("channels, pixel_format", [(3, "BGR"), (3, "RGB"), (None, "GRAY"), (4, "BGRA"), (4, "RGBA")])
@pytest.mark.parametrize("subsampling", SUBSAMPLINGS)
@pytest.mark.parametrize("quality", [1, 75, 95, 100])
def test_both_backends_give_identical_bytes(use_backend, make_frame, channels, pixel_format, subsampling, quality):
    frame = make_frame(37, 53, channels)  # odd sizes exercise the chroma edge blocks
    encoded = {}
    for name in BACKENDS:
        use_backend(name)
        encoded[name] = encode_jpeg(frame, pixel_format, quality, subsampling)
    assert encoded["turbojpeg"] == encoded["simplejpeg"]
    assert encoded["turbojpeg"].startswith(b"\xff\xd8")


# ---------------------------------------------------------------- pixel layouts


def test_bgr_and_rgb_input_give_the_same_colours():
    bgr = solid((200, 60, 20))  # blue-ish in BGR order
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    from_bgr = jpeg_of(prepare_image(bgr))
    from_rgb = jpeg_of(prepare_image(rgb, color="rgb"))
    for data in (from_bgr, from_rgb):
        means = decode_rgb(data).reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(means, [20, 60, 200], atol=3)
    assert from_bgr == from_rgb


def test_bgr_is_the_default_not_rgb():
    means = decode_rgb(jpeg_of(prepare_image(solid((255, 0, 0))))).reshape(-1, 3).mean(axis=0)
    assert means[2] > 200 and means[0] < 50  # pure blue stays blue


@pytest.mark.parametrize("shape", [(32, 48), (32, 48, 1)])
def test_gray_frames(shape):
    gray = np.full(shape, 90, np.uint8)
    source = prepare_image(gray)
    assert source.pixel_format == "GRAY"
    data = jpeg_of(source)
    assert simplejpeg.decode_jpeg_header(data)[2] == "Gray"
    assert abs(simplejpeg.decode_jpeg(data, colorspace="GRAY").mean() - 90) < 1.5


def test_gray_h_w_and_h_w_1_encode_alike(make_frame):
    gray = make_frame(channels=None)
    assert jpeg_of(prepare_image(gray)) == jpeg_of(prepare_image(gray[:, :, None]))


def test_bgra_ignores_alpha():
    bgra = solid((10, 120, 240, 0))
    bgra[:, :, 3] = np.random.default_rng(1).integers(0, 256, bgra.shape[:2])
    source = prepare_image(bgra)
    assert source.pixel_format == "BGRA"
    assert jpeg_of(source) == jpeg_of(prepare_image(solid((10, 120, 240))))
    np.testing.assert_allclose(decode_rgb(jpeg_of(source)).reshape(-1, 3).mean(axis=0), [240, 120, 10], atol=3)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize(
    "view",
    [
        lambda f: f[5:40, 7:60],  # crop: rows contiguous, pitch larger than the row
        lambda f: f[::2, ::3],  # strided
        lambda f: f[::-1],  # negative row stride
        lambda f: f[:, ::-1],  # mirrored
        lambda f: f[::-1, ::-1, ::-1],  # everything reversed
        lambda f: f[3:30, 4:50, 1],  # gray crop
        lambda f: np.swapaxes(f, 0, 1),  # transposed
    ],
    ids=["crop", "strided", "flipped", "mirrored", "reversed", "gray-crop", "transposed"],
)
def test_views_encode_like_their_contiguous_copy(use_backend, make_frame, name, view):
    use_backend(name)
    frame = view(make_frame(64, 80))
    assert not frame.flags.c_contiguous
    expected = encode_jpeg(np.ascontiguousarray(frame), "GRAY" if frame.ndim == 2 else "BGR")
    assert encode_jpeg(frame, "GRAY" if frame.ndim == 2 else "BGR") == expected
    for copy in (True, False):
        assert jpeg_of(prepare_image(frame, copy=copy)) == expected


# ---------------------------------------------------------------- invalid arrays


@pytest.mark.parametrize(
    "array, field",
    [
        (np.zeros((8, 8, 3), np.float32), "output_image.dtype"),
        (np.zeros((8, 8, 3), np.uint16), "output_image.dtype"),
        (np.zeros((8, 8, 3), np.int8), "output_image.dtype"),
        (np.zeros((8, 8, 3), bool), "output_image.dtype"),
        (np.zeros(8, np.uint8), "output_image.shape"),
        (np.zeros((), np.uint8), "output_image.shape"),
        (np.zeros((2, 8, 8, 3), np.uint8), "output_image.shape"),
        (np.zeros((8, 8, 2), np.uint8), "output_image.shape"),
        (np.zeros((8, 8, 5), np.uint8), "output_image.shape"),
        (np.zeros((0, 8, 3), np.uint8), "output_image.shape"),
        (np.zeros((8, 0, 3), np.uint8), "output_image.shape"),
        (np.zeros((0, 0), np.uint8), "output_image.shape"),
        (np.zeros((8, 8, 0), np.uint8), "output_image.shape"),
    ],
    ids=lambda value: f"{value.dtype}{value.shape}" if isinstance(value, np.ndarray) else None,
)
def test_invalid_arrays_are_rejected_naming_the_field(array, field):
    with pytest.raises(ValidationError) as info:
        prepare_image(array, field="output_image")
    assert info.value.field == field
    assert str(info.value).startswith(field)


def test_an_unknown_colour_order_is_rejected(frame):
    with pytest.raises(ValidationError) as info:
        prepare_image(frame, color="yuv")
    assert info.value.field == "color"


@pytest.mark.parametrize("image", [None, 42, 3.5, object(), [[0, 0, 0]]], ids=repr)
def test_unsupported_inputs_are_rejected(image):
    with pytest.raises(ValidationError) as info:
        prepare_image(image, field="input_image")
    assert info.value.field == "input_image"


# ---------------------------------------------------------------- pass-through


@pytest.fixture
def jpeg_bytes(make_frame) -> bytes:
    return simplejpeg.encode_jpeg(make_frame(24, 32)[:, :, ::-1].copy(), quality=70, colorspace="RGB")


@pytest.fixture
def png_bytes(make_frame) -> bytes:
    ok, data = cv2.imencode(".png", make_frame(24, 32))
    assert ok
    return data.tobytes()


@pytest.fixture
def never_encode(monkeypatch):
    """Fail the test if anything reaches the JPEG encoder."""

    def refuse(*args, **kwargs):
        raise AssertionError("an already encoded image was re-encoded")

    monkeypatch.setattr(jpeg, "encode_jpeg", refuse)
    monkeypatch.setattr(jpeg, "_backend", ("refuse", refuse))


class Workflowish:
    """A stand-in for inference's WorkflowImageData: public attributes only."""

    def __init__(self, base64_image=None, numpy_image=None):
        self.base64_image = base64_image
        self.numpy_image = numpy_image


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=["bytes", "bytearray", "memoryview"])
@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_encoded_bytes_pass_through_unchanged(request, never_encode, wrap, kind):
    data = request.getfixturevalue(f"{kind}_bytes")
    source = prepare_image(wrap(data))
    assert isinstance(source, EncodedImage)
    assert to_base64(source, JpegOptions(quality=10, max_side=4)) == base64.b64encode(data)


def test_base64_text_passes_through_unchanged(never_encode, jpeg_bytes):
    text = base64.b64encode(jpeg_bytes).decode()
    assert to_base64(prepare_image(text), JpegOptions(quality=10)) == text.encode()


@pytest.mark.parametrize("prefix", ["data:image/jpeg;base64,", "data:image/png;base64,", "data:;base64,"])
def test_a_data_url_prefix_is_stripped(never_encode, jpeg_bytes, prefix):
    text = base64.b64encode(jpeg_bytes).decode()
    assert to_base64(prepare_image(prefix + text), JpegOptions()) == text.encode()


def test_an_object_with_base64_image_passes_through(never_encode, jpeg_bytes, frame):
    text = base64.b64encode(jpeg_bytes).decode()
    # numpy_image is there too (WorkflowImageData holds both): the encoded one must win.
    assert to_base64(prepare_image(Workflowish(base64_image=text, numpy_image=frame)), JpegOptions()) == text.encode()


def test_an_object_with_only_numpy_image_is_encoded(frame):
    source = prepare_image(Workflowish(numpy_image=frame))
    assert isinstance(source, RawImage)
    assert jpeg_of(source) == encode_jpeg(frame, "BGR", 95, "420")


def test_workflow_image_data_private_caches_are_preferred(never_encode, jpeg_bytes):
    class Lazy:
        """Like WorkflowImageData: the public property would encode; the cache already holds it."""

        _base64_image = base64.b64encode(jpeg_bytes).decode()

        @property
        def base64_image(self):
            raise AssertionError("the lazy property was evaluated")

    assert to_base64(prepare_image(Lazy()), JpegOptions()) == base64.b64encode(jpeg_bytes)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello world", b"\xff\xd9\xff\xd8", b"GIF89a....", b"\x89PNG"],
    ids=["empty", "text", "eoi-first", "gif", "png-truncated-magic"],
)
def test_non_image_bytes_are_rejected(data):
    with pytest.raises(ValidationError) as info:
        prepare_image(data, field="output_image")
    assert info.value.field == "output_image"


def test_bad_base64_text_is_rejected(jpeg_bytes):
    good = base64.b64encode(jpeg_bytes).decode()
    bad = [
        "",
        "not base64 at all!",
        base64.b64encode(b"plain text, not an image").decode(),
        good.rstrip("="),  # unpadded
        base64.encodebytes(jpeg_bytes).decode(),  # MIME line breaks
        base64.urlsafe_b64encode(b"\xff\xd8\xff" + b"\xfb" * 30).decode(),  # URL-safe alphabet
        "data:image/jpeg;base64,!!!!",
        good[:-5] + "é" + good[-4:],
    ]
    assert good.endswith("=") and "-" in bad[5]
    for text in bad:
        with pytest.raises(ValidationError) as info:
            prepare_image(text, field="output_image")
        assert info.value.field == "output_image"


def test_an_object_with_a_bad_base64_image_is_rejected():
    with pytest.raises(ValidationError):
        prepare_image(Workflowish(base64_image="bm90IGFuIGltYWdl"))


# ---------------------------------------------------------------- files and PIL images


@pytest.mark.parametrize("as_path", [Path, str], ids=["pathlib", "str"])
@pytest.mark.parametrize("kind, suffix", [("jpeg", ".jpg"), ("png", ".png")])
def test_an_image_file_is_read_now_and_sent_as_it_is(request, never_encode, tmp_path, as_path, kind, suffix):
    data = request.getfixturevalue(f"{kind}_bytes")
    path = tmp_path / f"frame{suffix}"
    path.write_bytes(data)
    source = prepare_image(as_path(path))
    path.unlink()  # read on the caller's thread: the file is no longer needed
    assert to_base64(source, JpegOptions(quality=10)) == base64.b64encode(data)


def test_a_file_of_another_format_is_decoded_with_pillow(tmp_path):
    image_module = pytest.importorskip("PIL.Image")
    path = tmp_path / "frame.bmp"
    image_module.new("RGB", (40, 24), (250, 10, 10)).save(path)
    source = prepare_image(path)
    assert isinstance(source, RawImage) and source.array.shape == (24, 40, 3)
    red, green, blue = decode_rgb(jpeg_of(source)).reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 50 and blue < 50


@pytest.mark.parametrize("as_path", [Path, str], ids=["pathlib", "str"])
def test_a_missing_file_is_refused_naming_the_field_and_the_path(tmp_path, as_path):
    missing = tmp_path / "nowhere" / "frame.jpg"
    with pytest.raises(ValidationError) as info:
        prepare_image(as_path(missing), field="output_image")
    assert info.value.field == "output_image"
    assert info.value.value == str(missing)
    assert "file" in info.value.rule


def test_a_damaged_image_file_is_refused_naming_the_path(tmp_path, jpeg_bytes):
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpeg_bytes[:-40])  # the end-of-image marker is gone
    with pytest.raises(ValidationError) as info:
        prepare_image(path, field="input_image")
    assert (info.value.field, info.value.value) == ("input_image", str(path))
    assert "truncated" in info.value.rule


def test_a_file_that_is_no_image_is_refused(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image")
    with pytest.raises(ValidationError) as info:
        prepare_image(path, field="output_image")
    assert (info.value.field, info.value.value) == ("output_image", str(path))


@pytest.mark.parametrize("text", ["hello", "frame_0001", "!!!!"])
def test_a_string_that_is_neither_base64_nor_a_file_says_what_to_pass(text):
    with pytest.raises(ValidationError) as info:
        prepare_image(text, field="output_image")
    assert info.value.field == "output_image"
    accepted = ("numpy array", "JPEG/PNG bytes", "base64", "path of an image file", "PIL image", "WorkflowImageData")
    assert all(name in info.value.rule for name in accepted), info.value.rule


@pytest.mark.parametrize("image", [42, object(), [[0, 0, 0]]], ids=repr)
def test_an_unsupported_object_is_told_what_to_pass(image):
    with pytest.raises(ValidationError) as info:
        prepare_image(image, field="output_image")
    assert "PIL image" in info.value.rule and "path of an image file" in info.value.rule


PIL_RED = (250, 10, 10)


@pytest.mark.parametrize("color", ["bgr", "rgb"])
def test_a_pil_rgb_image_keeps_its_colours_whatever_color_says(color):
    image_module = pytest.importorskip("PIL.Image")
    source = prepare_image(image_module.new("RGB", (40, 24), PIL_RED), color=color)
    assert isinstance(source, RawImage) and source.pixel_format == "RGB"
    red, green, blue = decode_rgb(jpeg_of(source)).reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 50 and blue < 50


@pytest.mark.parametrize(
    "mode, pixel_format, shape",
    [
        ("L", "GRAY", (24, 40)),
        ("RGBA", "RGBA", (24, 40, 4)),
        ("P", "RGB", (24, 40, 3)),
        ("LA", "RGBA", (24, 40, 4)),
        ("1", "GRAY", (24, 40)),
        ("CMYK", "RGB", (24, 40, 3)),
    ],
)
def test_pil_modes_are_taken_or_converted(mode, pixel_format, shape):
    image_module = pytest.importorskip("PIL.Image")
    image = image_module.new("RGB", (40, 24), PIL_RED).convert(mode)
    source = prepare_image(image)
    assert isinstance(source, RawImage)
    assert (source.pixel_format, source.array.shape) == (pixel_format, shape)
    assert simplejpeg.decode_jpeg_header(jpeg_of(source))[:2] == (24, 40)


def test_a_pil_image_encodes_like_its_rgb_array(make_frame):
    image_module = pytest.importorskip("PIL.Image")
    pixels = make_frame(24, 40)[:, :, ::-1].copy()
    from_pil = jpeg_of(prepare_image(image_module.fromarray(pixels, "RGB")))
    assert from_pil == jpeg_of(prepare_image(pixels, color="rgb"))


# ---------------------------------------------------------------- settings


def test_defaults_match_the_reference_block():
    assert JpegOptions() == JpegOptions(quality=95, subsampling="420", max_side=None)


@pytest.mark.parametrize("quality", [10, 60, 95])
@pytest.mark.parametrize("subsampling", SUBSAMPLINGS)
def test_quality_and_subsampling_take_effect(make_frame, quality, subsampling):
    frame = make_frame(40, 56)
    data = jpeg_of(prepare_image(frame), JpegOptions(quality=quality, subsampling=subsampling))
    rgb = np.ascontiguousarray(frame[:, :, ::-1])
    assert data == simplejpeg.encode_jpeg(rgb, quality=quality, colorspace="RGB", colorsubsampling=subsampling)
    assert simplejpeg.decode_jpeg_header(data)[3] == subsampling


def test_lower_quality_is_smaller(make_frame):
    source = prepare_image(make_frame(64, 80))
    sizes = [len(jpeg_of(source, JpegOptions(quality=q))) for q in (20, 60, 95)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3


@pytest.mark.parametrize(
    "shape, max_side",
    [
        ((300, 500, 3), 100),
        ((500, 300, 3), 100),
        ((300, 500, 3), 499),
        ((301, 97), 50),
        ((2, 500, 3), 10),
        ((40, 4000), 10),
    ],
)
def test_max_side_downscales(shape, max_side):
    image = np.full(shape, 255, np.uint8)
    data = jpeg_of(prepare_image(image), JpegOptions(max_side=max_side))
    height, width = simplejpeg.decode_jpeg_header(data)[:2]
    assert 1 <= height and 1 <= width and max(height, width) <= max_side
    assert max(height, width) > max_side // 2  # not shrunk more than a factor past the limit
    # a white frame stays white: no overflow in the averaging
    assert simplejpeg.decode_jpeg(data, colorspace="GRAY").min() >= 250


@pytest.mark.parametrize("max_side", [None, 500, 10_000])
def test_frames_within_max_side_keep_their_size(max_side, make_frame):
    frame = make_frame(300, 500)
    data = jpeg_of(prepare_image(frame), JpegOptions(max_side=max_side))
    assert data == encode_jpeg(frame)


def test_max_side_averages_blocks(make_frame):
    frame = make_frame(64, 80)
    data = jpeg_of(prepare_image(frame), JpegOptions(quality=100, subsampling="444", max_side=40))
    expected = frame.reshape(32, 2, 40, 2, 3).astype(np.float64).mean(axis=(1, 3))
    decoded = simplejpeg.decode_jpeg(data, colorspace="BGR").astype(np.float64)
    assert decoded.shape == expected.shape
    assert np.abs(decoded - expected).mean() < 2


@pytest.mark.parametrize(
    "options, field",
    [
        (dict(quality=0), "quality"),
        (dict(quality=101), "quality"),
        (dict(quality=True), "quality"),
        (dict(quality=95.0), "quality"),
        (dict(subsampling="421"), "subsampling"),
        (dict(subsampling=420), "subsampling"),
        (dict(max_side=0), "max_side"),
        (dict(max_side=-5), "max_side"),
        (dict(max_side=1.5), "max_side"),
    ],
)
def test_invalid_options_are_rejected_when_built(options, field):
    with pytest.raises(ValidationError) as info:
        JpegOptions(**options)
    assert info.value.field == field


# ---------------------------------------------------------------- ownership


def test_copy_true_snapshots_the_frame(make_frame):
    frame = make_frame(48, 64)
    original = frame.copy()
    source = prepare_image(frame)
    assert not np.shares_memory(source.array, frame)
    frame[:] = 0  # the caller reuses its buffer the moment the call returns
    data = jpeg_of(source)
    assert data == encode_jpeg(original)
    decoded_means = decode_rgb(data).reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(decoded_means, original[:, :, ::-1].reshape(-1, 3).mean(axis=0), atol=2)


def test_copy_true_snapshots_bytearrays(jpeg_bytes):
    buffer = bytearray(jpeg_bytes)
    source = prepare_image(buffer)
    buffer[:] = b"\x00" * len(buffer)
    assert to_base64(source, JpegOptions()) == base64.b64encode(jpeg_bytes)


def test_copy_false_hands_the_array_over(make_frame):
    # The opt-in: no copy is made, so the caller must not touch the frame again.
    frame = make_frame(48, 64)
    source = prepare_image(frame, copy=False)
    assert np.shares_memory(source.array, frame)
    frame[:] = 0
    assert jpeg_of(source) == encode_jpeg(np.zeros_like(frame))


def test_snapshots_reuse_released_buffers_without_mixing_frames(make_frame):
    first, second = make_frame(48, 64, seed=1), make_frame(48, 64, seed=2)
    source = prepare_image(first)
    assert source.recyclable
    expected_first = jpeg_of(source)
    jpeg.release_frame(source)
    reused = prepare_image(second)
    assert reused.array is source.array  # the warm buffer came back…
    assert jpeg_of(reused) == encode_jpeg(second)  # …holding the new frame only
    assert expected_first == encode_jpeg(first)


def test_the_callers_own_arrays_are_never_recycled(make_frame):
    frame = make_frame(48, 64)
    handed_over = prepare_image(frame, copy=False)
    assert not handed_over.recyclable
    jpeg.release_frame(handed_over)
    assert prepare_image(make_frame(48, 64, seed=3)).array is not frame


# ---------------------------------------------------------------- snapshots and the frame pool


@pytest.mark.parametrize("channels, color", [(3, "bgr"), (3, "rgb"), (4, "bgr"), (None, "bgr")])
@pytest.mark.parametrize("height, width", [(48, 64), (37, 53), (1, 1), (1080, 1920)])
def test_a_snapshot_is_a_pixel_copy_the_caller_may_overwrite(make_frame, channels, color, height, width):
    frame = make_frame(height, width, channels)
    expected = encode_jpeg(frame.copy(), {3: "BGR", 4: "BGRA", None: "GRAY"}[channels] if color == "bgr" else "RGB")
    source = prepare_image(frame, color=color)
    assert source.recyclable and not source.borrowed
    assert source.array.shape == frame.shape[:2] + (() if channels is None else (channels,))
    assert not np.shares_memory(source.array, frame)
    frame[:] = 0  # the caller reuses its buffer the moment the call returns
    assert jpeg_of(source) == expected


def test_snapshot_takes_over_a_handed_over_frame_and_leaves_everything_else(make_frame, jpeg_bytes):
    frame = make_frame(48, 64)
    expected = encode_jpeg(frame)
    handed_over = prepare_image(frame, copy=False)
    assert handed_over.borrowed
    owned = jpeg.snapshot(handed_over)
    assert owned.recyclable and not owned.borrowed
    frame[:] = 0
    assert jpeg_of(owned) == expected
    assert jpeg.snapshot(owned) is owned  # already fastsend's
    encoded = prepare_image(jpeg_bytes)
    assert jpeg.snapshot(encoded) is encoded


def test_a_pil_image_is_not_borrowed(make_frame):
    image_module = pytest.importorskip("PIL.Image")
    source = prepare_image(image_module.fromarray(make_frame(8, 8)[:, :, ::-1].copy(), "RGB"), copy=False)
    assert not source.borrowed  # the array was made here from the image: nothing of the caller's to snapshot
    assert jpeg.snapshot(source) is source


def test_the_frame_pool_keeps_a_whole_burst_warm():
    pool = jpeg._FramePool()
    burst = [pool.take((4, 8, 3)) for _ in range(40)]  # far more than any fixed idle amount would keep
    for buffer in burst:
        pool.release(buffer)
    assert pool.fresh == 40 and pool.idle_bytes == 40 * 96
    again = [pool.take((4, 8, 3)) for _ in range(40)]
    assert pool.fresh == 40  # every one of them warm
    assert {id(b) for b in again} == {id(b) for b in burst}


def test_the_frame_pool_holds_no_more_than_its_peak_and_forgets_a_past_peak():
    pool = jpeg._FramePool(hold_seconds=3600)
    first, second = pool.take((10,)), pool.take((10,))
    pool.release(first)
    pool.release(second)
    steady = pool.take((10,))  # one at a time from now on
    pool.release(steady)
    assert pool.idle_bytes == 20  # the peak of two is still recent
    pool.hold_seconds = 0  # the peak is now long past
    steady = pool.take((10,))
    pool.release(steady)
    assert pool.idle_bytes == 10  # what one at a time needs, no more
    assert pool.take((10,)) is steady


def test_the_frame_pool_keeps_buffers_by_shape():
    pool = jpeg._FramePool()
    small = pool.take((2, 2))
    pool.release(small)
    other = pool.take((4, 1))
    assert other is not small and other.shape == (4, 1) and pool.fresh == 2


def test_bursts_of_two_shapes_in_turn_each_find_their_buffers_warm():
    pool = jpeg._FramePool()
    for _ in range(3):
        for shape, count in (((6, 8, 3), 12), ((3, 4, 3), 30)):  # a large frame's burst, then a small one's
            taken = [pool.take(shape) for _ in range(count)]
            for buffer in taken:
                pool.release(buffer)
    assert pool.fresh == 12 + 30  # only the first round allocated


@needs_both_backends
def test_threads_encode_at_once_each_in_its_own_buffer(make_frame):
    frames = [make_frame(48 + i, 64, seed=i) for i in range(4)]
    expected = [simplejpeg.encode_jpeg(f, quality=95, colorspace="BGR", colorsubsampling="420") for f in frames]
    results: dict[int, list[bytes]] = {i: [] for i in range(4)}

    def encode_many(index: int) -> None:
        for _ in range(25):
            results[index].append(encode_jpeg(frames[index]))
            results[index].append(jpeg_of(prepare_image(frames[index])))

    threads = [threading.Thread(target=encode_many, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(results[i] == [expected[i]] * 50 for i in range(4))
