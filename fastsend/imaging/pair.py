"""An annotated frame for little more than the price of one: the output JPEG reuses the input's segments.

An event's output image is usually its input frame with boxes and labels drawn on it. In a
baseline JPEG with a restart marker every few MCUs, each segment between two markers is coded
from its own MCUs alone: DC prediction starts again at every marker and the Huffman tables are
the standard ones. So the output's JPEG can be the input's with only the segments whose pixels
changed encoded anew. Those are packed into small images (same quality, subsampling and restart
interval, hence the same tables), encoded, cut at their markers and put in place of the input's
segments, whose markers keep their numbers. The result is byte for byte the JPEG an encode of
the whole output with the same settings gives.

The encoder is OpenCV's ``imencode``, the one installed encoder here with a restart interval
(its libjpeg-turbo uses the accurate integer DCT). Without OpenCV, for frames of different sizes
or formats, with ``max_side`` set, or when too much changed, ``encode_pair`` returns None and
the caller encodes both images as usual.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fastsend.config import jpeg_reuse_wanted
from fastsend.imaging.jpeg import JpegOptions, RawImage

__all__ = [
    "MAX_CHANGED_SHARE",
    "Layout",
    "changed_segments",
    "encode_pair",
    "encode_with_restarts",
    "jpeg_reuse",
    "layout_of",
    "reuse_applies",
]

logger = logging.getLogger("fastsend")

# MCU width and height in pixels for each chroma subsampling; gray has one 8×8 block per MCU.
_MCU_SIZES = {"444": (8, 8), "422": (16, 8), "420": (16, 16), "440": (8, 16), "411": (32, 8)}
# MCUs per segment, in order of preference; the first that divides the MCUs of a row is used, so that
# no segment wraps to the next row. 4 costs ~1.4 % in size at 1080p; 1 always divides.
_INTERVALS = (4, 5, 3, 6, 8, 2, 7, 1)
#: Above this share of changed segments both frames are encoded whole. The cost of a segment is
#: about that of its coded bytes, and drawn ones are dense: with a label in each changed segment,
#: reuse matched two encodes at ~45 % (BENCHMARKS.md, test_reuse_by_changed_share).
MAX_CHANGED_SHARE = 0.4

_SOS, _EOI, _SOF0, _DRI = 0xDA, 0xD9, 0xC0, 0xDD
_TABLE_MARKERS = frozenset({0xDB, 0xC4})  # DQT, DHT


# ---------------------------------------------------------------- the encoder


@dataclass(frozen=True, slots=True)
class _Codec:
    name: str
    encode: Callable[[NDArray[Any], str, int, str, int], bytes]


_codec: _Codec | None = None
_codec_missing: str | None = None
_codec_lock = threading.Lock()


def _load_codec() -> _Codec | str:
    """OpenCV's JPEG encoder with a restart interval, or why there is none."""
    if jpeg_reuse_wanted() == "off":
        return "off (FASTSEND_JPEG_REUSE=off)"
    try:
        import cv2
    except ImportError:
        return "off: needs OpenCV (pip install opencv-python-headless)"
    wanted = ("IMWRITE_JPEG_RST_INTERVAL", "IMWRITE_JPEG_SAMPLING_FACTOR")
    if not all(hasattr(cv2, name) for name in wanted):
        return f"off: OpenCV {cv2.__version__} has no restart interval (needs 4.5.5 or later)"
    factors = {name: getattr(cv2, f"IMWRITE_JPEG_SAMPLING_FACTOR_{name}") for name in _MCU_SIZES}
    to_bgr = {"RGB": cv2.COLOR_RGB2BGR, "RGBA": cv2.COLOR_RGBA2BGR}

    def encode(array: NDArray[Any], pixel_format: str, quality: int, subsampling: str, interval: int) -> bytes:
        if pixel_format in to_bgr:
            array = cv2.cvtColor(array, to_bgr[pixel_format])
        params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_RST_INTERVAL, interval]
        if pixel_format != "GRAY":
            params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factors[subsampling]]
        ok, encoded = cv2.imencode(".jpg", array, params)
        if not ok:
            raise RuntimeError(f"OpenCV could not encode a {array.shape} frame")
        return bytes(encoded.data)

    match = re.search(r"libjpeg-turbo \(ver ([\d.]+)", cv2.getBuildInformation())
    library = f"libjpeg-turbo {match.group(1)}" if match else "its libjpeg"
    return _Codec(f"opencv {cv2.__version__} ({library})", encode)


def _active_codec() -> _Codec | None:
    global _codec, _codec_missing
    with _codec_lock:
        if _codec is None and _codec_missing is None:
            loaded = _load_codec()
            if isinstance(loaded, str):
                _codec_missing = loaded
            else:
                _codec = loaded
        return _codec


