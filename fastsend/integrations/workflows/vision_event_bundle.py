"""The ``fastsend/vision_event_bundle@v1`` block: Roboflow's bundle block, its files written by fastsend.

The manifest is ``roboflow_core/vision_event_bundle@v1``'s (taken from the installed package, the
``type`` string changed), and so are the checks made on the workflow's thread (file system access,
the allowed write directory, the file name, a file that already exists: raised, as Roboflow's block
raises them) and the bundle (``fastsend.integrations.bundles``). What differs is where the work is
done: in fire-and-forget mode the images are snapshotted on the workflow's thread and the JPEG
encoding, the archive and the atomic publish run on a writer thread; a synchronous call returns once
the bundle is on disk (file and directory fsynced).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, Literal

from inference.core.workflows.prototypes.block import WorkflowBlock
from pydantic import ConfigDict
from roboflow_workflows.core_steps.sinks.local_file.v1 import path_is_within_specified_directory
from roboflow_workflows.core_steps.sinks.roboflow.vision_events_bundle.v1 import BlockManifest as RoboflowManifest

from fastsend.imaging.jpeg import ImageSource, JpegOptions, prepare_image, release_frame, to_jpeg
from fastsend.integrations.bundles import (
    build_bundle,
    bundle_path,
    bundle_payload,
    cap_annotations,
    publish_bundle,
    validate_file_name,
)
from fastsend.integrations.vision_events import WORKFLOW_LABEL, predictions_to_annotations, vision_event_data
from fastsend.integrations.workflows.vision_events import COOLDOWN_MESSAGE, Cooldown, StepEvents
from fastsend.results import Cause, Result
from fastsend.send.cloud import INPUT_QUALITY, OUTPUT_QUALITY

__all__ = ["BUNDLE_TYPE", "BlockManifest", "FastsendVisionEventBundleBlockV1", "flush_shared_writers"]

logger = logging.getLogger("fastsend")

BUNDLE_TYPE = "fastsend/vision_event_bundle@v1"
WRITTEN = "Vision event bundle written successfully"
BACKGROUND_MESSAGE = "Vision event bundle written in background task"
CLOSE_FLUSH_SECONDS = 30.0
_JPEG = JpegOptions()


class BlockManifest(RoboflowManifest):  # type: ignore[misc]
    """``roboflow_core/vision_event_bundle@v1``'s manifest under fastsend's ``type``."""

    model_config = ConfigDict(
        json_schema_extra={
            **RoboflowManifest.model_config.get("json_schema_extra", {}),
            "name": "Write Vision Event Bundle (fastsend)",
        }
    )
    type: Literal["fastsend/vision_event_bundle@v1"]


@dataclasses.dataclass(frozen=True)
class BundleJob:
    """One bundle to write: where, its event, and its images taken on the workflow's thread."""

    target_path: str
    event_id: str
    timestamp: datetime
    event_type: str
    solution: str | None
    event_data: dict[str, Any]
    custom_metadata: dict[str, Any]
    annotations: dict[str, Any]
    output: ImageSource | None
    input: ImageSource | None

    def write(self) -> Result:
        """Encode, archive, publish; the Result says where, or why not."""
        try:
            members: dict[str, bytes] = {}
            entry: dict[str, Any] = {}
            for key, source, quality in (
                ("file", self.output, OUTPUT_QUALITY),
                ("inputFile", self.input, INPUT_QUALITY),
            ):
                if source is not None:
                    name = f"images/{uuid.uuid4()}.jpg"
                    members[name] = bytes(to_jpeg(dataclasses.replace(source, quality=quality), _JPEG))
                    entry[key] = name
            if entry:
                entry["label"] = WORKFLOW_LABEL
                entry.update(cap_annotations(self.annotations))
            payload = bundle_payload(
                event_id=self.event_id,
                timestamp=self.timestamp,
                event_type=self.event_type,
                solution=self.solution,
                images=[entry] if entry else [],
                event_data=self.event_data,
                custom_metadata=self.custom_metadata,
            )
            publish_bundle(self.target_path, build_bundle(payload, members, int(self.timestamp.timestamp())))
            return Result.delivered(self.event_id, WRITTEN)
        except Exception as exc:  # noqa: BLE001 - any failure is the bundle's Result, as in Roboflow's block
            logger.warning("could not write vision event bundle %s: %s", self.target_path, exc)
            return Result.failed(
                Cause.INTERNAL_ERROR, f"Error writing vision event bundle: {type(exc).__name__}: {exc}"
            )
        finally:
            release_frame(self.output)
            release_frame(self.input)


