"""``fastsend/vision_events@v1`` beside ``roboflow_core/roboflow_vision_events@v1`` in inference's Execution Engine.

Both blocks run as steps of one workflow on the same inputs, against loopback servers that record every
request: the local event store's bodies (every event type × image combination × with and without
predictions), the cloud's request sequences, the cooldown, and the manifest.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import numpy as np
import pytest
from support.inference import require_inference
from support.scripted_server import Received, Reply, ScriptedServer

require_inference()

from inference.core.workflows.execution_engine.core import ExecutionEngine  # noqa: E402
from support.vision import (  # noqa: E402
    EVENT_TYPES,
    IMAGE_COMBINATIONS,
    PREDICTION_INPUTS,
    decoded,
    frames,
    jpeg_of,
    runtime,
    vision_step,
    workflow,
)

from fastsend.integrations.block import API_KEY_ENV  # noqa: E402

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"),
]

FASTSEND = "fastsend/vision_events@v1"
ROBOFLOW = "roboflow_core/roboflow_vision_events@v1"
LOCAL = {"write_to_event_store": True, "event_store_url": "$inputs.url"}


@pytest.fixture(scope="module", autouse=True)
def plugins():
    with pytest.MonkeyPatch.context() as patch:
        current = [p for p in os.environ.get("WORKFLOWS_PLUGINS", "").split(",") if p]
        patch.setenv("WORKFLOWS_PLUGINS", ",".join([*current, "fastsend.workflows"]))
        patch.delenv(API_KEY_ENV, raising=False)
        yield


def matrix() -> list[tuple[str, str, str | None]]:
    """Every event type × image combination, without predictions and with one kind (each kind in turn)."""
    cases = []
    for type_index, event_type in enumerate(EVENT_TYPES):
        for combo_index, images in enumerate(IMAGE_COMBINATIONS):
            kind = PREDICTION_INPUTS[(type_index + combo_index) % len(PREDICTION_INPUTS)]
            cases += [(event_type, images, None), (event_type, images, kind)]
    return cases


def both(cases: list[tuple[str, str, str | None]], **extra: Any) -> list[dict[str, Any]]:
    steps = []
    for index, (event_type, images, kind) in enumerate(cases):
        for prefix, block in (("fs", FASTSEND), ("rf", ROBOFLOW)):
            steps.append(vision_step(f"{prefix}_{index}", block, event_type, images, kind, **extra))
    return steps


def split_images(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The body without its timestamp and image strings, and the images (JPEG bytes) by key."""
    kept = {k: v for k, v in body.items() if k != "inference_timestamp"}
    images: dict[str, bytes] = {}
    entries = []
    for entry in body["images"]:
        for key in ("base64Image", "inputBase64Image"):
            if key in entry:
                images[key] = base64.b64decode(entry[key])
        entries.append({k: ("<image>" if k in images else v) for k, v in entry.items()})
    kept["images"] = entries
    return kept, images


def by_pair(requests: list[Received]) -> dict[tuple[str, str], dict[str, Any]]:
    """Each side's request body by the step it came from: ("fs" or "rf", case index)."""
    paired = {}
    for request in requests:
        side = "fs" if "Idempotency-Key" in request.headers else "rf"
        paired[(side, request.json["custom_metadata"]["pair"])] = request.json
    return paired


def test_local_bodies_are_roboflows_for_every_type_image_combination_and_prediction_kind():
    cases = matrix()
    engine = ExecutionEngine.init(workflow_definition=workflow(*both(cases, **LOCAL)), init_parameters={})
    with ScriptedServer(Reply(201)) as server:
        results = engine.run(runtime_parameters=runtime("local", url=server.base_url, batch=1))
        engine.close()
    (outputs,) = results
    for index in range(len(cases)):
        ours, theirs = outputs[f"fs_{index}"], outputs[f"rf_{index}"]
        assert ours["error_status"] is theirs["error_status"] is False, (ours, theirs)
        assert ours["message"] == theirs["message"] == "Event written to local event store successfully"
        assert ours["event_id"] and theirs["event_id"]
    assert {r.path for r in server.requests} == {"/v2/events"}
    bodies = by_pair(server.requests)
    assert len(bodies) == 2 * len(cases)
    for index, case in enumerate(cases):
        our_body, our_images = split_images(bodies[("fs", str(index))])
        their_body, their_images = split_images(bodies[("rf", str(index))])
        assert our_body == their_body, case
        assert our_images.keys() == their_images.keys(), case
        for key in our_images:
            assert np.abs(decoded(our_images[key]).astype(int) - decoded(their_images[key])).mean() < 2, (case, key)


