"""Small JPEG thumbnails of stored output images, made on first request and kept on disk.

A thumbnail is at most :data:`THUMBNAIL_SIDE` pixels on its longer side. A
JPEG is decoded by libjpeg-turbo at a reduced scale (simplejpeg's
``min_width`` / ``min_height``: the decoder skips most of the work), then
box-filtered to size. A PNG needs OpenCV (the ``masks`` extra); without it
the original PNG is served as its own thumbnail.

Thumbnails live in ``<data_dir>/thumbnails/<event id>.jpg``. An event never
changes, so a thumbnail, once written, is never stale; deleting the folder
only costs their regeneration.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import simplejpeg

from fastsend.jpeg import downscale, encode_jpeg
from fastsend.server.store import EventStore

__all__ = ["THUMBNAIL_QUALITY", "THUMBNAIL_SIDE", "ThumbnailCache", "make_thumbnail"]

logger = logging.getLogger("fastsend.server")

THUMBNAIL_SIDE = 256
THUMBNAIL_QUALITY = 80


class ThumbnailCache:
    """Thumbnails of ``store``'s output images, cached under its data directory."""

    def __init__(self, store: EventStore) -> None:
        self._store = store
        self.directory = store.data_dir / "thumbnails"

    def get(self, event_id: str) -> tuple[bytes, str] | None:
        """``(bytes, content type)`` of the event's thumbnail, or ``None`` when there is no such event.

        ``event_id`` must be a UUID (the caller checks): it names the cached file.
        """
        path = self.directory / f"{event_id}.jpg"
        try:
            return path.read_bytes(), "image/jpeg"
        except FileNotFoundError:
            pass
        image = self._store.image(event_id, "output")
        if image is None:
            return None
        thumbnail = make_thumbnail(image.data, image.content_type)
        if thumbnail is None:
            return image.data, image.content_type
        _write_atomically(path, thumbnail)
        return thumbnail, "image/jpeg"


def make_thumbnail(data: bytes, content_type: str) -> bytes | None:
    """A JPEG of ``data`` at most :data:`THUMBNAIL_SIDE` on its longer side; ``None`` if it cannot be decoded here."""
    try:
        pixels = _decode_small(data, content_type)
    except (ValueError, RuntimeError) as exc:  # simplejpeg: a JPEG libjpeg-turbo cannot convert (e.g. CMYK)
        logger.info("no thumbnail for a %s image (%s); serving the image itself", content_type, exc)
        return None
    if pixels is None:
        return None
    return encode_jpeg(downscale(pixels, THUMBNAIL_SIDE), "RGB", quality=THUMBNAIL_QUALITY)


def _decode_small(data: bytes, content_type: str) -> npt.NDArray[np.uint8] | None:
    """RGB pixels, decoded at the smallest scale that still leaves the longer side ≥ THUMBNAIL_SIDE."""
    if content_type == "image/jpeg":
        height, width, _, _ = simplejpeg.decode_jpeg_header(data)
        wide = width >= height
        decoded: npt.NDArray[np.uint8] = simplejpeg.decode_jpeg(
            data,
            colorspace="RGB",
            min_width=THUMBNAIL_SIDE if wide else 0,
            min_height=0 if wide else THUMBNAIL_SIDE,
            strict=False,
        )
        return decoded
    return _decode_png(data)


def _decode_png(data: bytes) -> npt.NDArray[np.uint8] | None:
    try:
        import cv2
    except ImportError:
        return None
    bgr: Any = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return None if bgr is None else np.ascontiguousarray(bgr[:, :, ::-1])


def _write_atomically(path: Path, data: bytes) -> None:
    # Two requests may make the same thumbnail at once: each writes its own file, the last rename wins.
    path.parent.mkdir(exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
