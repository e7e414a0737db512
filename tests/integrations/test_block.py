"""The Event Writer block's parameters, by their exact names, → one finished request."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta

import numpy as np
import pytest

from fastsend import JpegOptions, ValidationError
from fastsend.imaging.jpeg import encode_jpeg
from fastsend.integrations.block import API_KEY_ENV, build_block_request

# Every schema field the block has, each with a value valid for its own schema.
ALL_SCHEMA_PARAMS = {
    "qc_result": "fail",
    "external_id": "line-7/0042",
    "location": "dock 4",
    "item_count": 12,
    "item_type": "pallet",
    "alert_type": "no_helmet",
    "severity": "high",
    "alert_description": "worker without helmet",
    "custom_value": "anything at all",
}


def body_of(request) -> dict:
    return json.loads(request.body())


@pytest.fixture(autouse=True)
def no_api_key(monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)


@pytest.fixture
def params(make_frame) -> dict:
    """A complete block call, as the workflow engine would make it."""
    return {
        "event_ingestion_url": "http://ingest:8001//",
        "output_image": make_frame(40, 56, seed=1),
        "fire_and_forget": True,
        "disable_sink": False,
        "request_timeout": 5,
    }


@pytest.mark.parametrize(
    "schema, event_data",
    [
        ("quality_check", {"result": "fail", "externalId": "line-7/0042"}),
        ("inventory_count", {"location": "dock 4", "itemCount": 12, "itemType": "pallet", "externalId": "line-7/0042"}),
        (
            "safety_alert",
            {
                "alertType": "no_helmet",
                "severity": "high",
                "description": "worker without helmet",
                "externalId": "line-7/0042",
            },
        ),
        ("custom", {"value": "anything at all", "externalId": "line-7/0042"}),
    ],
)
def test_each_schema_takes_its_own_parameters_and_ignores_the_rest(params, schema, event_data):
    request = build_block_request(event_schema=schema, **params, **ALL_SCHEMA_PARAMS)
    body = body_of(request)
    assert body["event_schema"] == schema
    assert body["event_data"] == event_data


def test_parameters_of_other_schemas_are_not_even_validated(params):
    body = body_of(
        build_block_request(event_schema="quality_check", qc_result="pass", item_count="many", severity="??", **params)
    )
    assert body["event_data"] == {"result": "pass"}


def test_the_whole_request(params, make_frame):
    original = make_frame(40, 56, seed=2)
    request = build_block_request(
        event_schema="safety_alert",
        alert_type="fire",
        input_image=original,
        image_label="cam 3",
        custom_metadata={"camera": "north", "frame": 17},
        object_detections={
            "predictions": [{"x": 5, "y": 6, "width": 2, "height": 4, "confidence": 0.5, "class": "flame"}]
        },
        classifications={"class_name": ["fire"], "confidence": [0.875]},
        **params,
    )
    assert request.url == "http://ingest:8001/v2/events"
    assert request.headers["Content-Type"] == "application/json"
    assert "X-API-Key" not in request.headers
    assert request.size == len(request.body())
    body = body_of(request)
    assert datetime.fromisoformat(body.pop("inference_timestamp")).utcoffset() == timedelta(0)
    assert body == {
        "event_schema": "safety_alert",
        "event_data": {"alertType": "fire"},
        "images": [
            {
                "base64Image": base64.b64encode(encode_jpeg(params["output_image"])).decode(),
                "inputBase64Image": base64.b64encode(encode_jpeg(original)).decode(),
                "label": "cam 3",
                "objectDetections": [
                    {"class": "flame", "x": 5.0, "y": 6.0, "width": 2.0, "height": 4.0, "confidence": 0.5}
                ],
                "classifications": [{"class": "fire", "confidence": 0.875}],
            }
        ],
        "displayImagePosition": 0,
        "custom_metadata": {"camera": "north", "frame": 17},
    }


def test_jpeg_options_are_applied(params):
    request = build_block_request(event_schema="custom", jpeg=JpegOptions(quality=40, subsampling="444"), **params)
    expected = encode_jpeg(params["output_image"], "BGR", 40, "444")
    assert body_of(request)["images"][0]["base64Image"] == base64.b64encode(expected).decode()


def test_an_already_encoded_output_image_is_sent_as_is(params):
    text = base64.b64encode(encode_jpeg(params["output_image"], quality=30)).decode()

    class WorkflowImageData:
        base64_image = text
        numpy_image = params["output_image"]

    params["output_image"] = WorkflowImageData()
    assert body_of(build_block_request(event_schema="custom", **params))["images"][0]["base64Image"] == text


@pytest.mark.parametrize(
    "value, header", [("s3cret", "s3cret"), ("", None), (None, None)], ids=["set", "empty", "unset"]
)
def test_api_key_from_the_environment(monkeypatch, params, value, header):
    if value is not None:
        monkeypatch.setenv(API_KEY_ENV, value)
    request = build_block_request(event_schema="custom", **params)
    assert request.headers.get("X-API-Key") == header
    assert ("X-API-Key" in request.headers) is (header is not None)
    assert request.headers["Idempotency-Key"]


def test_metadata_absent_when_not_given_and_present_when_empty(params):
    assert "custom_metadata" not in body_of(build_block_request(event_schema="custom", **params))
    assert body_of(build_block_request(event_schema="custom", custom_metadata={}, **params))["custom_metadata"] == {}


def test_the_default_url(params):
    del params["event_ingestion_url"]
    assert build_block_request(event_schema="custom", **params).url == "http://localhost:8001/v2/events"


@pytest.mark.parametrize("schema", ["bogus", "Quality_Check", "operator_feedback", "", None])
def test_unknown_schema_is_rejected(params, schema):
    with pytest.raises(ValidationError) as info:
        build_block_request(event_schema=schema, **params)
    assert info.value.field == "event_schema"
    assert "quality_check, inventory_count, safety_alert, custom" in info.value.rule


def test_unknown_parameter_is_a_type_error(params):
    with pytest.raises(TypeError, match="qc_reslt"):
        build_block_request(event_schema="quality_check", qc_reslt="pass", **params)


@pytest.mark.parametrize(
    "schema, bad, field",
    [
        ("quality_check", {"qc_result": "maybe"}, "qc_result"),
        ("inventory_count", {"item_count": -1}, "item_count"),
        ("safety_alert", {"alert_type": "no helmet"}, "alert_type"),
        ("safety_alert", {"alert_description": 5}, "alert_description"),
        ("custom", {"custom_value": "v" * 10_001}, "custom_value"),
        ("custom", {"custom_metadata": {"k": float("nan")}}, "custom_metadata['k']"),
        ("custom", {"output_image": np.zeros((4, 4, 2), np.uint8)}, "output_image.shape"),
    ],
)
def test_invalid_values_are_refused_by_name(params, schema, bad, field):
    with pytest.raises(ValidationError) as info:
        build_block_request(event_schema=schema, **{**params, **bad})
    assert info.value.field == field
