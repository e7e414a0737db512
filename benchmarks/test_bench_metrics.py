"""What watching the writers costs: the ledger's books per event, and one scrape of the metrics.

``test_ledger_books`` times one event's book-keeping (``open``, one image's ``count_encode``,
``settle`` as sent) next to the two bucket observations it now includes, so their share reads
from one run. ``test_scrape`` renders the metrics of 1 and 16 open writers (no events in flight).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import fastsend
from fastsend.results import Result
from fastsend.send.ledger import ENCODE_BOUNDS, LATENCY_BOUNDS, Ledger, _Buckets

prometheus_client = pytest.importorskip("prometheus_client", reason='needs "fastsend[metrics]"')
import fastsend.metrics  # noqa: E402

_DELIVERED = Result(False, "1", "stored")


def test_ledger_books(benchmark):
    ledger = Ledger()

    def one_event() -> None:
        ticket = ledger.open()
        ledger.count_encode(0.002)
        ledger.settle(ticket, _DELIVERED)

    benchmark.group = "ledger-per-event"
    benchmark(one_event)


def test_ledger_bucket_observations(benchmark):
    latency, encode = _Buckets(LATENCY_BOUNDS), _Buckets(ENCODE_BOUNDS)

    def both() -> None:
        latency.observe(0.03)
        encode.observe(0.002)

    benchmark.group = "ledger-per-event"
    benchmark(both)


@pytest.fixture
def open_writers(request: pytest.FixtureRequest) -> Iterator[list[fastsend.EventWriter]]:
    writers = [fastsend.EventWriter(f"http://127.0.0.1:9/{n}", encode_threads=1) for n in range(request.param)]
    yield writers
    for writer in writers:
        writer.close(1)


@pytest.mark.parametrize("open_writers", [1, 16], indirect=True, ids=lambda n: f"{n}-writers")
def test_scrape(benchmark, open_writers):
    registry = prometheus_client.CollectorRegistry()
    fastsend.integrations.metrics.register(registry)
    benchmark.group = "metrics-scrape"
    text = benchmark(prometheus_client.generate_latest, registry)
    assert text.count(b"fastsend_events_submitted_total{") == len(open_writers)