class FastsendVisionEventBundleBlockV1(WorkflowBlock):  # type: ignore[misc]
    """Writes one bundle per call: on a writer thread in fire-and-forget mode, before returning otherwise."""

    def __init__(
        self,
        allow_access_to_file_system: bool = True,
        allowed_write_directory: str | None = None,
        disable_sinks: bool = False,
    ) -> None:
        self._allow_access_to_file_system = allow_access_to_file_system
        self._allowed_write_directory = allowed_write_directory
        self._disable_sinks = bool(disable_sinks)
        self._cooldown = Cooldown()
        self._events = StepEvents(BUNDLE_TYPE)

    @classmethod
    def get_init_parameters(cls) -> list[str]:
        return ["allow_access_to_file_system", "allowed_write_directory", "disable_sinks"]

    @classmethod
    def get_manifest(cls) -> type[BlockManifest]:
        return BlockManifest

    def run(
        self,
        *,
        target_directory: str,
        event_type: str,
        input_image: Any = None,
        output_image: Any = None,
        predictions: Any = None,
        custom_metadata: dict[str, Any] | None = None,
        fire_and_forget: bool = True,
        disable_sink: bool = False,
        solution: str | None = None,
        cooldown_seconds: float = 1,
        file_name: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        if self._disable_sinks or disable_sink:
            reason = "workflow execution policy" if self._disable_sinks else "parameter `disable_sink`"
            return _outputs(Result.accepted(f"Sink was disabled by {reason}"))
        if not self._allow_access_to_file_system:
            raise RuntimeError(
                f"`{BUNDLE_TYPE}` block cannot run in this environment - access to the local file system is forbidden "
                "(ALLOW_WORKFLOW_BLOCKS_ACCESSING_LOCAL_STORAGE)"
            )
        if not self._cooldown.take(cooldown_seconds):
            logger.info("Activated `%s` cooldown.", BUNDLE_TYPE)
            return _outputs(Result.accepted(COOLDOWN_MESSAGE), throttled=True)
        if file_name is not None:
            validate_file_name(file_name)
        event_id, timestamp = str(uuid.uuid4()), datetime.now(timezone.utc)
        target_path = bundle_path(target_directory, timestamp, event_id, file_name)
        self._check_target(target_directory, target_path)
        copy = bool(fire_and_forget)
        job = BundleJob(
            target_path=target_path,
            event_id=event_id,
            timestamp=timestamp,
            event_type=event_type,
            solution=solution,
            event_data=vision_event_data(event_type, fields),
            custom_metadata=dict(custom_metadata or {}),
            annotations=predictions_to_annotations(predictions),
            output=None if output_image is None else prepare_image(output_image, field="output_image", copy=copy),
            input=None if input_image is None else prepare_image(input_image, field="input_image", copy=copy),
        )
        if not fire_and_forget:
            return _outputs(job.write(), path=target_path)
        future: Future[Result] = _WRITERS.submit(job.write)
        self._events.track(future)
        _SHARED_EVENTS.track(future)
        return _outputs(Result.accepted(BACKGROUND_MESSAGE))

    def _check_target(self, target_directory: str, target_path: str) -> None:
        """Misconfiguration fails loudly on the workflow's thread, never inside a background write."""
        allowed = self._allowed_write_directory
        for path in (target_directory, target_path):
            if allowed is not None and not path_is_within_specified_directory(path=path, specified_directory=allowed):
                raise ValueError(
                    f"Requested `{BUNDLE_TYPE}` block to write bundles into `{path}` which is not a sub-directory of "
                    f"the allowed write location. Expected sub-directory of {allowed}"
                )
        os.makedirs(target_directory, exist_ok=True)
        if not os.access(target_directory, os.W_OK):
            raise ValueError(
                f"`{BUNDLE_TYPE}` block cannot write to `{target_directory}` - the directory is not writable."
            )
        if os.path.exists(target_path):
            raise ValueError(
                f"`{BUNDLE_TYPE}` block cannot write `{target_path}` - the file already exists. "
                "A custom `file_name` must be unique for every event."
            )

    def close(self, timeout: float = CLOSE_FLUSH_SECONDS) -> int:
        """Wait up to ``timeout`` seconds for this step's bundles; how many are still being written."""
        return self._events.wait(timeout)


def _outputs(result: Result, *, throttled: bool = False, path: str = "") -> dict[str, Any]:
    written = not result.error_status and bool(result.event_id)
    return {**result.as_dict(), "throttling_status": throttled, "bundle_path": path if written else ""}


# The process's bundle writers: two threads, so a slow disk holds up bundles, not workflows.
_WRITERS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fastsend-bundle")


_SHARED_EVENTS = StepEvents(BUNDLE_TYPE)  # every step's bundles, for flush()


def flush_shared_writers(timeout: float | None = None) -> int:
    """Wait for the bundles being written; how many are still pending."""
    return _SHARED_EVENTS.wait(CLOSE_FLUSH_SECONDS if timeout is None else timeout)
