"""Fixtures of the command-line tests: a JPEG file to send and a reference service to send it to."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import simplejpeg

from fastsend.server import ReferenceService


@pytest.fixture
def jpeg_file(tmp_path: Path, frame: np.ndarray) -> Path:
    path = tmp_path / "frame.jpg"
    path.write_bytes(simplejpeg.encode_jpeg(frame, quality=90, colorspace="BGR"))
    return path


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ReferenceService]:
    with ReferenceService(tmp_path / "service") as running:
        yield running