def test_the_polygon_less_segmentation_and_the_padded_pose_go_out_as_roboflows_block_sends_them():
    cases = [("custom", "output", "bare_segments"), ("custom", "output", "poses"), ("custom", "output", "masks")]
    engine = ExecutionEngine.init(workflow_definition=workflow(*both(cases, **LOCAL)), init_parameters={})
    with ScriptedServer(Reply(201)) as server:
        engine.run(runtime_parameters=runtime("kinds", url=server.base_url, batch=1))
    bodies = by_pair(server.requests)
    (segments,) = bodies[("fs", "0")]["images"]
    assert "instanceSegmentations" not in segments
    assert [box["class"] for box in segments["objectDetections"]] == ["scratch", "dent"]
    assert [box["confidence"] for box in segments["objectDetections"]] == [0.9, 1.0]
    (poses,) = bodies[("fs", "1")]["images"]
    assert [[k["id"] for k in pose["keypoints"]] for pose in poses["keypoints"]] == [[0, 1], [0, 1, 2]]
    (masks,) = bodies[("fs", "2")]["images"]
    assert [len(s["points"]) >= 3 for s in masks["instanceSegmentations"]] == [True, True]
    for index in range(3):
        assert split_images(bodies[("fs", str(index))])[0] == split_images(bodies[("rf", str(index))])[0]


def test_an_image_that_arrived_as_jpeg_is_sent_as_it_came_by_both():
    engine = ExecutionEngine.init(
        workflow_definition=workflow(*both([("quality_check", "both", "boxes")], **LOCAL)), init_parameters={}
    )
    with ScriptedServer(Reply(201)) as server:
        engine.run(runtime_parameters=runtime("jpeg", url=server.base_url))
    arrived = jpeg_of(frames()[1])
    sent = [base64.b64decode(r.json["images"][0]["base64Image"]) for r in server.requests]
    assert sorted(image == arrived for image in sent) == [False, False, True, True]


def test_the_service_refusing_is_an_error_for_both_and_fire_and_forget_is_queued():
    steps = both([("safety_alert", "output", None)], **LOCAL)
    engine = ExecutionEngine.init(workflow_definition=workflow(*steps), init_parameters={})
    with ScriptedServer(Reply(422, {"detail": "no"})) as server:
        (outputs,) = engine.run(runtime_parameters=runtime("refused", url=server.base_url, batch=1))
    for name in ("fs_0", "rf_0"):
        assert outputs[name]["error_status"] is True and "422" in outputs[name]["message"]
    background = [dict(s, fire_and_forget=True) for s in steps if s["type"] == FASTSEND]
    engine = ExecutionEngine.init(workflow_definition=workflow(*background), init_parameters={})
    with ScriptedServer(Reply(201)) as server:
        (outputs,) = engine.run(runtime_parameters=runtime("queued", url=server.base_url, batch=1))
        assert outputs["fs_0"] == {
            "error_status": False,
            "throttling_status": False,
            "event_id": "",
            "message": "Vision event sent in background task",
        }
        engine.close()
        assert len(server.requests) == 1


def test_cooldown_throttles_both_blocks_alike():
    steps = both([("custom", "output", None)], **LOCAL, cooldown_seconds=3600)
    engine = ExecutionEngine.init(workflow_definition=workflow(*steps), init_parameters={})
    with ScriptedServer(Reply(201)) as server:
        first = engine.run(runtime_parameters=runtime("cooldown", url=server.base_url, batch=1))[0]
        second = engine.run(runtime_parameters=runtime("cooldown", url=server.base_url, batch=1))[0]
    assert first["fs_0"]["throttling_status"] is first["rf_0"]["throttling_status"] is False
    assert (
        second["fs_0"]
        == second["rf_0"]
        == {
            "error_status": False,
            "throttling_status": True,
            "event_id": "",
            "message": "Sink cooldown applies",
        }
    )
    assert len(server.requests) == 2


def test_the_manifest_is_roboflows_field_for_field():
    from roboflow_workflows.core_steps.sinks.roboflow.vision_events.v1 import BlockManifest as theirs

    from fastsend.integrations.workflows.vision_events import BlockManifest as ours

    our_schema, their_schema = ours.model_json_schema(), theirs.model_json_schema()
    assert set(our_schema["properties"]) == set(their_schema["properties"])
    for field in sorted(set(their_schema["properties"]) - {"type"}):
        assert our_schema["properties"][field] == their_schema["properties"][field], field
        our_field, their_field = ours.model_fields[field], theirs.model_fields[field]
        assert our_field.get_default(call_default_factory=True) == their_field.get_default(call_default_factory=True)
    assert our_schema["required"] == their_schema["required"]
    assert our_schema["properties"]["type"] == {"const": FASTSEND, "title": "Type", "type": "string"}
    describe = lambda manifest: [(o.name, [k.name for k in o.kind]) for o in manifest.describe_outputs()]  # noqa: E731
    assert describe(ours) == describe(theirs)
    assert ours.get_execution_engine_compatibility() == theirs.get_execution_engine_compatibility()


# ---------------------------------------------------------------- cloud


def cloud_script(fail: dict[int, int] | None = None):
    """Uploads answer a sourceId, events 200; ``fail`` maps a request number to the status it gets instead."""

    def answer(received: Received) -> Reply:
        if fail and received.index in fail:
            return Reply(fail[received.index], {"detail": "try again"})
        if received.path.endswith("/upload"):
            return Reply(200, {"sourceId": f"src-{received.index}", "url": "https://example.invalid/x"})
        return Reply(200, {"status": "ok"})

    return answer


