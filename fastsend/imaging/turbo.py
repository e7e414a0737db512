"""libjpeg-turbo's TurboJPEG API through ctypes: JPEGs of frames, into reused buffers.

PyTurboJPEG's ``encode`` builds a compressor and lets libjpeg-turbo allocate a worst-case
output buffer for every image (about 6 MB for a 1080p frame, fresh pages to fault in each
time), then copies the JPEG out of it. Here each thread keeps one compressor and one output
buffer, and the JPEG is read straight from that buffer.

The library is found where PyTurboJPEG looks for it. ctypes releases the GIL during each
call, so threads compress in parallel.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import threading
from ctypes import POINTER, byref, c_char_p, c_int, c_ulong, c_void_p
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["PIXEL_FORMATS", "TurboJpeg", "load_turbojpeg"]

# TurboJPEG's enums (turbojpeg.h): pixel formats, and chroma subsamplings by fastsend's names.
PIXEL_FORMATS = {"RGB": 0, "BGR": 1, "GRAY": 6, "RGBA": 7, "BGRA": 8}
_SUBSAMPLINGS = {"444": 0, "422": 1, "420": 2, "440": 4, "411": 5}
_SAMP_GRAY = 3
_FLAG_NOREALLOC = 1024  # the output buffer is ours and large enough: never reallocated
_ERR_WARNING = 0


class _Compressor:
    """One thread's TurboJPEG compressor and output buffer; destroyed with the thread's data."""

    def __init__(self, init: Any, destroy: Any) -> None:
        self._destroy = destroy
        self.handle: int = init()
        if not self.handle:
            raise MemoryError("libturbojpeg could not create a compressor")
        self.output: NDArray[np.uint8] = np.empty(0, np.uint8)

    def room(self, size: int) -> NDArray[np.uint8]:
        """The output buffer, grown to at least ``size`` bytes."""
        if self.output.nbytes < size:
            self.output = np.empty(size, np.uint8)
        return self.output

    def __del__(self) -> None:
        self._destroy(self.handle)


class TurboJpeg:
    """The compressor functions of one loaded libturbojpeg."""

    def __init__(self, library: ctypes.CDLL) -> None:
        self._init = _function(library, "tjInitCompress", [], c_void_p)
        self._destroy = _function(library, "tjDestroy", [c_void_p], c_int)
        self._buffer_size = _function(library, "tjBufSize", [c_int, c_int, c_int], c_ulong)
        self._compress = _function(
            library,
            "tjCompress2",
            [c_void_p, c_void_p, c_int, c_int, c_int, c_int, POINTER(c_void_p), POINTER(c_ulong), c_int, c_int, c_int],
            c_int,
        )
        self._error_text = getattr(library, "tjGetErrorStr2", None)
        if self._error_text is not None:
            self._error_text.argtypes, self._error_text.restype = [c_void_p], c_char_p
        self._error_code = getattr(library, "tjGetErrorCode", None)
        if self._error_code is not None:
            self._error_code.argtypes, self._error_code.restype = [c_void_p], c_int
        self._threads = threading.local()

    def _compressor(self) -> _Compressor:
        compressor: _Compressor | None = getattr(self._threads, "compressor", None)
        if compressor is None:
            compressor = self._threads.compressor = _Compressor(self._init, self._destroy)
        return compressor

    def compress(self, array: NDArray[Any], pixel_format: str, quality: int, subsampling: str) -> memoryview:
        """The JPEG of a uint8 frame whose rows are each contiguous (any row pitch).

        The view is this thread's output buffer: read it before this thread compresses again.
        """
        height, width = array.shape[:2]
        sampling = _SAMP_GRAY if pixel_format == "GRAY" else _SUBSAMPLINGS[subsampling]
        compressor = self._compressor()
        output = compressor.room(self._buffer_size(width, height, sampling))
        pointer, size = c_void_p(output.ctypes.data), c_ulong(output.nbytes)
        status = self._compress(
            compressor.handle, array.ctypes.data, width, array.strides[0], height, PIXEL_FORMATS[pixel_format],
            byref(pointer), byref(size), sampling, quality, _FLAG_NOREALLOC,
        )  # fmt: skip
        self._check(status, compressor.handle)
        return output.data[: size.value]

    def _check(self, status: int, handle: int) -> None:
        if status == 0:
            return
        if self._error_code is not None and self._error_code(handle) == _ERR_WARNING:
            return  # a warning: the image was still made
        text = self._error_text(handle) if self._error_text is not None else b""
        raise RuntimeError(f"libturbojpeg: {(text or b'unknown error').decode(errors='replace')}")


def _function(library: ctypes.CDLL, name: str, argtypes: list[Any], restype: Any) -> Any:
    function = getattr(library, name)
    function.argtypes, function.restype = argtypes, restype
    return function


def _candidate_paths() -> list[str]:
    """Where PyTurboJPEG looks for libturbojpeg, in its order."""
    found = ctypes.util.find_library("turbojpeg")
    paths = [found] if found else []
    try:
        from turbojpeg import DEFAULT_LIB_PATHS
    except ImportError:
        DEFAULT_LIB_PATHS = {}
    paths += [p for p in DEFAULT_LIB_PATHS.get(platform.system(), []) if os.path.exists(p)]
    for directory in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep):
        path = os.path.join(directory, "libturbojpeg.so.0")
        if directory and os.path.exists(path):
            paths.append(path)
    return paths


def load_turbojpeg() -> TurboJpeg:
    """The system's libturbojpeg; ``OSError`` if there is none this process can load."""
    reasons = []
    for path in _candidate_paths():
        try:
            return TurboJpeg(ctypes.CDLL(path))
        except (OSError, AttributeError) as exc:  # not loadable, or too old for the functions used here
            reasons.append(f"{path}: {exc}")
    raise OSError("; ".join(reasons) or "libturbojpeg not found")
