"""Prometheus metrics of the writers: scraped over HTTP from ``fastsend.integrations.metrics.start_http_server`` while
events flow to loopback services, and compared with ``stats()`` and with what the services received."""

from __future__ import annotations

import asyncio
import itertools
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.scripted_server import Reply

from fastsend import AsyncEventWriter, Event, EventWriterSink
from fastsend.results import Cause, Result
from fastsend.send.ledger import ENCODE_BOUNDS, LATENCY_BOUNDS, Ledger
from fastsend.server import Faults

prometheus_client = pytest.importorskip(
    "prometheus_client", reason='needs prometheus_client (pip install "fastsend[metrics]")'
)
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402
from prometheus_client.registry import CollectorRegistry  # noqa: E402

import fastsend.metrics  # noqa: E402

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
KEY = "metrics-test-key-4f1d9c"
WAIT = 20.0  # bounds every flush and drain here
MAX_SCRAPES = 500  # bounds the scraper thread


def event(n: int) -> Event:
    return Event.custom(value=f"event {n}")


# ---------------------------------------------------------------- scraping


@dataclass(frozen=True)
class Scrape:
    """One ``GET /metrics``: its text and its samples."""

    text: str
    samples: list[Any]

    def value(self, name: str, **labels: str) -> float:
        """The one sample named ``name`` whose labels include ``labels``."""
        found = [s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return float(found[0])

    def total(self, name: str, **labels: str) -> float:
        """The sum of every sample named ``name`` whose labels include ``labels`` (0 when there is none)."""
        return sum(s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items())

    def label_values(self, label: str, **labels: str) -> set[str]:
        return {s.labels[label] for s in self.samples if label in s.labels and labels.items() <= s.labels.items()}


@pytest.fixture
def scrape() -> Iterator[Callable[[], Scrape]]:
    """``scrape()``: the metrics of a fresh registry, served by ``start_http_server`` on loopback."""
    registry = CollectorRegistry()
    server, thread = fastsend.integrations.metrics.start_http_server(0, "127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"

    def get() -> Scrape:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]
        return Scrape(text, samples)

    yield get
    server.shutdown()
    server.server_close()
    thread.join(5)


def check_books(scraped: Scrape, url: str) -> None:
    """One scrape of one writer adds up: every submitted event settled one way or pending; one latency per sent."""
    settled = scraped.total("fastsend_events_total", url=url)
    pending = scraped.value("fastsend_events_pending", url=url)
    assert scraped.value("fastsend_events_submitted_total", url=url) == settled + pending
    sent = scraped.value("fastsend_events_total", url=url, outcome="sent")
    assert scraped.value("fastsend_delivery_latency_seconds_count", url=url) == sent


def check_histogram(scraped: Scrape, name: str, url: str, histogram: dict[str, Any]) -> None:
    """The exported histogram is the ledger's: every cumulative bucket, the count and the sum."""
    for bound, cumulative in zip(histogram["bounds"], histogram["cumulative"], strict=True):
        assert scraped.value(f"{name}_bucket", url=url, le=str(bound)) == cumulative
    assert scraped.value(f"{name}_bucket", url=url, le="+Inf") == histogram["count"]
    assert scraped.value(f"{name}_count", url=url) == histogram["count"]
    assert scraped.value(f"{name}_sum", url=url) == pytest.approx(histogram["sum"])


# ---------------------------------------------------------------- events flowing


def test_scrapes_while_events_flow_add_up_and_end_equal_to_stats_and_the_service(
    make_service, make_writer, scrape, frame
):
    service = make_service(api_key=KEY, faults=Faults(latency=0.01))
    writer = make_writer(service.url, api_key=KEY)
    scrapes: list[Scrape] = []
    errors: list[BaseException] = []
    first, stop = threading.Event(), threading.Event()

    def scrape_until_stopped() -> None:
        try:
            for _ in range(MAX_SCRAPES):
                scrapes.append(scrape())
                first.set()
                if stop.wait(0.01):
                    return
        except (OSError, ValueError) as exc:  # a failed GET or an unparsable page: the test's thread reports it
            errors.append(exc)
            first.set()

    scraper = threading.Thread(target=scrape_until_stopped, daemon=True)
    scraper.start()
    assert first.wait(WAIT)
    for n in range(40):
        writer.submit(event(n), frame)
    assert writer.flush(WAIT) == 0
    stop.set()
    scraper.join(WAIT)
    assert not errors, errors
    assert len(scrapes) >= 2

    for during in [s for s in scrapes if writer.url in s.label_values("url")]:
        check_books(during, writer.url)
    for earlier, later in itertools.pairwise(scrapes):
        for name in ("fastsend_events_submitted_total", "fastsend_bytes_sent_total"):
            assert earlier.total(name, url=writer.url) <= later.total(name, url=writer.url)

    final, stats = scrape(), writer.stats()
    assert service.stored_count() == 40
    assert final.value("fastsend_events_submitted_total", url=writer.url) == stats["submitted"] == 40
    assert final.value("fastsend_events_total", url=writer.url, outcome="sent", cause="") == stats["sent"] == 40
    assert final.total("fastsend_events_total", url=writer.url) == 40
    assert final.value("fastsend_bytes_sent_total", url=writer.url) == stats["bytes_sent"] > 40 * 1000
    assert final.value("fastsend_retries_total", url=writer.url) == stats["retried"] == 0
    for gauge in ("fastsend_events_pending", "fastsend_queue_depth", "fastsend_queue_bytes", "fastsend_in_flight"):
        assert final.value(gauge, url=writer.url) == 0
    check_histogram(final, "fastsend_delivery_latency_seconds", writer.url, stats["latency_histogram"])
    check_histogram(final, "fastsend_encode_seconds", writer.url, stats["encode_histogram"])
    assert final.value("fastsend_delivery_latency_seconds_count", url=writer.url) == 40
    assert final.value("fastsend_encode_seconds_count", url=writer.url) == stats["images_encoded"] == 40
    assert not [s for s in final.samples if s.name.startswith("fastsend_spool") and s.labels["url"] == writer.url]
    assert KEY not in final.text and all(KEY not in s.text for s in scrapes)


def test_a_refusing_service_shows_failures_by_cause_and_every_retry(make_service, make_writer, scrape, frame):
    service = make_service(api_key=KEY, faults=Faults(error_rate=1.0, error_status=503))
    writer = make_writer(service.url, api_key=KEY, retries=2, backoff_base=0.01, backoff_max=0.02)
    for n in range(5):
        writer.submit(event(n), frame)
    assert writer.flush(WAIT) == 0

    scraped, stats = scrape(), writer.stats()
    assert stats["failed_by_cause"] == {"http_503": 5}
    assert scraped.value("fastsend_events_total", url=writer.url, outcome="failed", cause="http_503") == 5
    assert scraped.value("fastsend_events_total", url=writer.url, outcome="sent") == 0
    assert scraped.value("fastsend_retries_total", url=writer.url) == stats["retried"] == 10
    assert scraped.value("fastsend_bytes_sent_total", url=writer.url) == stats["bytes_sent"]
    assert scraped.value("fastsend_delivery_latency_seconds_count", url=writer.url) == 0
    assert service.stored_count() == 0
    assert KEY not in scraped.text


def test_queue_and_in_flight_gauges_while_the_service_holds_requests(server, make_writer, scrape, frame):
    server.script = Reply(hold=True)
    writer = make_writer(server.base_url, max_in_flight=2, queue_size=3, overflow="drop_newest")
    for n in range(7):
        writer.submit(event(n), frame)
    server.wait_for_requests(2)

    held, stats = scrape(), writer.stats()
    assert (stats["in_flight"], stats["queued"], stats["pending"]) == (2, 3, 5)
    assert held.value("fastsend_in_flight", url=writer.url) == 2
    assert held.value("fastsend_queue_depth", url=writer.url) == 3
    assert held.value("fastsend_queue_bytes", url=writer.url) == stats["queued_bytes"] == 3 * frame.nbytes
    assert held.value("fastsend_events_pending", url=writer.url) == 5
    dropped = held.value("fastsend_events_total", url=writer.url, outcome="dropped", cause="queue_full_drop_newest")
    assert dropped == 2
    check_books(held, writer.url)

    server.release()
    assert writer.flush(WAIT) == 0
    done = scrape()
    assert done.value("fastsend_events_total", url=writer.url, outcome="sent") == len(server.requests) == 5
    assert done.value("fastsend_in_flight", url=writer.url) == done.value("fastsend_queue_depth", url=writer.url) == 0


# ---------------------------------------------------------------- the spool


def test_spool_gauges_evictions_and_drained_events(server, make_writer, scrape, frame, spool_dir: Path):
    answers: list[int] = []

    def answer(received: object) -> Reply:
        answers.append(503 if refusing.is_set() else 201)
        return Reply(answers[-1])

    refusing = threading.Event()
    refusing.set()
    server.script = answer
    writer = make_writer(
        server.base_url,
        spool_dir=str(spool_dir),
        spool_max_bytes=12_500,
        retries=0,
        backoff_base=0.01,
        backoff_max=0.05,
    )
    for n in range(8):
        writer.submit(event(n), frame)
    assert writer.flush(WAIT) == 0

    spooled, stats = scrape(), writer.stats()
    assert stats["spooled"] == 8
    assert spooled.value("fastsend_events_total", url=writer.url, outcome="spooled") == 8
    entries = spooled.value("fastsend_spool_entries", url=writer.url)
    evicted = spooled.value("fastsend_spool_evicted_total", url=writer.url)
    assert (entries, evicted) == (stats["spool_pending"], stats["spool_evicted"])
    assert entries >= 1 and evicted >= 1 and entries + evicted == 8  # 12,500 bytes hold three of these entries
    assert spooled.value("fastsend_spool_bytes", url=writer.url) == stats["spool_bytes"] > 0
    assert spooled.value("fastsend_spool_quarantined_total", url=writer.url) == stats["quarantined"] == 0

    refusing.clear()
    assert writer.drain(WAIT) == 0
    drained = scrape()
    assert drained.value("fastsend_drained_total", url=writer.url) == writer.stats()["drained"] == entries
    assert answers.count(201) == entries
    assert drained.value("fastsend_spool_entries", url=writer.url) == 0
    assert drained.value("fastsend_spool_bytes", url=writer.url) == 0


# ---------------------------------------------------------------- which writers


def test_each_writer_under_its_url_and_a_closed_writer_disappears(make_service, make_writer, scrape, frame):
    first, second = make_service(), make_service()
    writers = make_writer(first.url), make_writer(second.url)
    for writer, count in zip(writers, (2, 3), strict=True):
        for n in range(count):
            writer.submit(event(n), frame)
        assert writer.flush(WAIT) == 0

    both = scrape()
    assert {w.url for w in writers} <= both.label_values("url")
    assert both.value("fastsend_events_total", url=writers[0].url, outcome="sent") == 2
    assert both.value("fastsend_events_total", url=writers[1].url, outcome="sent") == 3

    writers[0].close(WAIT)
    after = scrape()
    assert writers[0].url not in after.label_values("url")
    assert writers[0].url not in after.text
    assert after.value("fastsend_events_total", url=writers[1].url, outcome="sent") == 3


def test_two_writers_on_one_url_are_two_series_that_sum(make_service, make_writer, scrape, frame):
    service = make_service()
    writers = make_writer(service.url), make_writer(service.url)
    for writer, count in zip(writers, (2, 3), strict=True):
        for n in range(count):
            writer.submit(event(n), frame)
        assert writer.flush(WAIT) == 0

    scraped = scrape()
    url = writers[0].url
    numbers = scraped.label_values("writer", url=url)
    assert len(numbers) == 2
    sent = sorted(scraped.value("fastsend_events_total", url=url, writer=n, outcome="sent") for n in numbers)
    assert sent == [2, 3]
    assert scraped.total("fastsend_events_total", url=url, outcome="sent") == service.stored_count() == 5
    assert scrape().label_values("writer", url=url) == numbers  # a writer keeps its number


def test_the_writers_of_a_block_sink_and_an_async_writer_are_there_too(make_service, scrape, frame):
    block_service, async_service = make_service(), make_service()
    sink = EventWriterSink()
    try:
        result = sink.run(
            event_schema="quality_check",
            qc_result="pass",
            output_image=frame,
            event_ingestion_url=block_service.url,
            fire_and_forget=False,
        )
        assert result["error_status"] is False

        async def send_one() -> str:
            async with AsyncEventWriter(async_service.url) as writer:
                await writer.send(event(0), frame)
                assert scrape().value("fastsend_events_total", url=writer.url, outcome="sent") == 1
                return writer.url

        async_url = asyncio.run(send_one())
        scraped = scrape()
        block_url = sink.writer_for(block_service.url, None).url
        assert scraped.value("fastsend_events_total", url=block_url, outcome="sent") == 1
        assert async_url not in scraped.label_values("url")  # closed by its async with
    finally:
        sink.close(WAIT)


# ---------------------------------------------------------------- registering


def test_register_is_idempotent_per_registry():
    registry = CollectorRegistry()
    collector = fastsend.integrations.metrics.register(registry)
    assert fastsend.integrations.metrics.register(registry) is collector
    assert fastsend.integrations.metrics.register(CollectorRegistry()) is not collector
    text = prometheus_client.generate_latest(registry).decode()
    assert text.count("# TYPE fastsend_events_total counter") == 1


def test_the_names_are_claimed_even_with_no_writer_open():
    registry = CollectorRegistry()
    fastsend.integrations.metrics.register(registry)
    with pytest.raises(ValueError, match="fastsend_retries"):
        prometheus_client.Counter("fastsend_retries", "a clashing metric", registry=registry)


def test_a_registry_whose_names_are_taken_refuses_every_time():
    registry = CollectorRegistry()
    prometheus_client.Gauge("fastsend_in_flight", "a clashing metric", registry=registry)
    for _ in range(2):
        with pytest.raises(ValueError, match="fastsend_in_flight"):
            fastsend.integrations.metrics.register(registry)


def test_the_metrics_page_lists_every_metric_with_its_type():
    metrics_page = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    section = re.search(r"^## The writers' metrics\n(.*?)(?=^## )", metrics_page, re.M | re.S)
    assert section
    listed = {
        name: kind
        for names, kind in re.findall(r"^\| (`fastsend_[^|]+) \| (\w+) \|", section.group(1), re.M)
        for name in re.findall(r"`(\w+)`", names)
    }
    exported = {
        f"{family.name}_total" if family.type == "counter" else family.name: family.type
        for family in fastsend.metrics.WriterCollector().describe()
    }
    assert listed == exported


def test_without_prometheus_client_the_error_names_the_extra():
    hide = "import sys; sys.modules['prometheus_client'] = None; import fastsend.metrics"
    done = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert 'pip install "fastsend[metrics]"' in done.stderr


# ---------------------------------------------------------------- the ledger's buckets


def test_encode_times_fall_in_the_bucket_whose_bound_they_do_not_exceed():
    ledger = Ledger()
    ledger.count_encode(ENCODE_BOUNDS[1])  # on a bound: in its bucket
    ledger.count_encode(ENCODE_BOUNDS[1] * 1.1)  # just above: the next one
    ledger.count_encode(0.004, images=2)  # two images of 0.002 s each
    ledger.count_encode(ENCODE_BOUNDS[-1] * 2)  # above every bound: only in +Inf
    histogram = ledger.snapshot()["encode_histogram"]
    assert histogram["bounds"] == list(ENCODE_BOUNDS)
    expected = [sum(1 for v in (0.001, 0.0011, 0.002, 0.002) if v <= bound) for bound in ENCODE_BOUNDS]
    assert histogram["cumulative"] == expected
    assert histogram["count"] == 5
    assert histogram["sum"] == pytest.approx(0.001 + 0.0011 + 0.004 + ENCODE_BOUNDS[-1] * 2)


def test_only_delivered_events_have_a_latency_bucket():
    ledger = Ledger()
    delivered, failed = ledger.open(), ledger.open()
    delivered.submitted -= 0.3  # as if submitted 0.3 s ago
    ledger.settle(delivered, Result(False, "1", "ok"))
    ledger.settle(failed, Result(True, "", "refused"), Cause.INVALID_REQUEST)
    histogram = ledger.snapshot()["latency_histogram"]
    assert histogram["cumulative"] == [1 if bound >= 0.5 else 0 for bound in LATENCY_BOUNDS]
    assert histogram["count"] == 1
    assert 0.3 <= histogram["sum"] < 0.5
