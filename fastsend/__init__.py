"""fastsend: ship vision events from video pipelines to an Event Ingestion Service (v2).

The public API is what this module exports (``__all__``); the subpackages behind it (``send``,
``imaging``, ``integrations``, ``server``, ``cli``) are internal, except the import paths the docs
give: ``fastsend.workflows``, ``fastsend.pipeline``, ``fastsend.metrics`` and ``fastsend.server``.
"""

import logging

from fastsend.annotations import (
    classifications_to_wire,
    instance_segmentations_to_wire,
    keypoints_to_wire,
    object_detections_to_wire,
)
from fastsend.config import Settings
from fastsend.errors import FastsendError, QueueFullError, SpoolLockedError, ValidationError
from fastsend.events import Event
from fastsend.imaging.jpeg import JpegOptions, encode_jpeg, jpeg_backend
from fastsend.imaging.pair import jpeg_reuse
from fastsend.integrations.block import EventWriterSink, prepare_block_event
from fastsend.results import Cause, Result
from fastsend.send.prepare import PreparedEvent, prepare_event
from fastsend.send.retry import RetryPolicy
from fastsend.send.writer import AsyncEventWriter, EventWriter

__version__ = "0.1.0"

# A library logs; the application decides where the lines go.
logging.getLogger("fastsend").addHandler(logging.NullHandler())

__all__ = [
    "AsyncEventWriter",
    "Cause",
    "Event",
    "EventWriter",
    "EventWriterSink",
    "FastsendError",
    "JpegOptions",
    "PreparedEvent",
    "QueueFullError",
    "Result",
    "RetryPolicy",
    "Settings",
    "SpoolLockedError",
    "ValidationError",
    "classifications_to_wire",
    "encode_jpeg",
    "instance_segmentations_to_wire",
    "jpeg_backend",
    "jpeg_reuse",
    "keypoints_to_wire",
    "object_detections_to_wire",
    "prepare_block_event",
    "prepare_event",
]