def upload_part(request: Received) -> tuple[dict[str, str], bytes]:
    """The one part of a multipart upload: its headers and its bytes."""
    boundary = request.headers["Content-Type"].split("boundary=", 1)[1].strip('"').encode()
    parts = [p for p in request.raw.split(b"--" + boundary) if p.strip() not in (b"", b"--")]
    assert len(parts) == 1, "one part"
    head, _, data = parts[0].lstrip(b"\r\n").partition(b"\r\n\r\n")
    headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
    return headers, data.removesuffix(b"\r\n")


def cloud_run(
    block: str, case: tuple[str, str, str | None], script: Any, monkeypatch: Any
) -> tuple[list[Received], dict]:
    import roboflow_workflows.core_steps.sinks.roboflow.vision_events.v1 as roboflow_block
    import roboflow_workflows.environment as environment

    step = vision_step("x_0", block, *case)
    engine = ExecutionEngine.init(workflow_definition=workflow(step), init_parameters={"workflows_core.api_key": "k3y"})
    with ScriptedServer(script) as server:
        monkeypatch.setattr(environment, "API_BASE_URL", server.base_url)
        monkeypatch.setattr(roboflow_block, "API_BASE_URL", server.base_url)
        (outputs,) = engine.run(runtime_parameters=runtime("cloud", batch=1))
        engine.close()
    return server.requests, outputs["x_0"]


def shape(requests: list[Received]) -> list[tuple[Any, ...]]:
    """What a request sequence is, without ids and times: paths, auth, parts; the event without its ids."""
    seen = []
    for request in requests:
        assert request.headers["Authorization"] == "Bearer k3y" and "k3y" not in request.path
        if request.path == "/vision-events/upload":
            headers, data = upload_part(request)
            disposition = headers["Content-Disposition"]
            seen.append(("upload", disposition, headers["Content-Type"], decoded(data).shape))
        else:
            event = dict(request.json, eventId="<id>", timestamp="<time>")
            event["images"] = [
                {k: ("<source>" if k.endswith("ourceId") else v) for k, v in entry.items()} for entry in event["images"]
            ]
            seen.append(("event", request.headers["Content-Type"], event))
    return seen


@pytest.mark.parametrize("case", [("quality_check", "both", "masks"), ("operator_feedback", "input", None),
                                  ("custom", "output", "classes"), ("safety_alert", "none", "poses")])  # fmt: skip
def test_cloud_request_sequences_are_roboflows(case, monkeypatch):
    ours, our_outputs = cloud_run(FASTSEND, case, cloud_script(), monkeypatch)
    theirs, their_outputs = cloud_run(ROBOFLOW, case, cloud_script(), monkeypatch)
    assert shape(ours) == shape(theirs)
    assert our_outputs["message"] == their_outputs["message"] == "Vision event sent successfully"
    assert our_outputs["event_id"] == ours[-1].json["eventId"]
    uploads = [r for r in ours if r.path.endswith("/upload")]
    entry = ours[-1].json["images"][0] if ours[-1].json["images"] else {}
    assert [entry[key] for key in ("sourceId", "inputSourceId") if key in entry] == [f"src-{r.index}" for r in uploads]
    # The same qualities as Roboflow's block: the upload JPEGs carry the same quantization tables.
    for mine, roboflows in zip(uploads, [r for r in theirs if r.path.endswith("/upload")], strict=True):
        assert upload_part(mine)[1][:150] == upload_part(roboflows)[1][:150]


def test_a_cloud_event_is_retried_as_a_unit_keeping_its_uploads_and_its_event_id(monkeypatch):
    # The second upload fails once, then the event post fails once: each retry repeats only what failed.
    requests, outputs = cloud_run(FASTSEND, ("custom", "both", None), cloud_script({1: 503, 3: 503}), monkeypatch)
    assert [r.path.rsplit("/", 1)[1] for r in requests] == [
        "upload",
        "upload",
        "upload",
        "vision-events",
        "vision-events",
    ]
    events = [r.json for r in requests if r.path == "/vision-events"]
    assert events[0] == events[1], "the same event, eventId and all, on the retry"
    assert events[1]["images"][0]["sourceId"] == "src-0" and events[1]["images"][0]["inputSourceId"] == "src-2"
    assert outputs["error_status"] is False and outputs["event_id"] == events[1]["eventId"]


def test_a_cloud_event_refused_is_an_error_and_not_retried(monkeypatch):
    requests, outputs = cloud_run(FASTSEND, ("custom", "output", None), cloud_script({1: 400}), monkeypatch)
    assert [r.path for r in requests] == ["/vision-events/upload", "/vision-events"]
    assert outputs["error_status"] is True and "400" in outputs["message"] and outputs["event_id"] == ""


def test_cloud_mode_without_an_api_key_raises_as_roboflows_block_does():
    from inference.core.workflows.errors import StepExecutionError

    for block in (FASTSEND, ROBOFLOW):
        engine = ExecutionEngine.init(
            workflow_definition=workflow(vision_step("x_0", block, "custom", "none", None)), init_parameters={}
        )
        with pytest.raises(StepExecutionError, match="cannot run without Roboflow API key"):
            engine.run(runtime_parameters=runtime("no key", batch=1))
