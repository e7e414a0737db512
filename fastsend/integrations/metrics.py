"""Prometheus metrics of every open writer in the process, read from their books at scrape time.

::

    import fastsend.metrics

    fastsend.metrics.start_http_server(9100)   # or fastsend.metrics.register() next to your own exporter

Nothing is counted twice: a scrape reads each writer's ``stats()`` (one consistent snapshot of
its ledger, queue and spool), so sending an event costs nothing more for being watched. Every
series carries ``url``, the writer's events URL (never its API key), and ``writer``, a number
given to each writer of the process the first time a scrape sees it: two writers on one URL stay
two series, each a counter that only grows, and ``sum by (url)`` adds them up. A closed writer's
series are gone from the next scrape.

Needs ``prometheus_client`` (``pip install "fastsend[metrics]"``).
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

try:
    import prometheus_client
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry
except ImportError as exc:
    raise ImportError(
        'fastsend.metrics needs prometheus_client: pip install "fastsend[metrics]" (or prometheus_client>=0.20)'
    ) from exc

from fastsend.send import shutdown
from fastsend.send.dispatch import Dispatcher
from fastsend.send.ledger import Histogram

__all__ = ["WriterCollector", "register", "start_http_server"]

_WRITER_LABELS = ("url", "writer")

_numbers: weakref.WeakKeyDictionary[Dispatcher, str] = weakref.WeakKeyDictionary()
_next_number = itertools.count(1)
_registered: weakref.WeakKeyDictionary[CollectorRegistry, WriterCollector] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


class WriterCollector(Collector):
    """A ``prometheus_client`` collector of every open ``EventWriter``'s books, read when scraped."""

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples: what a registry checks for name clashes."""
        return iter(_Families().all())

    def collect(self) -> Iterator[Metric]:
        families = _Families()
        for writer, number in _numbered(shutdown.open_writers()):
            families.add(writer.url, number, writer.snapshot())
        return iter(families.all())


def register(registry: CollectorRegistry = REGISTRY) -> WriterCollector:
    """Expose every writer's metrics through ``registry``; registering again returns the same collector."""
    with _lock:
        collector = _registered.get(registry)
        if collector is None:
            collector = WriterCollector()
            registry.register(collector)  # raises ValueError if a name is taken: then not registered at all
            _registered[registry] = collector
        return collector


def start_http_server(
    port: int, addr: str = "0.0.0.0", registry: CollectorRegistry = REGISTRY
) -> tuple[WSGIServer, threading.Thread]:
    """``register(registry)``, then serve it at ``http://addr:port/metrics`` from a daemon thread.

    Returns prometheus_client's server and thread: ``server.shutdown()`` stops it.
    """
    register(registry)
    return prometheus_client.start_http_server(port, addr, registry=registry)


def _numbered(writers: list[Any]) -> list[tuple[Dispatcher, str]]:
    """The open writers (their dispatchers) with their ``writer`` label, numbered in the order first seen."""
    numbered = []
    with _lock:
        for writer in writers:
            if isinstance(writer, Dispatcher):
                if writer not in _numbers:
                    _numbers[writer] = str(next(_next_number))
                numbered.append((writer, _numbers[writer]))
    return sorted(numbered, key=lambda pair: int(pair[1]))


class _Families:
    """One scrape's metric families, filled writer by writer."""

    def __init__(self) -> None:
        labels = _WRITER_LABELS
        self.events = CounterMetricFamily(
            "fastsend_events",
            "Events settled, by outcome (sent, failed, dropped, spooled, cancelled) and cause (empty for sent)",
            labels=[*labels, "outcome", "cause"],
        )
        self.counters = {
            "submitted": _counter("fastsend_events_submitted", "Events submitted"),
            "retried": _counter("fastsend_retries", "Attempts repeated after a retryable failure"),
            "bytes_sent": _counter("fastsend_bytes_sent", "Request body bytes put on the wire, retries included"),
            "drained": _counter("fastsend_drained", "Spooled events delivered from the spool"),
        }
        self.gauges = {
            "pending": _gauge("fastsend_events_pending", "Events submitted and not settled yet"),
            "queued": _gauge("fastsend_queue_depth", "Events waiting in the queue"),
            "queued_bytes": _gauge("fastsend_queue_bytes", "Bytes of the queued events' frames"),
            "in_flight": _gauge(
                "fastsend_in_flight", "Events holding a slot: being encoded, sent, or waiting to retry"
            ),
        }
        self.spool_counters = {
            "spool_evicted": _counter("fastsend_spool_evicted", "Spool entries evicted to stay under spool_max_bytes"),
            "quarantined": _counter("fastsend_spool_quarantined", "Unreadable spool entries set aside"),
            "spool_write_failures": _counter("fastsend_spool_write_failures", "Events the spool could not store"),
            "drainer_restarts": _counter(
                "fastsend_drainer_restarts", "Times the spool drainer was restarted after an unexpected error"
            ),
        }
        self.spool_gauges = {
            "spool_pending": _gauge("fastsend_spool_entries", "Events waiting in the spool"),
            "spool_bytes": _gauge("fastsend_spool_bytes", "Bytes the spool holds on disk"),
        }
        self.latency = HistogramMetricFamily(
            "fastsend_delivery_latency_seconds",
            "Delivered events' time from submit to the service's acknowledgement",
            labels=list(labels),
        )
        self.encode = HistogramMetricFamily(
            "fastsend_encode_seconds", "CPU time to encode one image (JPEG and base64)", labels=list(labels)
        )

    def add(self, url: str, number: str, stats: dict[str, Any]) -> None:
        labels = [url, number]
        for outcome, cause, count in _settled(stats):
            self.events.add_metric([*labels, outcome, cause], count)
        for key, family in (self.counters | self.gauges).items():
            family.add_metric(labels, stats[key])
        if "spool_pending" in stats:  # a writer with a spool
            for key, family in (self.spool_counters | self.spool_gauges).items():
                family.add_metric(labels, stats[key])
        _add_histogram(self.latency, labels, stats["latency_histogram"])
        _add_histogram(self.encode, labels, stats["encode_histogram"])

    def all(self) -> list[Metric]:
        return [
            self.events,
            *self.counters.values(),
            *self.gauges.values(),
            *self.spool_counters.values(),
            *self.spool_gauges.values(),
            self.latency,
            self.encode,
        ]


def _counter(name: str, documentation: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, labels=_WRITER_LABELS)


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=_WRITER_LABELS)


def _settled(stats: dict[str, Any]) -> Iterator[tuple[str, str, int]]:
    """``(outcome, cause, count)`` of every settled event; the causes as ``stats()`` names them."""
    yield "sent", "", stats["sent"]
    for outcome, by_cause in (("failed", stats["failed_by_cause"]), ("dropped", stats["dropped_by_reason"])):
        for cause, count in sorted(by_cause.items()):
            yield outcome, cause, count
    yield "spooled", "spooled", stats["spooled"]
    yield "cancelled", "cancelled", stats["cancelled"]


def _add_histogram(family: HistogramMetricFamily, labels: list[str], histogram: Histogram) -> None:
    bounds = [str(bound) for bound in histogram["bounds"]]
    buckets = [*zip(bounds, histogram["cumulative"], strict=True), ("+Inf", histogram["count"])]
    family.add_metric(labels, buckets, histogram["sum"])
