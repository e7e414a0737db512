"""The reference service's ``/metrics``: Prometheus text on a registry of its own, scraped while events flow.

Every test runs its own ReferenceService on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from typing import Any

import numpy as np
import pytest
import requests
import simplejpeg

from fastsend.server import ReferenceService

prometheus_parser = pytest.importorskip("prometheus_client.parser", reason="needs the metrics extra")

TIMEOUT = 10.0
JPEG = simplejpeg.encode_jpeg(np.full((16, 16, 3), 60, np.uint8), quality=90, colorspace="BGR")


def body(index: int) -> bytes:
    return json.dumps(
        {
            "inference_timestamp": "2026-11-26T04:44:12+00:00",
            "event_schema": "custom",
            "event_data": {"value": f"event {index}"},
            "images": [{"base64Image": base64.b64encode(JPEG).decode()}],
            "displayImagePosition": 0,
        }
    ).encode()


def scrape(service: ReferenceService, **headers: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, sorted labels) → value."""
    answer = requests.get(f"{service.url}/metrics", headers=headers, timeout=TIMEOUT)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in prometheus_parser.text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def post(service: ReferenceService, data: bytes, **headers: str) -> requests.Response:
    return requests.post(
        f"{service.url}/v2/events",
        data=data,
        headers={"Content-Type": "application/json", **headers},
        timeout=TIMEOUT,
    )


def test_counts_go_up_by_what_was_posted_while_events_flow(make_service: Any) -> None:
    service = make_service()
    before = scrape(service)
    bodies = [body(index) for index in range(30)]
    scrapes: list[dict[Any, float]] = []
    stop = threading.Event()

    def scrape_meanwhile() -> None:
        while not stop.is_set() and len(scrapes) < 200:
            scrapes.append(scrape(service))

    scraper = threading.Thread(target=scrape_meanwhile)
    scraper.start()
    try:
        statuses = [post(service, data).status_code for data in bodies]
        statuses.append(post(service, bodies[0], **{"Idempotency-Key": "once"}).status_code)
        statuses.append(post(service, bodies[0], **{"Idempotency-Key": "once"}).status_code)  # stores nothing new
        statuses.append(post(service, b"{}").status_code)
    finally:
        stop.set()
        scraper.join(TIMEOUT)
    assert statuses == [201] * 32 + [422]
    after = scrape(service)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route = "/v2/events"
    assert grew("fastsend_service_requests_total", route=route, status="201") == 32
    assert grew("fastsend_service_requests_total", route=route, status="422") == 1
    assert grew("fastsend_service_events_created_total") == 31
    assert grew("fastsend_service_received_bytes_total") == sum(map(len, bodies)) + 2 * len(bodies[0]) + 2
    assert grew("fastsend_service_stored_image_bytes_total") == 31 * len(JPEG)
    assert value(after, "fastsend_service_stored_events") == service.stored_count() == 31
    assert value(after, "fastsend_service_body_budget_in_use_bytes") == 0
    assert value(after, "fastsend_service_body_budget_limit_bytes") == service.config.body_budget_bytes
    # The scrapes taken meanwhile never went backwards.
    created = [value(sample, "fastsend_service_events_created_total") for sample in scrapes]
    assert scrapes and created == sorted(created)
    # /metrics counts its own answers too.
    assert value(after, "fastsend_service_requests_total", route="/metrics", status="200") >= len(scrapes) + 1


def test_two_services_in_one_process_keep_their_own_counts(make_service: Any) -> None:
    first, second = make_service(), make_service()
    for _ in range(3):
        assert post(first, body(0)).status_code == 201
    assert value(scrape(first), "fastsend_service_events_created_total") == 3
    assert value(scrape(second), "fastsend_service_events_created_total") == 0


def test_metrics_want_the_api_key_like_v2(make_service: Any) -> None:
    service = make_service(api_key="k")
    answer = requests.get(f"{service.url}/metrics", timeout=TIMEOUT)
    assert (answer.status_code, answer.json()) == (401, {"detail": "missing X-API-Key header"})
    assert value(scrape(service, **{"X-API-Key": "k"}), "fastsend_service_stored_events") == 0


def test_without_prometheus_client_metrics_answer_501_naming_the_extra(
    make_service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails as if not installed
    service = make_service()
    answer = requests.get(f"{service.url}/metrics", timeout=TIMEOUT)
    assert answer.status_code == 501
    assert answer.json() == {"detail": "metrics need the prometheus_client package: pip install 'fastsend[metrics]'"}
    assert post(service, body(0)).status_code == 201  # the rest works as ever
