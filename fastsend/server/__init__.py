"""Reference Event Ingestion Service (v2 API) for testing and local use.

A small aiohttp service that validates bodies strictly against the v2 wire
contract (with the rules of :mod:`fastsend.events`), stores events durably
(SQLite WAL + fsynced image files), honours ``Idempotency-Key`` and can
inject latency, errors, dropped connections and capacity limits. It bounds
what a client can hold: header, body and idle timeouts, a cap on open
connections, a memory budget for bodies in progress, a limit on every text
field and on the pixels an image declares, and thumbnails decoded within a
memory bound on threads of their own. Bound to loopback it answers only
loopback ``Host`` names; ``/metrics`` speaks Prometheus (the ``metrics`` extra).
It also takes the cloud protocol of Roboflow's Vision Events block
(``/vision-events``, see :mod:`fastsend.server.vision_events`) and stores those
events with the v2 ones.

It is a reference for development and tests, not a production ingestion backend.

- :class:`ReferenceService` runs it on a background thread (tests, embedding).
- :func:`run` serves in the foreground until Ctrl-C / SIGTERM (``fastsend serve``).
- :func:`serve` is the same as a coroutine; ``python -m fastsend.server`` the same from a shell.
"""

from fastsend.server.app import DEFAULT_MAX_BODY_BYTES
from fastsend.server.faults import Faults
from fastsend.server.service import DEFAULT_PORT, ReferenceService, ServiceConfig, run, serve
from fastsend.server.validation import DEFAULT_MAX_IMAGE_PIXELS, EventBody, Image, validate_body

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_PORT",
    "EventBody",
    "Faults",
    "Image",
    "ReferenceService",
    "ServiceConfig",
    "run",
    "serve",
    "validate_body",
]
