"""Images in, base64 JPEG out: the encoder backends, the accepted image inputs, ownership.

Two libjpeg-turbo bindings give identical bytes for identical settings:
``turbojpeg``, the system's libturbojpeg through ctypes (``fastsend.imaging.turbo``), and
simplejpeg, whose wheels carry their own libjpeg-turbo so a plain ``pip install``
always encodes. Both release the GIL while they compress, so encoder threads run in
parallel.

A snapshot of a frame the caller keeps (``copy=True``) is a plain copy into a warm buffer
of the frame pool: the least the caller's thread (a video loop) can pay. Everything else,
colour conversion included, is the encoder threads' work.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import pybase64
import simplejpeg
from numpy.typing import NDArray

from fastsend.config import JPEG_BACKEND_ENV, SUBSAMPLINGS, jpeg_backend_wanted
from fastsend.events import ValidationError
from fastsend.imaging.turbo import TurboJpeg, load_turbojpeg

__all__ = [
    "EncodedImage",
    "ImageSource",
    "JpegOptions",
    "RawImage",
    "check_image_file",
    "downscale",
    "encode_jpeg",
    "jpeg_backend",
    "prepare_image",
    "release_frame",
    "snapshot",
    "to_base64",
    "to_jpeg",
]

logger = logging.getLogger("fastsend")

_CHANNELS_TO_FORMAT = {"bgr": {1: "GRAY", 3: "BGR", 4: "BGRA"}, "rgb": {1: "GRAY", 3: "RGB", 4: "RGBA"}}
_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
# libjpeg-turbo refuses a larger side ("Maximum supported image dimension is 65500 pixels").
JPEG_MAX_SIDE = 65500
_DATA_URL_SEPARATOR = ";base64,"


@dataclass(frozen=True, slots=True)
class JpegOptions:
    """How raw frames are encoded: quality 1-100, chroma subsampling, optional longest side."""

    quality: int = 95
    subsampling: str = "420"
    max_side: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.quality) or not 1 <= self.quality <= 100:
            raise ValidationError("quality", self.quality, "must be an integer from 1 to 100")
        if self.subsampling not in SUBSAMPLINGS:
            raise ValidationError("subsampling", self.subsampling, f"must be one of {', '.join(SUBSAMPLINGS)}")
        if self.max_side is not None and (not _is_int(self.max_side) or self.max_side < 1):
            raise ValidationError("max_side", self.max_side, "must be an integer ≥ 1 or None")


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True, eq=False)
class RawImage:
    """A validated frame waiting for the encoder; ``pixel_format`` is BGR, RGB, GRAY, BGRA or RGBA.

    ``recyclable`` marks a snapshot in a buffer of the frame pool, returned to it
    once encoded (``release_frame``); the caller's own arrays are never recycled.
    ``borrowed`` marks the caller's own array, handed over with ``copy=False``.
    ``snapshot_seconds`` is the CPU time the caller's thread spent copying it.
    ``quality``, when set, is this image's JPEG quality in place of the writer's.
    """

    array: NDArray[Any]
    pixel_format: str
    recyclable: bool = False
    snapshot_seconds: float = 0.0
    borrowed: bool = False
    quality: int | None = None


@dataclass(frozen=True, slots=True, eq=False)
class EncodedImage:
    """An image that arrived encoded: its base64 text, sent as it is.

    With ``quality`` set it is decoded and encoded again at that quality instead (on the encoder's
    thread): a destination that asks for given qualities gets them whatever the image came as.
    """

    base64: bytes
    quality: int | None = None


ImageSource = RawImage | EncodedImage


# ---------------------------------------------------------------- backends

# An encoder's JPEG: bytes, or a view of the encoding thread's buffer (read before that thread encodes again).
Encoder = Callable[[NDArray[Any], str, int, str], "bytes | memoryview"]


def _simplejpeg_encode(array: NDArray[Any], pixel_format: str, quality: int, subsampling: str) -> bytes:
    if array.ndim == 2:
        array = array[:, :, None]
    sampling = "Gray" if pixel_format == "GRAY" else subsampling
    encoded = simplejpeg.encode_jpeg(array, quality=quality, colorspace=pixel_format, colorsubsampling=sampling)
    return cast(bytes, encoded)


def _load_turbojpeg() -> TurboJpeg | None:
    try:
        return load_turbojpeg()
    except OSError as exc:
        logger.info("libturbojpeg unavailable (%s); encoding with simplejpeg", str(exc).splitlines()[0])
        return None


# name and encoder.
_Backend = tuple[str, Encoder]


def _select_backend() -> _Backend:
    wanted = jpeg_backend_wanted()
    if wanted in ("auto", "turbojpeg"):
        turbo = _load_turbojpeg()
        if turbo is not None:
            return "turbojpeg", turbo.compress
        if wanted == "turbojpeg":
            raise ValidationError(JPEG_BACKEND_ENV, wanted, "needs a libturbojpeg this process can load")
    return "simplejpeg", _simplejpeg_encode


_backend: _Backend | None = None


def _active_backend() -> _Backend:
    global _backend
    if _backend is None:
        _backend = _select_backend()
        logger.info("JPEG encoder backend: %s", _backend[0])
    return _backend


def jpeg_backend() -> str:
    """The JPEG encoder in use: ``"turbojpeg"`` or ``"simplejpeg"``."""
    return _active_backend()[0]


def _rows_contiguous(array: NDArray[Any]) -> bool:
    # Strides, not flags: NumPy calls an axis of length 1 contiguous whatever its stride.
    pixel = array.itemsize * (array.shape[2] if array.ndim == 3 else 1)
    packed = (pixel, array.itemsize)[: array.ndim - 1]
    return array.strides[1:] == packed and array.strides[0] >= array.shape[1] * pixel


def _jpeg(array: NDArray[Any], pixel_format: str, quality: int, subsampling: str) -> bytes | memoryview:
    """The JPEG of a frame: both backends take a row pitch, so a crop is encoded in place."""
    if not _rows_contiguous(array):
        # np.array, not np.ascontiguousarray: that returns a one-row view with a negative stride unchanged.
        array = np.array(array, order="C")
    return _active_backend()[1](array, pixel_format, quality, subsampling)


def encode_jpeg(array: NDArray[Any], pixel_format: str = "BGR", quality: int = 95, subsampling: str = "420") -> bytes:
    """Encode a uint8 frame to JPEG bytes with libjpeg-turbo.

    A view whose rows are each contiguous (a crop) is encoded in place; any other
    layout is copied once.
    """
    return bytes(_jpeg(array, pixel_format, quality, subsampling))


def downscale(array: NDArray[Any], max_side: int) -> NDArray[Any]:
    """``array`` shrunk so that its longer side is at most ``max_side``.

    A box filter by the smallest integer factor that fits: predictable, no OpenCV needed.
    """
    height, width = array.shape[:2]
    factor = -(-max(height, width) // max_side)
    if factor <= 1:
        return array
    # A side shorter than the factor (a thin strip) becomes one pixel, not zero.
    fy, fx = min(factor, height), min(factor, width)
    h, w = height // fy, width // fx
    cropped = array[: h * fy, : w * fx].astype(np.uint16)
    blocks = cropped.reshape(h, fy, w, fx, *array.shape[2:])
    return cast(NDArray[Any], (blocks.sum(axis=(1, 3)) // (fy * fx)).astype(np.uint8))


def to_base64(source: ImageSource, options: JpegOptions) -> bytes:
    """The base64 text of ``source``: encoded here if raw, as given if already encoded.

    An image's own ``quality`` replaces that of ``options``.
    """
    if isinstance(source, EncodedImage) and source.quality is None:
        return source.base64
    # Annotated, not cast: recent pybase64 ships types (1.5 does); the 1.0 that inference pins has none.
    encoded: bytes = pybase64.b64encode(to_jpeg(source, options))
    return encoded


def to_jpeg(source: ImageSource, options: JpegOptions) -> bytes | memoryview:
    """The JPEG (or the PNG as it came) of ``source``; a view may be of the encoding thread's buffer.

    An image's own ``quality`` replaces that of ``options``; an encoded image with one is encoded again.
    """
    if source.quality is not None:
        options = dataclasses.replace(options, quality=source.quality)
    if isinstance(source, EncodedImage):
        if source.quality is None:
            original: bytes = pybase64.b64decode(source.base64)
            return original
        source = RawImage(_decode(source.base64), "BGR")
    array = source.array
    if options.max_side is not None:
        array = downscale(array, options.max_side)
    return _jpeg(array, source.pixel_format, options.quality, options.subsampling)


def _decode(base64_text: bytes) -> NDArray[Any]:
    """The BGR pixels of a base64 JPEG or PNG (with OpenCV, as the workflow blocks have it)."""
    import cv2

    pixels = cv2.imdecode(np.frombuffer(pybase64.b64decode(base64_text), np.uint8), cv2.IMREAD_COLOR)
    if pixels is None:
        raise ValueError("the image could not be decoded to be encoded again")
    return cast(NDArray[Any], pixels)


# ---------------------------------------------------------------- inputs


_ACCEPTED_INPUTS = (
    "pass a uint8 numpy array (HxWx3 BGR, HxW gray, HxWx4), JPEG/PNG bytes, a base64 string of a JPEG/PNG, "
    "the path of an image file (str or pathlib.Path), a PIL image, or a WorkflowImageData"
)
# Longer strings are never tried as file paths: no file system takes them, and base64 images are long.
_MAX_PATH_CHARS = 4096
# A string ending so that was meant as a path, not as base64 (a dot is not in the base64 alphabet).
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def prepare_image(image: Any, *, field: str = "image", color: str = "bgr", copy: bool = True) -> ImageSource:
    """Validate an image on the caller's thread and take what the encoder needs.

    Accepts an HxWx3 (BGR by default, RGB with ``color="rgb"``), HxW or HxWx1 gray,
    or HxWx4 uint8 array; JPEG or PNG bytes; a base64 string; the path of an image
    file (``str`` or ``os.PathLike``: JPEG and PNG files are sent as they are, other
    formats are decoded with Pillow); a PIL image (RGB, whatever ``color`` says); or
    an object with ``base64_image`` / ``numpy_image`` (inference's ``WorkflowImageData``).
    With ``copy=True`` the caller may overwrite its array as soon as this returns;
    ``copy=False`` hands the array over and the caller must not touch it again.
    """
    if isinstance(image, np.ndarray):
        return _prepare_array(image, field, color, copy)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _prepare_bytes(bytes(image) if copy or not isinstance(image, bytes) else image, field)
    if isinstance(image, str):
        return _prepare_text(image, field)
    if isinstance(image, os.PathLike):
        return _prepare_file(image, field)
    if image is None:
        raise ValidationError(field, image, f"is required; {_ACCEPTED_INPUTS}")
    if _is_pil_image(image):
        return _prepare_pil(image, field)
    # inference's WorkflowImageData: the JPEG/PNG it arrived as is sent as it is, otherwise its pixels.
    # Its base64_image property would JPEG-encode on this thread, so that is read only from simpler
    # stand-ins; the real class is recognised by its private pixel cache.
    cached = getattr(image, "_base64_image", None)
    if isinstance(cached, str) and _looks_like_encoded_image(cached):
        encoded = _base64_image(cached, field)
        if encoded is not None:
            return encoded
    lazy = hasattr(image, "_numpy_image")
    for attribute in ("_numpy_image", "numpy_image") if lazy else ("base64_image", "numpy_image"):
        value = getattr(image, attribute, None)
        if value is not None:
            return prepare_image(value, field=field, color=color, copy=copy)
    raise ValidationError(field, image, f"is not an image; {_ACCEPTED_INPUTS}")


_PIL_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBa"})


def _is_pil_image(image: Any) -> bool:
    # Duck-typed so that Pillow stays optional.
    return all(hasattr(image, name) for name in ("mode", "size", "convert", "__array_interface__"))


def _prepare_pil(image: Any, field: str) -> RawImage:
    """A PIL image as an RGB(A) or gray array; other modes are converted first."""
    try:
        if image.mode not in ("L", "RGB", "RGBA"):
            has_alpha = image.mode in _PIL_ALPHA_MODES or "transparency" in getattr(image, "info", {})
            image = image.convert("L" if image.mode == "1" else "RGBA" if has_alpha else "RGB")
        array = np.asarray(image)  # a fresh array of its own: nothing to snapshot
    except (OSError, ValueError) as exc:  # a damaged lazily opened file, or a mode Pillow cannot convert
        raise ValidationError(field, image, f"must be a readable image convertible to RGB ({exc})") from None
    return dataclasses.replace(_prepare_array(array, field, "rgb", False), borrowed=False)


def _prepare_file(path: str | os.PathLike[str], field: str) -> ImageSource:
    """An image file read now, on the caller's thread: JPEG/PNG as they are, other formats decoded."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        shown = os.fspath(path)
        where = "" if os.path.isabs(shown) else f", relative to {os.getcwd()}"
        reason = exc.strerror or str(exc)
        raise ValidationError(field, shown, f"must be the path of a readable image file ({reason}{where})") from None
    if data.startswith(_JPEG_MAGIC) or data.startswith(_PNG_MAGIC):
        check_image_file(data, field, os.fspath(path))
        return EncodedImage(pybase64.b64encode(data))
    return _prepare_pil(_open_with_pillow(data, field, os.fspath(path)), field)


def _open_with_pillow(data: bytes, field: str, shown: str) -> Any:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ValidationError(field, shown, "must be a JPEG or PNG file (other formats need Pillow)") from None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValidationError(field, shown, f"must be an image file JPEG, PNG or Pillow can read ({exc})") from None
    return image


def _prepare_array(array: NDArray[Any], field: str, color: str, copy: bool) -> RawImage:
    if color not in _CHANNELS_TO_FORMAT:
        raise ValidationError("color", color, "must be 'bgr' or 'rgb'")
    if array.dtype != np.uint8:
        raise ValidationError(f"{field}.dtype", array.dtype, "must be uint8")
    if array.ndim not in (2, 3):
        raise ValidationError(f"{field}.shape", array.shape, "must be HxW or HxWxC")
    channels = 1 if array.ndim == 2 else array.shape[2]
    pixel_format = _CHANNELS_TO_FORMAT[color].get(channels)
    if pixel_format is None:
        raise ValidationError(f"{field}.shape", array.shape, "must have 1, 3 or 4 channels")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValidationError(f"{field}.shape", array.shape, "must not be empty")
    if max(array.shape[:2]) > JPEG_MAX_SIDE:
        raise ValidationError(f"{field}.shape", array.shape, f"must be at most {JPEG_MAX_SIDE} pixels per side (JPEG)")
    if array.ndim == 3 and channels == 1:
        array = array[:, :, 0]
    if copy:
        return _snapshot_of(array, pixel_format)
    return RawImage(array, pixel_format, borrowed=True)


def snapshot(source: ImageSource) -> ImageSource:
    """``source`` made fastsend's own: a frame handed over with ``copy=False`` is copied now; anything
    else already is, and comes back as it is."""
    if isinstance(source, RawImage) and source.borrowed:
        return _snapshot_of(source.array, source.pixel_format)
    return source


def _snapshot_of(array: NDArray[Any], pixel_format: str) -> RawImage:
    """A copy of the caller's frame in a warm buffer of the frame pool."""
    started = time.thread_time()
    copied = _frame_pool.take(array.shape)
    np.copyto(copied, array)
    return RawImage(copied, pixel_format, recyclable=True, snapshot_seconds=time.thread_time() - started)


#: How long the frame pool keeps the buffers of a shape's last peak after that peak passed.
FRAME_POOL_HOLD_SECONDS = 30.0


@dataclass(slots=True, eq=False)
class _Shelf:
    """The frame pool's buffers of one shape: the idle ones, how many are out, and their recent peak."""

    idle: list[NDArray[Any]]
    out: int = 0
    peak: int = 0
    peak_at: float = 0.0


class _FramePool:
    """Warm buffers for frame snapshots, by shape.

    Copying into memory that was used before costs a fraction of copying into a fresh
    allocation, whose pages must first be faulted in and zeroed (at 1080p ~0.5 ms instead of
    ~1.5 ms per frame, on the caller's thread). So for each shape the pool keeps, idle, as many
    buffers as were out at once at the peak of recent work: a burst that filled the writers'
    queues (``queue_bytes``) and in-flight slots finds that many warm buffers the next time, and
    a steady loop keeps only what it needs. That peak is bounded by the writers' queue and
    in-flight bounds, since every buffer out belongs to an event queued or in flight (or being
    snapshotted); it is forgotten ``FRAME_POOL_HOLD_SECONDS`` after it passed, and the idle
    buffers above it freed.
    """

    def __init__(self, hold_seconds: float = FRAME_POOL_HOLD_SECONDS) -> None:
        self.hold_seconds = hold_seconds
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._shelves: dict[tuple[int, ...], _Shelf] = {}
        self.fresh = 0  # buffers allocated because none of their shape was idle

    def take(self, shape: tuple[int, ...]) -> NDArray[Any]:
        """A uint8 buffer of ``shape``: a warm idle one when there is one."""
        with self._lock:
            shelf = self._shelves.get(shape)
            if shelf is None:
                shelf = self._shelves[shape] = _Shelf([])
            buffer = shelf.idle.pop() if shelf.idle else None
            if buffer is None:
                self.fresh += 1
            shelf.out += 1
            if shelf.out >= shelf.peak:
                shelf.peak, shelf.peak_at = shelf.out, time.monotonic()
        return buffer if buffer is not None else np.empty(shape, dtype=np.uint8)

    def release(self, buffer: NDArray[Any]) -> None:
        """Give back a buffer from ``take``: kept idle while its shape holds no more than its recent peak."""
        with self._lock:
            shelf = self._shelves.get(buffer.shape)
            if shelf is None:  # taken before a fork reset the pool
                return
            shelf.out -= 1
            now = time.monotonic()
            if now - shelf.peak_at > self.hold_seconds:  # the peak passed long ago: what is out now is the peak
                shelf.peak, shelf.peak_at = shelf.out + 1, now
                del shelf.idle[: max(0, len(shelf.idle) + shelf.out + 1 - shelf.peak)]  # the oldest go
            if len(shelf.idle) + shelf.out < shelf.peak:
                shelf.idle.append(buffer)

    @property
    def idle_bytes(self) -> int:
        """Bytes of warm buffers waiting to be taken."""
        with self._lock:
            return sum(buffer.nbytes for shelf in self._shelves.values() for buffer in shelf.idle)


_frame_pool = _FramePool()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_frame_pool._reset)


