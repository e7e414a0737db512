"""What an image file's header declares, read without decoding it: size, layout, and what a decode costs.

A few hundred bytes can declare a 30000×30000 image; decoding it would take
gigabytes. The service reads the header at POST to refuse images over its
pixel limit, and before making a thumbnail to bound what the decode may hold.

Decode cost, for a decode at ``1/scale`` of full size:

- A sequential JPEG whose first scan holds every component (almost every
  camera's) is decoded a band of rows at a time: it holds the scaled output
  plus row buffers.
- A progressive JPEG, or one whose components come in separate scans, is
  decoded from a buffer of every DCT coefficient of the whole image: 2 bytes per
  pixel of each component (at its subsampled size), whatever the output scale.
- A PNG is decoded whole (OpenCV, into 8-bit BGR): 3 bytes per pixel, and
  about as much again while it decodes (measured: 70 MB for 4000×3000).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["ImageHeader", "read_header"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers (not DHT C4, JPG C8, DAC CC) and those of them that are progressive.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_SOS, _EOI = 0xDA, 0xD9
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7: no length field
_PNG_BYTES_PER_PIXEL = 6
# Rows libjpeg keeps per component besides the output: an MCU row of up to 2×8 lines, twice for context.
_ROW_BUFFER_LINES = 32


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """An image's declared size and how its pixels are laid out in the file."""

    content_type: str
    width: int
    height: int
    components: int
    coefficient_bytes: int = 0  # a JPEG decode that buffers the whole image's DCT coefficients holds these
    scans: int = 1

    @property
    def pixels(self) -> int:
        """Width times height."""
        return self.width * self.height

    def decode_bytes(self, scale: int = 1) -> int:
        """About what decoding to ``1/scale`` of full size, then shrinking that, holds at its peak, in bytes."""
        if self.content_type == "image/png":
            return self.pixels * _PNG_BYTES_PER_PIXEL
        # The decoded pixels, and a 16-bit copy of them while they are box-filtered to size.
        output = -(-self.width // scale) * -(-self.height // scale) * 3 * 3
        rows = self.width * self.components * _ROW_BUFFER_LINES
        return self.coefficient_bytes + rows + output


def read_header(data: bytes) -> ImageHeader | None:
    """The header of a JPEG or PNG file, or ``None`` when it cannot be read."""
    if data.startswith(_PNG_MAGIC):
        return _png_header(data)
    if data.startswith(b"\xff\xd8"):
        return _jpeg_header(data)
    return None


def _png_header(data: bytes) -> ImageHeader | None:
    # IHDR is the first chunk: length, "IHDR", width, height, bit depth, colour type, ..., interlace.
    if len(data) < 29 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return ImageHeader("image/png", width, height, 3)


_Frame = tuple[int, int, int, list[tuple[int, int]]]  # SOF marker, width, height, (h, v) sampling per component


def _frame(marker: int, segment: bytes) -> _Frame | None:
    """A start-of-frame segment: precision, height, width, component count, then (id, HV, table) each."""
    if len(segment) < 6:
        return None
    height, width, count = struct.unpack(">HHB", segment[1:6])
    fields = segment[6 : 6 + 3 * count]
    if count == 0 or len(fields) != 3 * count:
        return None
    sampling = [(fields[i + 1] >> 4, fields[i + 1] & 0x0F) for i in range(0, len(fields), 3)]
    if any(h == 0 or v == 0 for h, v in sampling):
        return None
    return marker, width, height, sampling


def _coefficient_bytes(width: int, height: int, sampling: list[tuple[int, int]]) -> int:
    """The whole image's DCT coefficients: 64 of 2 bytes per 8×8 block of each (subsampled) component."""
    h_max, v_max = max(h for h, _ in sampling), max(v for _, v in sampling)
    blocks = sum(-(-width * h // (8 * h_max)) * -(-height * v // (8 * v_max)) for h, v in sampling)
    return blocks * 128


def _jpeg_header(data: bytes) -> ImageHeader | None:
    """Walks the markers up to the first scan; counts the scans (entropy-coded data escapes 0xFF, so
    every 0xFFDA in the file is a start of scan)."""
    position, frame = 2, None
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        if marker == _EOI:
            return None
        (length,) = struct.unpack(">H", data[position + 2 : position + 4])
        segment = data[position + 4 : position + 2 + length]
        if length < 2 or len(segment) != length - 2:
            return None
        if marker in _SOF_MARKERS and frame is None:
            frame = _frame(marker, segment)
            if frame is None:
                return None
        if marker == _SOS:
            if frame is None or not segment:
                return None
            sof, width, height, sampling = frame
            buffered = sof in _PROGRESSIVE_SOF or segment[0] != len(sampling)
            return ImageHeader(
                "image/jpeg",
                width,
                height,
                len(sampling),
                coefficient_bytes=_coefficient_bytes(width, height, sampling) if buffered else 0,
                scans=data.count(b"\xff\xda", position),
            )
        position += 2 + length
    return None
