"""fastsend: ship vision events from video pipelines to an Event Ingestion Service (v2)."""

import logging

from .annotations import (
    classifications_to_wire,
    instance_segmentations_to_wire,
    keypoints_to_wire,
    object_detections_to_wire,
)
from .block import build_block_request, prepare_block_event
from .config import Settings
from .events import Event, ValidationError
from .jpeg import JpegOptions, encode_jpeg, jpeg_backend
from .jpeg_pair import jpeg_reuse
from .prepare import PreparedEvent, prepare_event, render_body
from .results import Cause, QueueFullError, Result
from .retry import RetryPolicy
from .wire import Endpoint, Post, Request, events_url
from .writer import AsyncEventWriter, EventWriter, EventWriterSink

__version__ = "0.1.0"

# A library logs; the application decides where the lines go.
logging.getLogger("fastsend").addHandler(logging.NullHandler())

__all__ = [
    "AsyncEventWriter",
    "Cause",
    "Endpoint",
    "Event",
    "EventWriter",
    "EventWriterSink",
    "JpegOptions",
    "Post",
    "PreparedEvent",
    "QueueFullError",
    "Request",
    "Result",
    "RetryPolicy",
    "Settings",
    "ValidationError",
    "build_block_request",
    "classifications_to_wire",
    "encode_jpeg",
    "events_url",
    "instance_segmentations_to_wire",
    "jpeg_backend",
    "jpeg_reuse",
    "keypoints_to_wire",
    "object_detections_to_wire",
    "prepare_block_event",
    "prepare_event",
    "render_body",
]
