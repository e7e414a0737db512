"""The service's ``/metrics``: Prometheus text on a registry of its own.

Each app has its own ``CollectorRegistry`` (not prometheus_client's global
one), so two services in one process never share or collide. Needs the
``metrics`` extra (``prometheus_client``); without it :func:`service_metrics`
returns ``None`` and ``/metrics`` answers 501 saying so.

- ``fastsend_service_requests_total{route, status}``: answers given.
- ``fastsend_service_events_created_total``: events this process stored (a
  repeated ``Idempotency-Key`` stores nothing and is not counted).
- ``fastsend_service_received_bytes_total``: bytes of event bodies received in full.
- ``fastsend_service_stored_image_bytes_total``: image bytes written for them.
- ``fastsend_service_stored_events``: events in the store, at scrape time.
- ``fastsend_service_body_budget_in_use_bytes`` / ``…_limit_bytes``: the
  body memory budget (``--body-budget-bytes``) held now, and its size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

__all__ = ["CONTENT_TYPE", "MISSING_DETAIL", "Metrics", "service_metrics"]

# The classic text format, the one generate_latest writes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MISSING_DETAIL = "metrics need the prometheus_client package: pip install 'fastsend[metrics]'"


class Metrics(Protocol):
    """What the app records; :class:`_PrometheusMetrics` is the one implementation."""

    def answered(self, route: str, status: int) -> None: ...
    def received(self, size: int) -> None: ...
    def stored(self, image_bytes: int) -> None: ...
    def exposition(self) -> bytes: ...


def service_metrics(
    stored_events: Callable[[], int], budget_in_use: Callable[[], int], budget_limit: int
) -> Metrics | None:
    """The metrics of one service, or ``None`` when prometheus_client is not installed."""
    try:
        import prometheus_client  # noqa: F401 - only to learn whether it is there
    except ImportError:
        return None
    return _PrometheusMetrics(stored_events, budget_in_use, budget_limit)


class _PrometheusMetrics:
    def __init__(self, stored_events: Callable[[], int], budget_in_use: Callable[[], int], budget_limit: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        prefix = "fastsend_service"
        self._requests = Counter(
            f"{prefix}_requests", "Answers given, by route and status", ["route", "status"], registry=self.registry
        )
        self._created = Counter(f"{prefix}_events_created", "Events this process stored", registry=self.registry)
        self._received = Counter(
            f"{prefix}_received_bytes", "Bytes of event bodies received in full", registry=self.registry
        )
        self._stored = Counter(
            f"{prefix}_stored_image_bytes", "Image bytes written for stored events", registry=self.registry
        )
        Gauge(f"{prefix}_stored_events", "Events in the store", registry=self.registry).set_function(stored_events)
        Gauge(
            f"{prefix}_body_budget_in_use_bytes", "Bytes of request bodies held now", registry=self.registry
        ).set_function(budget_in_use)
        Gauge(f"{prefix}_body_budget_limit_bytes", "The body memory budget", registry=self.registry).set(budget_limit)

    def answered(self, route: str, status: int) -> None:
        self._requests.labels(route=route, status=str(status)).inc()

    def received(self, size: int) -> None:
        self._received.inc(size)

    def stored(self, image_bytes: int) -> None:
        self._created.inc()
        self._stored.inc(image_bytes)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
