"""The libjpeg-turbo binding: simplejpeg's bytes for every format and setting, rows at any pitch, one
buffer per thread, errors that say what libturbojpeg said, and a clear failure when there is no library."""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

import numpy as np
import pytest
import simplejpeg

from fastsend.imaging import turbo
from fastsend.imaging.turbo import PIXEL_FORMATS, TurboJpeg, load_turbojpeg

try:
    TURBO: TurboJpeg | None = load_turbojpeg()
except OSError:
    TURBO = None

pytestmark = pytest.mark.skipif(TURBO is None, reason="libturbojpeg not loadable here")


def frame(height: int, width: int, channels: int | None = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels is None else (height, width, channels)
    smooth = np.add.outer(np.arange(height), np.arange(width)).astype(np.uint8)
    noise = rng.integers(0, 40, size=shape, dtype=np.uint8)
    return (smooth if channels is None else smooth[:, :, None]) + noise


def reference(array: np.ndarray, pixel_format: str, quality: int, subsampling: str) -> bytes:
    array = array[:, :, None] if array.ndim == 2 else array
    sampling = "Gray" if pixel_format == "GRAY" else subsampling
    return bytes(simplejpeg.encode_jpeg(array, quality=quality, colorspace=pixel_format, colorsubsampling=sampling))


@pytest.mark.parametrize("pixel_format", list(PIXEL_FORMATS))
@pytest.mark.parametrize("subsampling", ["444", "422", "420", "440", "411"])
@pytest.mark.parametrize("quality", [1, 75, 100])
@pytest.mark.parametrize("height, width", [(1, 1), (37, 53), (48, 64)])
def test_compress_gives_simplejpegs_bytes(pixel_format, subsampling, quality, height, width):
    channels = {"GRAY": None, "RGB": 3, "BGR": 3, "RGBA": 4, "BGRA": 4}[pixel_format]
    array = frame(height, width, channels)
    assert TURBO is not None
    assert bytes(TURBO.compress(array, pixel_format, quality, subsampling)) == reference(
        array, pixel_format, quality, subsampling
    )


def test_a_crop_is_compressed_in_place_at_its_row_pitch():
    big = frame(64, 96)
    crop = big[5:45, 7:71]
    assert not crop.flags.c_contiguous and crop.strides[0] == 96 * 3
    assert TURBO is not None
    assert bytes(TURBO.compress(crop, "BGR", 90, "420")) == reference(np.ascontiguousarray(crop), "BGR", 90, "420")


def test_the_jpeg_is_a_view_of_the_threads_buffer_reused_by_its_next_compress():
    assert TURBO is not None
    first = TURBO.compress(frame(32, 32, seed=1), "BGR", 90, "420")
    kept = bytes(first)
    second = TURBO.compress(frame(32, 32, seed=2), "BGR", 90, "420")
    assert isinstance(first, memoryview)
    assert np.shares_memory(np.frombuffer(first, np.uint8), np.frombuffer(second, np.uint8))
    assert kept == reference(frame(32, 32, seed=1), "BGR", 90, "420")


def test_a_larger_frame_grows_the_threads_buffer():
    assert TURBO is not None
    small = bytes(TURBO.compress(frame(8, 8), "BGR", 95, "444"))
    large = frame(600, 800, seed=3)
    assert bytes(TURBO.compress(large, "BGR", 95, "444")) == reference(large, "BGR", 95, "444")
    assert small == reference(frame(8, 8), "BGR", 95, "444")


def test_threads_compress_at_once_each_into_its_own_buffer():
    frames = [frame(40 + i, 56, seed=i) for i in range(4)]
    expected = [reference(f, "BGR", 95, "420") for f in frames]
    results: dict[int, list[bytes]] = {i: [] for i in range(4)}

    def compress_many(index: int) -> None:
        assert TURBO is not None
        for _ in range(30):
            results[index].append(bytes(TURBO.compress(frames[index], "BGR", 95, "420")))

    threads = [threading.Thread(target=compress_many, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert all(results[i] == [expected[i]] * 30 for i in range(4))


def test_an_error_of_libturbojpeg_is_raised_with_its_words():
    assert TURBO is not None
    with pytest.raises(RuntimeError, match=r"^libturbojpeg: .*[Ii]nvalid argument"):
        TURBO.compress(frame(8, 8), "BGR", 101, "420")  # JpegOptions refuses this quality before it gets here
    assert bytes(TURBO.compress(frame(8, 8), "BGR", 95, "420")) == reference(frame(8, 8), "BGR", 95, "420")


def test_no_loadable_library_is_an_oserror_naming_what_was_tried(monkeypatch, tmp_path):
    broken = tmp_path / "libturbojpeg.so.0"
    broken.write_bytes(b"not a shared library")
    monkeypatch.setattr(turbo, "_candidate_paths", lambda: [str(broken)])
    with pytest.raises(OSError, match=str(broken)):
        load_turbojpeg()
    monkeypatch.setattr(turbo, "_candidate_paths", lambda: [])
    with pytest.raises(OSError, match="libturbojpeg not found"):
        load_turbojpeg()


def test_a_library_without_the_compressor_functions_is_skipped_for_the_next_candidate(monkeypatch):
    libc = ctypes.util.find_library("c")
    if libc is None:
        pytest.skip("no C library to stand in for an old libturbojpeg")
    real = turbo._candidate_paths()
    monkeypatch.setattr(turbo, "_candidate_paths", lambda: [libc, *real])
    loaded = load_turbojpeg()  # libc has no tjInitCompress: the real library after it is taken
    assert bytes(loaded.compress(frame(16, 16), "BGR", 80, "420")) == reference(frame(16, 16), "BGR", 80, "420")
