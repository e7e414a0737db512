"""Small JPEG thumbnails of stored output images (else input images), made on first request and kept on disk.

A thumbnail is at most :data:`THUMBNAIL_SIDE` pixels on its longer side. A
JPEG is decoded by libjpeg-turbo at a reduced scale (1/2, 1/4 or 1/8: the
decoder skips most of the work), then box-filtered to size. A PNG is decoded
whole by OpenCV (the ``masks`` extra) and resized; without OpenCV, or for a
JPEG libjpeg-turbo cannot convert (CMYK), the image itself is served.

Bounded: before decoding, the image's header says what the decode will hold
(see :mod:`.images`); an image needing more than ``decode_max_bytes``
(default :data:`THUMBNAIL_DECODE_MAX_BYTES`), or a JPEG of more than
:data:`MAX_JPEG_SCANS` scans, gets no thumbnail (a 422 naming the bound). The
service refuses such images at POST already; this guards images stored before.
Thumbnails are made on a small pool of their own (:data:`THUMBNAIL_WORKERS`
threads), so at most that many decodes run at once and they never take the
threads that parse POSTed bodies; two requests for the same thumbnail share
one decode.

Thumbnails live in ``<data_dir>/thumbnails/<event id>.jpg``. An event never
changes, so a thumbnail, once written, is never stale; deleting the folder
only costs their regeneration.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import simplejpeg

from fastsend.imaging.jpeg import downscale, encode_jpeg
from fastsend.server.errors import HttpError
from fastsend.server.images import ImageHeader, read_header
from fastsend.server.store import EventStore

__all__ = [
    "MAX_JPEG_SCANS",
    "THUMBNAIL_DECODE_MAX_BYTES",
    "THUMBNAIL_QUALITY",
    "THUMBNAIL_SIDE",
    "THUMBNAIL_WORKERS",
    "ThumbnailCache",
    "make_thumbnail",
]

logger = logging.getLogger("fastsend.server")

THUMBNAIL_SIDE = 256
THUMBNAIL_QUALITY = 80
THUMBNAIL_WORKERS = 2
THUMBNAIL_DECODE_MAX_BYTES = 64 * 1024 * 1024
# libjpeg-turbo's own limit when asked to limit scans: each scan of a progressive JPEG passes over the image.
MAX_JPEG_SCANS = 500
_JPEG_SCALES = (8, 4, 2)

# What to answer with: a made thumbnail's bytes (small: read whole), or an image file to stream.
Thumbnail = tuple[bytes | Path, str]


class ThumbnailCache:
    """Thumbnails of ``store``'s output images, cached under its data directory; :meth:`close` when done."""

    def __init__(
        self,
        store: EventStore,
        *,
        workers: int = THUMBNAIL_WORKERS,
        decode_max_bytes: int = THUMBNAIL_DECODE_MAX_BYTES,
    ) -> None:
        self._store = store
        self.directory = store.data_dir / "thumbnails"
        self.decode_max_bytes = decode_max_bytes
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fastsend-thumbnail")
        self._making: dict[str, asyncio.Future[Thumbnail]] = {}

    def close(self) -> None:
        """Stop the pool, dropping thumbnails not started yet."""
        self._pool.shutdown(wait=True, cancel_futures=True)

    async def get(self, event_id: str) -> Thumbnail:
        """The thumbnail's bytes (or the image file to serve instead) and its content type.

        Raises ``HttpError``: 404 for no such event, 422 for an image too large to decode here.
        """
        try:
            uuid.UUID(event_id)  # it names a file: nothing else may
        except ValueError:
            raise HttpError(404, f"event {event_id!r} not found") from None
        loop = asyncio.get_running_loop()
        cached = await loop.run_in_executor(None, self._cached, event_id)
        if cached is not None:
            return cached, "image/jpeg"
        making = self._making.get(event_id)
        if making is None:
            making = loop.run_in_executor(self._pool, self._thumbnail, event_id)
            self._making[event_id] = making
            making.add_done_callback(lambda _: self._making.pop(event_id, None))
        return await asyncio.shield(making)

    def _cached(self, event_id: str) -> bytes | None:
        try:
            return (self.directory / f"{event_id}.jpg").read_bytes()
        except FileNotFoundError:
            return None

    def _thumbnail(self, event_id: str) -> Thumbnail:
        cached = self._cached(event_id)  # made while this request waited for the pool
        if cached is not None:
            return cached, "image/jpeg"
        # An event with only an input image shows that one.
        source = self._store.image_file(event_id, "output") or self._store.image_file(event_id, "input")
        if source is None:
            raise HttpError(404, f"event {event_id!r} not found, or it has no image")
        path, content_type = source
        data = path.read_bytes()
        thumbnail = make_thumbnail(data, content_type, decode_max_bytes=self.decode_max_bytes)
        if thumbnail is None:
            return path, content_type
        _write_atomically(self.directory / f"{event_id}.jpg", thumbnail)
        return thumbnail, "image/jpeg"