def jpeg_reuse() -> str:
    """Whether an output frame drawn over its input reuses the input's JPEG segments, and with what.

    ``"opencv 4.12.0 (libjpeg-turbo 3.1.0): restart marker every 4 MCUs …"`` when it does (both
    images of such an event are then encoded by OpenCV, with restart markers), else ``"off…"``
    and why: both images are encoded by ``jpeg_backend()``.
    """
    codec = _active_codec()
    if codec is None:
        assert _codec_missing is not None
        return _codec_missing
    preferred = _INTERVALS[0]
    return (
        f"{codec.name}: restart marker every {preferred} MCUs (fewer when the MCUs of a row are not a "
        f"multiple of {preferred}); reused when under {MAX_CHANGED_SHARE:.0%} of the segments changed"
    )


def encode_with_restarts(array: NDArray[Any], pixel_format: str, options: JpegOptions, interval: int) -> bytes:
    """``array`` as a JPEG with a restart marker every ``interval`` MCUs: what ``encode_pair`` reuses."""
    codec = _active_codec()
    if codec is None:
        raise RuntimeError(jpeg_reuse())
    return codec.encode(array, pixel_format, options.quality, options.subsampling, interval)


# ---------------------------------------------------------------- where the segments are


@dataclass(frozen=True, slots=True)
class Layout:
    """The segments of one frame size: MCU size in pixels and the restart interval in MCUs.

    Segments are counted row by row: ``rows`` MCU rows of ``per_row`` segments. The last row is
    shorter than an MCU when the height is not a multiple of it, and the last segment of each row
    narrower when the width is not: the encoder pads those from their own edge pixels.
    """

    height: int
    width: int
    mcu_height: int
    mcu_width: int
    interval: int

    @property
    def segment_width(self) -> int:
        return self.interval * self.mcu_width

    @property
    def rows(self) -> int:
        return -(-self.height // self.mcu_height)

    @property
    def per_row(self) -> int:
        return -(-self.width // self.segment_width)

    @property
    def whole_rows(self) -> int:
        """MCU rows of full height."""
        return self.height // self.mcu_height

    @property
    def whole_per_row(self) -> int:
        """Segments of full width in a row."""
        return self.width // self.segment_width


def layout_of(height: int, width: int, pixel_format: str, subsampling: str) -> Layout:
    """Where the segments of a ``height×width`` frame lie when encoded with ``subsampling``."""
    mcu_width, mcu_height = (8, 8) if pixel_format == "GRAY" else _MCU_SIZES[subsampling]
    columns = -(-width // mcu_width)
    interval = next(n for n in _INTERVALS if columns % n == 0)
    return Layout(height, width, mcu_height, mcu_width, interval)


def changed_segments(layout: Layout, output: NDArray[Any], input: NDArray[Any]) -> NDArray[np.bool_]:
    """A ``rows × per_row`` map of the segments where ``output`` and ``input`` differ in any byte.

    Compared eight bytes at a time (a segment is a multiple of eight bytes wide), folded per MCU
    row first: about 0.5 ms at 1080p.
    """
    height = layout.height
    # Viewed as 8-byte words, a row must be contiguous: a strided frame (copy=False) is compared from a copy.
    out_rows = np.ascontiguousarray(output.reshape(height, -1))
    in_rows = np.ascontiguousarray(input.reshape(height, -1))
    row_bytes = out_rows.shape[1]
    segment_bytes = layout.segment_width * (row_bytes // layout.width)
    words = row_bytes // 8
    differ = out_rows[:, : words * 8].view(np.uint64) != in_rows[:, : words * 8].view(np.uint64)
    bands = _any_per_band(differ, layout.mcu_height)  # rows × words
    per_segment = segment_bytes // 8
    whole = min(words // per_segment, layout.per_row) if per_segment else 0
    changed = np.zeros((layout.rows, layout.per_row), dtype=bool)
    changed[:, :whole] = bands[:, : whole * per_segment].reshape(layout.rows, whole, per_segment).any(axis=2)
    if whole < layout.per_row:  # the last, narrower segment: the words left and the last few bytes
        rest = bands[:, whole * per_segment :].any(axis=1)
        tail = out_rows[:, words * 8 :] != in_rows[:, words * 8 :]
        changed[:, -1] = rest | _any_per_band(tail, layout.mcu_height).any(axis=1)
    return changed


def _any_per_band(flags: NDArray[np.bool_], band: int) -> NDArray[np.bool_]:
    """``flags`` (one row per pixel row) folded with OR over each band of ``band`` rows."""
    whole = flags.shape[0] // band
    folded = np.asarray(flags[: whole * band].reshape(whole, band, flags.shape[1]).any(axis=1))
    if whole * band < flags.shape[0]:
        folded = np.concatenate([folded, flags[whole * band :].any(axis=0, keepdims=True)])
    return folded


# ---------------------------------------------------------------- the pair


def reuse_applies(output: RawImage, input: RawImage, options: JpegOptions) -> bool:
    """Whether ``encode_pair`` may reuse: frames of one size and format, no downscaling, an encoder not known
    missing."""
    return (
        output.array.shape == input.array.shape
        and output.pixel_format == input.pixel_format
        and options.max_side is None
        and _codec_missing is None
    )


def encode_pair(
    output: RawImage, input: RawImage, options: JpegOptions, *, max_changed_share: float = MAX_CHANGED_SHARE
) -> tuple[bytes, bytes] | None:
    """The JPEGs of ``output`` and ``input``, the output's made of the input's unchanged segments.

    Both carry restart markers and decode to exactly what an encode of each frame alone with
    the same settings gives. None when reuse does not apply (see ``reuse_applies``) or would not
    pay (more than ``max_changed_share`` of the segments changed): encode both as usual then.
    """
    if not reuse_applies(output, input, options) or _active_codec() is None:
        return None
    height, width = input.array.shape[:2]
    layout = layout_of(height, width, input.pixel_format, options.subsampling)
    changed = changed_segments(layout, output.array, input.array)
    if changed.mean() > max_changed_share:
        return None
    input_jpeg = encode_with_restarts(input.array, input.pixel_format, options, layout.interval)
    if not changed.any():
        return input_jpeg, input_jpeg
    patches = _encode_patches(layout, changed, output, options)
    output_jpeg = _splice(layout, input_jpeg, patches)
    if output_jpeg is None:
        logger.warning("JPEG segment reuse: unexpected encoder output; encoding the output frame whole")
        output_jpeg = encode_with_restarts(output.array, output.pixel_format, options, layout.interval)
    return output_jpeg, input_jpeg


@dataclass(frozen=True, slots=True)
class _Patch:
    """A packed image of changed segments: their numbers in the frame in the order it holds them,
    and how many segments it has in all (a grid's last row may end in empty cells)."""

    segments: NDArray[np.intp]
    jpeg: bytes
    cells: int


def _encode_patches(layout: Layout, changed: NDArray[np.bool_], output: RawImage, options: JpegOptions) -> list[_Patch]:
    """The changed segments, packed so that each keeps its own edge padding, encoded.

    Segments of whole MCUs go into a grid; the narrower last segments of the rows into a column,
    so that their right edge is the image's; the segments of a shorter last row into one row,
    so that their bottom edge is the image's.
    """
    frame = output.array if output.array.ndim == 3 else output.array[:, :, None]
    rows, columns = layout.whole_rows, layout.whole_per_row
    per_row, height, width = layout.per_row, layout.mcu_height, layout.segment_width
    packs: list[tuple[NDArray[np.intp], NDArray[Any]]] = []
    grid_rows, grid_columns = np.nonzero(changed[:rows, :columns])
    if len(grid_rows):
        tiles = frame[: rows * height, : columns * width].reshape(rows, height, columns, width, frame.shape[2])
        packs.append((grid_rows * per_row + grid_columns, _grid(tiles, grid_rows, grid_columns, columns)))
    if columns < per_row:
        (edge_rows,) = np.nonzero(changed[:rows, columns])
        if len(edge_rows):
            strips = frame[: rows * height, columns * width :].reshape(rows, height, -1, frame.shape[2])
            packs.append((edge_rows * per_row + columns, strips[edge_rows].reshape(-1, *strips.shape[2:])))
    if rows < layout.rows:
        (bottom,) = np.nonzero(changed[rows])
        if len(bottom):
            pieces = [frame[rows * height :, s * width : (s + 1) * width] for s in bottom]
            packs.append((rows * per_row + bottom, np.concatenate(pieces, axis=1)))
    return [_encode_pack(layout, segments, pack, output.pixel_format, options) for segments, pack in packs]


def _grid(tiles: NDArray[Any], rows: NDArray[np.intp], columns: NDArray[np.intp], most: int) -> NDArray[Any]:
    """The tiles at ``rows``, ``columns`` of ``tiles`` (rows × height × columns × width × channels)
    gathered into one image, row by row, at most ``most`` across; the last cells repeat the last tile."""
    count = len(rows)
    down = -(-count // most)
    across = -(-count // down)
    padded = np.arange(down * across).clip(max=count - 1)
    height, width, channels = tiles.shape[1], tiles.shape[3], tiles.shape[4]
    lines = np.arange(height).reshape(1, height, 1)
    cells: NDArray[Any] = tiles[rows[padded].reshape(down, 1, across), lines, columns[padded].reshape(down, 1, across)]
    return cells.reshape(down * height, across * width, channels)


def _encode_pack(
    layout: Layout, segments: NDArray[np.intp], pack: NDArray[Any], pixel_format: str, options: JpegOptions
) -> _Patch:
    shape = Layout(pack.shape[0], pack.shape[1], layout.mcu_height, layout.mcu_width, layout.interval)
    array = pack[:, :, 0] if pixel_format == "GRAY" else pack
    jpeg = encode_with_restarts(array, pixel_format, options, layout.interval)
    return _Patch(segments, jpeg, shape.rows * shape.per_row)


# ---------------------------------------------------------------- the splice


@dataclass(frozen=True, slots=True)
class _Scan:
    """A JPEG cut up: its header and tables, and where each segment's coded bytes start and end."""

    tables: tuple[bytes, ...]
    starts: NDArray[np.intp]
    ends: NDArray[np.intp]


def _cut(jpeg: bytes, segments: int) -> _Scan | None:
    """``jpeg`` cut at its restart markers; None unless it is one baseline scan of ``segments`` segments."""
    tables: list[bytes] = []
    offset = 2
    while True:
        if offset + 4 > len(jpeg) or jpeg[offset] != 0xFF:
            return None
        marker, length = jpeg[offset + 1], int.from_bytes(jpeg[offset + 2 : offset + 4], "big")
        content = jpeg[offset + 4 : offset + 2 + length]
        if marker in _TABLE_MARKERS or marker == _DRI:
            tables.append(jpeg[offset : offset + 2 + length])
        elif marker == _SOF0:
            tables.append(content[5:])  # the components and their sampling, not the size
        offset += 2 + length
        if marker == _SOS:
            tables.append(content)
            break
    if not jpeg.endswith(b"\xff\xd9"):
        return None
    coded = np.frombuffer(jpeg, np.uint8)
    marks = np.flatnonzero(coded[offset:-2] == 0xFF) + offset
    restarts = marks[(coded[marks + 1] & 0xF8) == 0xD0]
    if len(restarts) != segments - 1:
        return None
    starts = np.concatenate([[offset], restarts + 2])
    ends = np.concatenate([restarts, [len(jpeg) - 2]])
    return _Scan(tuple(tables), starts, ends)


def _splice(layout: Layout, input_jpeg: bytes, patches: list[_Patch]) -> bytes | None:
    """``input_jpeg`` with the segments of ``patches`` put in place of its own; None if anything is amiss."""
    base = _cut(input_jpeg, layout.rows * layout.per_row)
    if base is None:
        return None
    runs: list[tuple[int, int, memoryview]] = []
    for patch in patches:
        scan = _cut(patch.jpeg, patch.cells)
        if scan is None or scan.tables != base.tables:
            return None
        runs += _runs(patch, scan)
    runs.sort(key=lambda run: run[0])
    starts, ends = base.starts.tolist(), base.ends.tolist()
    source = memoryview(input_jpeg)
    pieces: list[memoryview] = []
    kept_from = 0  # between two runs the input's bytes stay, its restart markers with them
    for first, last, coded in runs:
        pieces += (source[kept_from : starts[first]], coded)
        kept_from = ends[last]
    pieces.append(source[kept_from:])
    return b"".join(pieces)


def _runs(patch: _Patch, scan: _Scan) -> list[tuple[int, int, memoryview]]:
    """A patch's segments as runs of consecutive segments of the frame: first, last, and their bytes.

    Inside a run the patch's restart markers are renumbered as the frame's (the marker after
    segment ``n`` is RST ``n mod 8``), so each run is one slice.
    """
    numbers, count = patch.segments, len(patch.segments)  # a grid's empty cells come last
    buffer = bytearray(patch.jpeg)
    np.frombuffer(buffer, np.uint8)[scan.ends[: count - 1] + 1] = 0xD0 + numbers[: count - 1] % 8
    breaks = np.flatnonzero(np.diff(numbers) != 1) + 1
    firsts, lasts = np.concatenate([[0], breaks]), np.concatenate([breaks - 1, [count - 1]])
    begin, end = scan.starts[firsts].tolist(), scan.ends[lasts].tolist()
    coded = memoryview(buffer)
    return [
        (first, last, coded[a:b])
        for first, last, a, b in zip(numbers[firsts].tolist(), numbers[lasts].tolist(), begin, end, strict=True)
    ]
