"""Reference Event Ingestion Service (v2 API) for testing and local use.

A small aiohttp service that validates bodies strictly against the v2 wire
contract, stores events durably (SQLite WAL + fsynced image files), honours
``Idempotency-Key`` and can inject latency, errors, dropped connections and
capacity limits.

- :class:`ReferenceService` runs it on a background thread (tests, embedding).
- :func:`run` serves in the foreground until Ctrl-C / SIGTERM (``fastsend serve``).
- :func:`serve` is the same as a coroutine; ``python -m fastsend.server`` the same from a shell.
"""

from fastsend.server.app import DEFAULT_MAX_BODY_BYTES
from fastsend.server.faults import Faults
from fastsend.server.service import DEFAULT_PORT, ReferenceService, ServiceConfig, run, serve
from fastsend.server.validation import EventBody, Image, validate_body

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
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