def make_thumbnail(
    data: bytes, content_type: str, *, decode_max_bytes: int = THUMBNAIL_DECODE_MAX_BYTES
) -> bytes | None:
    """A JPEG of ``data`` at most :data:`THUMBNAIL_SIDE` on its longer side; ``None`` if it cannot be decoded here.

    Raises ``HttpError`` (422) when the decode would pass ``decode_max_bytes`` or the header cannot be read.
    """
    header = read_header(data)
    if header is None:
        raise HttpError(422, f"no thumbnail: the {content_type} image's header cannot be read")
    scale = _jpeg_scale(header) if header.content_type == "image/jpeg" else 1
    _check_bounds(header, scale, decode_max_bytes)
    try:
        pixels = _decode_small(data, header)
    except (ValueError, RuntimeError) as exc:  # simplejpeg: a JPEG libjpeg-turbo cannot convert (e.g. CMYK)
        logger.info("no thumbnail for a %s image (%s); serving the image itself", content_type, exc)
        return None
    if pixels is None:
        return None
    return encode_jpeg(pixels, "BGR" if header.content_type == "image/png" else "RGB", quality=THUMBNAIL_QUALITY)


def _jpeg_scale(header: ImageHeader) -> int:
    """The largest reduction libjpeg-turbo offers that keeps the longer side at least THUMBNAIL_SIDE."""
    longer = max(header.width, header.height)
    return next((scale for scale in _JPEG_SCALES if longer // scale >= THUMBNAIL_SIDE), 1)


def _check_bounds(header: ImageHeader, scale: int, decode_max_bytes: int) -> None:
    size = f"{header.width}×{header.height} {header.content_type}"
    if header.scans > MAX_JPEG_SCANS:
        raise HttpError(422, f"no thumbnail: this {size} has {header.scans} scans, over {MAX_JPEG_SCANS}")
    needed = header.decode_bytes(scale)
    if needed > decode_max_bytes:
        raise HttpError(
            422,
            f"no thumbnail: decoding this {size} would take about {needed // 2**20} MiB,"
            f" over the thumbnail bound of {decode_max_bytes // 2**20} MiB",
        )


def _decode_small(data: bytes, header: ImageHeader) -> npt.NDArray[np.uint8] | None:
    """Pixels at most THUMBNAIL_SIDE on the longer side: RGB from a JPEG, BGR from a PNG (None: no OpenCV)."""
    if header.content_type == "image/jpeg":
        wide = header.width >= header.height
        decoded: npt.NDArray[np.uint8] = simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            min_width=THUMBNAIL_SIDE if wide else 0,
            min_height=0 if wide else THUMBNAIL_SIDE,
            strict=False,
        )
        return downscale(decoded, THUMBNAIL_SIDE)
    return _decode_png(data)


def _decode_png(data: bytes) -> npt.NDArray[np.uint8] | None:
    try:
        import cv2
    except ImportError:
        return None
    bgr: Any = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        return None
    height, width = bgr.shape[:2]
    factor = max(height, width) / THUMBNAIL_SIDE
    if factor <= 1:
        return bgr  # type: ignore[no-any-return]  # cv2 has no type information
    size = (max(1, round(width / factor)), max(1, round(height / factor)))
    return cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)  # type: ignore[no-any-return]  # as above


def _write_atomically(path: Path, data: bytes) -> None:
    # Two services on one data directory may make the same thumbnail at once: each writes its own file,
    # the last rename wins.
    path.parent.mkdir(exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