def release_frame(source: ImageSource | None) -> None:
    """Give a snapshot's buffer back to the pool once nothing will read it again."""
    if isinstance(source, RawImage) and source.recyclable:
        _frame_pool.release(source.array)


# Signatures of image formats that are not sent as they are: named in the refusal rather than shown as bytes.
_OTHER_FORMATS = (
    (b"BM", "BMP"),
    (b"GIF8", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
)


def _other_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp":
        return "HEIF/AVIF" if data[8:12] in (b"heic", b"heix", b"mif1", b"avif", b"msf1") else None
    return next((name for magic, name in _OTHER_FORMATS if data.startswith(magic)), None)


def _prepare_bytes(data: bytes, field: str) -> EncodedImage:
    if not (data.startswith(_JPEG_MAGIC) or data.startswith(_PNG_MAGIC)):
        other = _other_format(data)
        if other is not None:
            rule = f"is a {other} image, which is not sent as is: must be a JPEG or PNG file (or decoded pixels)"
            raise ValidationError(field, f"{len(data)} bytes", rule)
        raise ValidationError(field, data[:16], "bytes must be a JPEG or PNG file")
    check_image_file(data, field, data[:16])
    return EncodedImage(pybase64.b64encode(data))


def check_image_file(data: bytes, field: str, shown: Any) -> str:
    """The content type of a complete JPEG or PNG file, else ``ValidationError``.

    The service's rule, checked by the client too so a cut-off file fails on the
    caller's thread rather than as a 422 later. No full decode: the JPEG header
    must parse and the end-of-image marker must be there.
    """
    if data.startswith(_PNG_MAGIC):
        if data[12:16] != b"IHDR" or not data.endswith(_PNG_IEND):
            raise ValidationError(field, shown, "must be a complete PNG (IHDR first, IEND last; truncated?)")
        return "image/png"
    if not data.startswith(_JPEG_MAGIC):
        start = data[:8].hex() or "nothing"
        raise ValidationError(field, shown, f"must decode to a JPEG or PNG image (starts with {start})")
    try:
        simplejpeg.decode_jpeg_header(data)
    except ValueError as exc:
        raise ValidationError(field, shown, f"must be a readable JPEG ({exc})") from None
    # Some encoders pad the file with NULs after the end-of-image marker.
    if not data.rstrip(b"\x00").endswith(_JPEG_EOI):
        raise ValidationError(field, shown, "must be a complete JPEG (no end-of-image marker; truncated?)")
    return "image/jpeg"


def _prepare_text(text: str, field: str) -> ImageSource:
    """Base64 of a JPEG/PNG (a data URL too), else the path of an image file."""
    encoded = _base64_image(text, field)
    if encoded is not None:
        return encoded
    if len(text) <= _MAX_PATH_CHARS and (os.path.isfile(text) or text.lower().endswith(_IMAGE_SUFFIXES)):
        return _prepare_file(text, field)  # a missing file is refused there, in the words a Path gets
    rule = "is neither standard padded base64 of a JPEG/PNG file nor the path of an existing file"
    raise ValidationError(field, text, f"{rule}; {_ACCEPTED_INPUTS}")


def _looks_like_encoded_image(text: str) -> bool:
    """Whether base64 text starts like a JPEG or PNG file (a data URL prefix allowed), without decoding it."""
    if text.startswith("data:") and _DATA_URL_SEPARATOR in text:
        text = text.split(_DATA_URL_SEPARATOR, 1)[1]
    return text.startswith(("/9j/", "iVBORw0KGgo"))


def _base64_image(text: str, field: str) -> EncodedImage | None:
    if text.startswith("data:") and _DATA_URL_SEPARATOR in text:
        text = text.split(_DATA_URL_SEPARATOR, 1)[1]
    try:
        encoded = text.encode("ascii")
        decoded = pybase64.b64decode(encoded, validate=True)
    except (UnicodeEncodeError, ValueError):
        return None
    if not (decoded.startswith(_JPEG_MAGIC) or decoded.startswith(_PNG_MAGIC)):
        return None
    check_image_file(decoded, field, text)
    return EncodedImage(encoded)
