"""EventWriterSink: the Event Writer block's run() behaviours, against a scripted loopback server."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import supervision as sv
from support.scripted_server import Reply, ScriptedServer

import fastsend
from fastsend import EventWriterSink

pytestmark = pytest.mark.timeout(30)

FAST = {"backoff_base": 0.01, "backoff_max": 0.02, "connect_timeout": 1.0, "deadline": 10.0}


def frame(height: int = 32, width: int = 32) -> np.ndarray:
    return np.full((height, width, 3), (40, 90, 200), np.uint8)


@pytest.fixture
def sink():
    made = EventWriterSink(**FAST)
    yield made
    made.close(timeout=1)


def run(sink: EventWriterSink, server: ScriptedServer, **params):
    call = {
        "event_schema": "quality_check",
        "output_image": frame(),
        "event_ingestion_url": server.base_url,
        "qc_result": "pass",
        **params,
    }
    return sink.run(**call)


def test_disable_sink_sends_nothing(server, sink):
    result = run(sink, server, disable_sink=True, fire_and_forget=False)
    assert result["error_status"] is False and result["event_id"] == ""
    assert "disable_sink" in result["message"]
    assert sink.pool.writers() == []  # no writer, so nothing could be in flight
    assert run(sink, server, fire_and_forget=False)["error_status"] is False
    assert len(server.requests) == 1


def test_fire_and_forget_returns_at_once_and_the_event_arrives(server, sink):
    server.script = Reply(hold=True)  # the answer never comes back before run() returns
    result = run(sink, server, external_id="ff-1")
    assert result == {"error_status": False, "event_id": "", "message": result["message"]}
    assert "background" in result["message"]
    (received,) = server.wait_for_requests(1)
    assert received.json["event_data"] == {"result": "pass", "externalId": "ff-1"}
    server.release()
    assert sink.close(timeout=5) == 0


def test_synchronous_run_returns_the_id_from_the_201(server, sink):
    server.script = Reply(201, {"id": 4321})
    result = run(sink, server, fire_and_forget=False)
    assert result == {"error_status": False, "event_id": "4321", "message": result["message"]}


def test_synchronous_run_reports_the_services_detail(server, sink):
    server.script = Reply(400, {"detail": "images[0].base64Image: not a JPEG"})
    result = run(sink, server, fire_and_forget=False)
    assert result["error_status"] is True and result["event_id"] == ""
    assert "400" in result["message"] and "not a JPEG" in result["message"]
    assert len(server.requests) == 1


def test_request_timeout_parameter_bounds_each_attempt(server):
    server.script = Reply(delay=60)
    sink = EventWriterSink(retries=0)
    try:
        result = run(sink, server, fire_and_forget=False, request_timeout=0.3)
        assert result["error_status"] is True
        assert re.fullmatch(r"timed out after 0\.[23]\d*s \(the service may have applied it\).*", result["message"])
        (writer,) = sink.pool.writers()  # the call's timeout was its budget, not the writer's setting
        assert writer.settings.request_timeout == fastsend.Settings().request_timeout
    finally:
        sink.close(timeout=1)


@pytest.mark.parametrize("retries", [0, 4])
def test_a_synchronous_run_returns_within_request_timeout_whatever_the_retries(server, retries):
    # The block makes one attempt bounded by request_timeout; retries may only happen inside that budget.
    server.script = Reply(delay=10)
    sink = EventWriterSink(retries=retries, backoff_base=0.01, backoff_max=0.01)
    try:
        started = time.monotonic()
        result = run(sink, server, fire_and_forget=False, request_timeout=1)
        took = time.monotonic() - started
        assert result["error_status"] is True and "timed out" in result["message"]
        assert took < 2.5, f"a synchronous run took {took:.1f}s with request_timeout=1"
    finally:
        sink.close(timeout=1)


def test_trailing_slashes_are_stripped(server, sink):
    result = run(sink, server, event_ingestion_url=f"http://127.0.0.1:{server.port}///", fire_and_forget=False)
    assert result["error_status"] is False
    assert server.requests[0].path == "/v2/events"


def test_the_url_defaults_to_fastsend_url(server, sink, monkeypatch):
    monkeypatch.setenv("FASTSEND_URL", server.base_url + "/")
    assert run(sink, server, event_ingestion_url=None, fire_and_forget=False)["error_status"] is False
    assert server.requests[0].path == "/v2/events"


@pytest.mark.parametrize(("environment", "expected"), [("ingest-key", "ingest-key"), ("", None), (None, None)])
def test_api_key_comes_from_the_environment(server, sink, monkeypatch, environment, expected):
    if environment is not None:
        monkeypatch.setenv("EVENT_INGESTION_API_KEY", environment)
    assert run(sink, server, fire_and_forget=False)["error_status"] is False
    headers = server.requests[0].headers
    if expected is None:
        assert "X-API-Key" not in headers
    else:
        assert headers.getall("X-API-Key") == [expected]


@pytest.mark.parametrize("metadata", [{}, {"line": "A", "count": 3, "ok": True}, None])
def test_custom_metadata_present_or_absent(server, sink, metadata):
    params = {} if metadata is None else {"custom_metadata": metadata}
    assert run(sink, server, fire_and_forget=False, **params)["error_status"] is False
    body = server.requests[0].json
    if metadata is None:
        assert "custom_metadata" not in body
    else:
        assert body["custom_metadata"] == metadata


ALL_SCHEMA_PARAMETERS = {
    "qc_result": "fail",
    "external_id": "ext-9",
    "location": "dock 4",
    "item_count": 12,
    "item_type": "pallet",
    "alert_type": "no_helmet",
    "severity": "high",
    "alert_description": "worker without helmet",
    "custom_value": "anything",
}


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        ("quality_check", {"result": "fail", "externalId": "ext-9"}),
        ("inventory_count", {"location": "dock 4", "itemCount": 12, "itemType": "pallet", "externalId": "ext-9"}),
        (
            "safety_alert",
            {
                "alertType": "no_helmet",
                "severity": "high",
                "description": "worker without helmet",
                "externalId": "ext-9",
            },
        ),
        ("custom", {"value": "anything", "externalId": "ext-9"}),
    ],
)
def test_parameters_of_other_schemas_are_ignored(server, sink, schema, expected):
    params = {"event_schema": schema, "fire_and_forget": False, **ALL_SCHEMA_PARAMETERS}
    assert run(sink, server, **params)["error_status"] is False
    body = server.requests[0].json
    assert body["event_schema"] == schema
    assert body["event_data"] == expected


def test_images_label_and_predictions_reach_the_body(server, sink):
    detections = sv.Detections(
        xyxy=np.array([[0, 0, 8, 4]], float), confidence=np.array([0.5]), data={"class_name": np.array(["crack"])}
    )
    result = run(
        sink,
        server,
        output_image=frame(32, 32),
        input_image=frame(16, 24),
        image_label="line-3",
        object_detections=detections,
        fire_and_forget=False,
    )
    assert result["error_status"] is False
    received = server.requests[0]
    entry = received.json["images"][0]
    assert entry["label"] == "line-3"
    assert entry["objectDetections"] == [
        {"class": "crack", "x": 4.0, "y": 2.0, "width": 8.0, "height": 4.0, "confidence": 0.5}
    ]
    assert received.image_shape("base64Image") == (32, 32)
    assert received.image_shape("inputBase64Image") == (16, 24)
    assert received.json["displayImagePosition"] == 0


def test_run_many_times_reuses_one_writer_and_one_connection_pool(server, sink):
    assert run(sink, server, fire_and_forget=False)["error_status"] is False
    (writer,) = sink.pool.writers()
    transport = writer._dispatcher.delivery.transport
    for index in range(5):
        fire_and_forget = index % 2 == 0
        result = run(sink, server, fire_and_forget=fire_and_forget, event_ingestion_url=server.base_url + "/")
        assert result["error_status"] is False
        if fire_and_forget:
            assert writer.flush(5) == 0  # one at a time, so the keep-alive connection is free again
    assert sink.pool.writers() == [writer]
    assert writer._dispatcher.delivery.transport is transport
    assert len(server.requests) == 6
    assert len({r.peer for r in server.requests}) == 1  # every request on the same kept-alive connection


def test_a_new_key_replaces_the_writer_and_keeps_its_spool_directory(server, tmp_path, monkeypatch):
    server.script = Reply(201)
    sink = EventWriterSink(**FAST, spool_dir=str(tmp_path / "spool"))
    try:
        first = run(sink, server, fire_and_forget=False)
        (old,) = sink.pool.writers()
        second = run(sink, server, fire_and_forget=False, request_timeout=2.5)
        assert sink.pool.writers() == [old]  # a call's timeout does not make a writer of its own
        monkeypatch.setenv("EVENT_INGESTION_API_KEY", "rotated")
        third = run(sink, server, fire_and_forget=False, request_timeout=2.5)
        assert not first["error_status"] and not second["error_status"] and not third["error_status"]
        (newest,) = sink.pool.writers()
        assert newest is not old and newest.settings.api_key == "rotated"
        assert newest.settings.spool_dir == old.settings.spool_dir  # named by the URL alone
        assert (
            old.submit(fastsend.Event.custom(), np.zeros((4, 4, 3), np.uint8))
            .result(5)
            .message.startswith("writer is closed")
        )
        assert server.requests[-1].headers.get("x-api-key") == "rotated"
    finally:
        sink.close(timeout=1)
