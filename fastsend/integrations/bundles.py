"""Vision event bundles: one ``.tar.gz`` per event, as ``roboflow_core/vision_event_bundle@v1`` writes them.

Format version 1: ``payload.json`` (the Vision Events API's event, camelCase, with ``bundleFormatVersion``
1 and ``images[].file`` / ``images[].inputFile`` naming tar members in place of ``sourceId`` /
``inputSourceId``) and the JPEGs under ``images/<uuid4>.jpg``. Limits: 25 MiB per bundle, 1,000
annotations per list, custom file names of at most 200 characters (letters, digits, ``.``, ``_``, ``-``).

Written atomically: a dot-prefixed temporary file in the target directory, fsynced, hard-linked to its
final name (never over an existing file), then the directory fsynced; a file mover that skips dot
files never sees half a bundle. ``read_bundle`` is the way back, for ``fastsend bundles send``.
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import re
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "BUNDLE_FORMAT_VERSION",
    "MAX_ANNOTATIONS_PER_LIST",
    "MAX_BUNDLE_BYTES",
    "MAX_FILE_NAME_LENGTH",
    "Bundle",
    "BundleError",
    "build_bundle",
    "bundle_path",
    "bundle_payload",
    "cap_annotations",
    "publish_bundle",
    "read_bundle",
    "validate_file_name",
]

logger = logging.getLogger("fastsend")

BUNDLE_FORMAT_VERSION = 1
MAX_BUNDLE_BYTES = 25 * 1024 * 1024  # what the ingest endpoint accepts
MAX_ANNOTATIONS_PER_LIST = 1000  # the consumer's schema caps each annotation list
MAX_FILE_NAME_LENGTH = 200  # leaves room for the temporary file's prefix within 255 bytes
BUNDLE_SUFFIX = ".tar.gz"
PAYLOAD_MEMBER = "payload.json"
_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ANNOTATION_KEYS = ("objectDetections", "classifications", "instanceSegmentations", "keypoints")
# The errors that mean "this file system cannot hard-link"; any other is a real write failure.
_LINK_UNSUPPORTED = frozenset({errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV, errno.EMLINK})


class BundleError(ValueError):
    """A bundle that cannot be written or read as version 1 of the format; the message says which rule."""


def validate_file_name(file_name: str) -> None:
    """A custom bundle name: not empty, at most 200 characters, letters, digits, ``.``, ``_`` and ``-``."""
    if not file_name:
        raise BundleError("`file_name` must not be empty - leave it unset for the default generated name.")
    if len(file_name) > MAX_FILE_NAME_LENGTH:
        raise BundleError(f"`file_name` must be at most {MAX_FILE_NAME_LENGTH} characters long, got {len(file_name)}.")
    if not _FILE_NAME.fullmatch(file_name):
        raise BundleError(
            "`file_name` must start with a letter or digit and may only contain letters, digits, `.`, `_` and `-`, "
            f"got `{file_name}`."
        )


def bundle_path(target_directory: str, timestamp: datetime, event_id: str, file_name: str | None = None) -> str:
    """``event_<UTC timestamp>_<eventId>.tar.gz`` in ``target_directory``, or ``file_name`` (``.tar.gz`` added)."""
    if file_name:
        name = file_name if file_name.endswith(BUNDLE_SUFFIX) else file_name + BUNDLE_SUFFIX
    else:
        name = f"event_{timestamp.strftime('%Y%m%dT%H%M%S_%f')}_{event_id}{BUNDLE_SUFFIX}"
    return os.path.abspath(os.path.join(target_directory, name))


def cap_annotations(annotations: Mapping[str, Any]) -> dict[str, Any]:
    """Each annotation list cut to 1,000 items, with a warning naming the list (the consumer's limit)."""
    capped: dict[str, Any] = {}
    for key, value in annotations.items():
        if key in _ANNOTATION_KEYS and isinstance(value, list) and len(value) > MAX_ANNOTATIONS_PER_LIST:
            logger.warning(
                "vision event bundle: annotation list %r has %d items; only the first %d are written (the limit)",
                key,
                len(value),
                MAX_ANNOTATIONS_PER_LIST,
            )
            value = value[:MAX_ANNOTATIONS_PER_LIST]
        capped[key] = value
    return capped


def bundle_payload(
    *,
    event_id: str,
    timestamp: datetime,
    event_type: str,
    solution: str | None,
    images: list[dict[str, Any]],
    event_data: Mapping[str, Any],
    custom_metadata: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """``payload.json``'s content, its keys in the order Roboflow's block writes them."""
    payload: dict[str, Any] = {
        "bundleFormatVersion": BUNDLE_FORMAT_VERSION,
        "eventId": event_id,
        "eventType": event_type,
        "timestamp": timestamp.isoformat(),
        "images": images,
    }
    if solution:
        payload["useCaseId"] = solution
    if event_data:
        payload["eventData"] = dict(event_data)
    if custom_metadata:
        payload["customMetadata"] = dict(custom_metadata)
    if images:
        payload["displayImagePosition"] = 0
    return payload


def build_bundle(payload: Mapping[str, Any], members: Mapping[str, bytes], mtime: int) -> bytes:
    """The ``.tar.gz`` bytes: ``payload.json`` first, then the image members; past 25 MiB, ``BundleError``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in ((PAYLOAD_MEMBER, json.dumps(payload, indent=2, allow_nan=False).encode()), *members.items()):
            info = tarfile.TarInfo(name=name)
            info.size = len(data)
            info.mtime = mtime
            tar.addfile(info, io.BytesIO(data))
    content = buffer.getvalue()
    if len(content) > MAX_BUNDLE_BYTES:
        raise BundleError(
            f"Bundle size {len(content):,} bytes exceeds the limit of {MAX_BUNDLE_BYTES:,} bytes (25 MiB). "
            "Reduce the number or size of images in this event."
        )
    return content


def publish_bundle(target_path: str, content: bytes) -> None:
    """Write ``content`` at ``target_path`` atomically, never replacing a file; the directory is fsynced."""
    directory = os.path.dirname(os.path.abspath(target_path))
    temp = tempfile.NamedTemporaryFile(
        dir=directory, prefix=".tmp_", suffix=f"_{os.path.basename(target_path)}", delete=False
    )
    try:
        with temp:
            temp.write(content)
            temp.flush()
            os.fsync(temp.fileno())
        _link(temp.name, target_path)
    finally:
        try:
            os.unlink(temp.name)
        except FileNotFoundError:
            pass
        except OSError as exc:
            logger.warning("could not remove the bundle's temporary file %s: %s", temp.name, exc)
    _fsync_directory(directory)


def _link(temp_path: str, target_path: str) -> None:
    exists = BundleError(
        f"cannot write `{target_path}`: the file already exists (a `file_name` must be unique per event)"
    )
    try:
        os.link(temp_path, target_path)
    except FileExistsError:
        raise exists from None
    except OSError as exc:
        if exc.errno not in _LINK_UNSUPPORTED:
            raise
        # FAT-family removable media cannot hard-link: a checked rename is the best left.
        if os.path.exists(target_path):
            raise exists from None
        logger.warning("hard links unsupported for %s: published with a rename", target_path)
        os.replace(temp_path, target_path)


def _fsync_directory(path: str) -> None:
    if os.name == "nt":
        return
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@dataclass(frozen=True)
class Bundle:
    """A bundle read back: its payload and its members by name."""

    path: str
    payload: dict[str, Any]
    members: dict[str, bytes]

    @property
    def event_id(self) -> str:
        return str(self.payload["eventId"])

    def image(self, reference: str | None) -> bytes | None:
        """The bytes of the member an image entry's ``file`` / ``inputFile`` names."""
        return None if reference is None else self.members[reference]


def read_bundle(path: str | os.PathLike[str]) -> Bundle:
    """A bundle file checked against the format: ``BundleError`` naming the rule it breaks."""
    shown = os.fspath(path)
    size = os.path.getsize(shown)
    if size > MAX_BUNDLE_BYTES:
        raise BundleError(f"{shown}: {size:,} bytes is more than the limit of {MAX_BUNDLE_BYTES:,} bytes (25 MiB)")
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(shown, mode="r:gz") as tar:
            for info in tar:
                if info.isfile():
                    extracted = tar.extractfile(info)
                    members[info.name] = extracted.read() if extracted is not None else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"{shown}: not a readable .tar.gz ({exc})") from None
    if PAYLOAD_MEMBER not in members:
        raise BundleError(f"{shown}: no {PAYLOAD_MEMBER}")
    try:
        payload = json.loads(members.pop(PAYLOAD_MEMBER))
    except ValueError as exc:
        raise BundleError(f"{shown}: {PAYLOAD_MEMBER} is not JSON ({exc})") from None
    _check_payload(shown, payload, members)
    return Bundle(shown, payload, members)


def _check_payload(shown: str, payload: Any, members: Mapping[str, bytes]) -> None:
    if not isinstance(payload, dict):
        raise BundleError(f"{shown}: {PAYLOAD_MEMBER} must be an object")
    version = payload.get("bundleFormatVersion")
    if version != BUNDLE_FORMAT_VERSION:
        raise BundleError(f"{shown}: bundleFormatVersion {version!r} is not {BUNDLE_FORMAT_VERSION}")
    for key in ("eventId", "eventType", "timestamp"):
        if not isinstance(payload.get(key), str) or not payload[key]:
            raise BundleError(f"{shown}: {key} {payload.get(key)!r} must be a non-empty string")
    images = payload.get("images", [])
    if not isinstance(images, list) or not all(isinstance(entry, dict) for entry in images):
        raise BundleError(f"{shown}: images must be a list of objects")
    for index, entry in enumerate(images):
        for key in ("file", "inputFile"):
            if key in entry and entry[key] not in members:
                raise BundleError(f"{shown}: images[{index}].{key} {entry[key]!r} is not a member of the bundle")
