"""An unreachable service is told once when it goes and once when it is back, with what happened meanwhile;
HTTPS to a plain-HTTP port is told as such."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fastsend import Event
from fastsend.results import Cause, Outcome
from fastsend.send.reachability import Reachability
from fastsend.server import ReferenceService
from tests.support.scripted_server import unused_port

pytestmark = pytest.mark.timeout(60)

REFUSED = Outcome(Cause.CONNECTION, "connection error: refused")
NO_ANSWER = Outcome(Cause.TIMEOUT, "timed out after 5s")
DELIVERED = Outcome(None, "event created", event_id="e1", status=201)
BUSY = Outcome(Cause.HTTP_STATUS, "HTTP 503: busy", status=503)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fastsend" and r.levelno == logging.WARNING]


def test_a_change_of_state_is_told_once_with_the_counts_of_the_time_away(caplog) -> None:
    counts = {"sent": 0, "spooled": 0, "failed": 0, "dropped": 0}
    watch = Reachability("http://ingest:8001", lambda: dict(counts), spooling=True)
    with caplog.at_level(logging.WARNING, logger="fastsend"):
        watch.observe(DELIVERED)  # reachable from the start: nothing to say
        for outcome in (REFUSED, NO_ANSWER, REFUSED):
            watch.observe(outcome)
            counts["spooled"] += 1
        counts["failed"] += 1
        assert watch.unreachable
        watch.observe(BUSY)  # an answer, even a refusal, means it is reachable
        watch.observe(DELIVERED)
        watch.observe(REFUSED)
    lost, back, lost_again = warnings_of(caplog)
    assert lost.startswith("service http://ingest:8001 unreachable: connection error: refused; events go to the spool")
    assert back.startswith("service http://ingest:8001 answers again after ")
    assert back.endswith("meanwhile 3 spooled, 1 failed, 0 dropped events")
    assert "unreachable" in lost_again


def test_with_a_spool_an_unreachable_service_is_one_warning_and_its_return_another(
    make_writer, spool_dir: Path, tmp_path: Path, frame, caplog
) -> None:
    port = unused_port()
    writer = make_writer(f"http://127.0.0.1:{port}", spool_dir=spool_dir, backoff_max=0.2, retry_after_max=0.2)
    with caplog.at_level(logging.WARNING, logger="fastsend"):
        futures = [writer.submit(Event.custom(value=str(i)), frame) for i in range(5)]
        assert writer.flush(timeout=20) == 0
        results = [future.result() for future in futures]
        assert all(result.spooled for result in results)
        assert all(result.message.endswith("spooled, will be sent later") for result in results)
        gone = warnings_of(caplog)
        assert len(gone) == 1 and "unreachable" in gone[0] and "events go to the spool" in gone[0], gone
        with ReferenceService(tmp_path / "service", port=port) as service:
            assert writer.drain(timeout=20) == 0
            assert service.stored_count() == 5
    back = warnings_of(caplog)[1:]
    assert len(back) == 1 and "answers again" in back[0] and "meanwhile 5 spooled, 0 failed" in back[0], back


def test_https_to_a_plain_http_port_says_the_port_does_not_speak_tls(make_writer, tmp_path: Path, frame) -> None:
    with ReferenceService(tmp_path / "service") as service:
        plain = service.url  # http://127.0.0.1:PORT
        writer = make_writer(plain.replace("http://", "https://"), retries=0)
        result = writer.send(Event.custom(value="v"), frame)
    assert result.error_status and result.cause is Cause.TLS
    assert "the port does not speak TLS" in result.message and f"then use {plain}" in result.message
    assert "certificate" not in result.message
