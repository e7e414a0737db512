"""``fastsend/event_writer_sink@v1`` compiled and run by inference's Execution Engine against the reference service.

The cases of the Event Writer block's own tests (four schemas, every prediction
kind, fire-and-forget and synchronous, ``disable_sink``, the API key), the engine's
``disable_sinks``, and the same workflow through the Event Writer block itself
(inference's enterprise blocks loaded alongside) storing the same events.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import pytest
from support.inference import ENTERPRISE_PLUGIN, OFFLINE_ENVIRONMENT, require_inference
from support.service_process import python_env

require_inference()

import cv2  # noqa: E402
import simplejpeg  # noqa: E402
import supervision as sv  # noqa: E402
from inference.core.workflows.execution_engine.core import ExecutionEngine  # noqa: E402
from support.vision import frames, jpeg_of  # noqa: E402

from fastsend.integrations.block import API_KEY_ENV  # noqa: E402
from fastsend.server import ReferenceService  # noqa: E402

# inference's own deprecation warnings at import are not this project's.
pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"),
]

FASTSEND = "fastsend/event_writer_sink@v1"
ENTERPRISE = "roboflow_enterprise/event_writer_sink@v1"

INPUTS: list[dict[str, Any]] = [
    {"type": "WorkflowImage", "name": "image"},
    {"type": "WorkflowImage", "name": "frame"},
    {"type": "WorkflowParameter", "name": "url"},
    {"type": "WorkflowParameter", "name": "tag"},
    {"type": "WorkflowParameter", "name": "ff", "default_value": False},
    {"type": "WorkflowParameter", "name": "disable", "default_value": False},
    {"type": "WorkflowBatchInput", "name": "boxes", "kind": ["object_detection_prediction"]},
    {"type": "WorkflowBatchInput", "name": "masks", "kind": ["instance_segmentation_prediction"]},
    {"type": "WorkflowBatchInput", "name": "poses", "kind": ["keypoint_detection_prediction"]},
    {"type": "WorkflowBatchInput", "name": "classes", "kind": ["classification_prediction"]},
]

# The Event Writer's schemas, each with its own fields; one more step carries every prediction kind.
STEPS: dict[str, dict[str, Any]] = {
    "qc": {"event_schema": "quality_check", "qc_result": "fail"},
    "inventory": {"event_schema": "inventory_count", "location": "dock 4", "item_count": 12, "item_type": "pallet"},
    "alert": {
        "event_schema": "safety_alert",
        "alert_type": "no_helmet",
        "severity": "high",
        "alert_description": "worker without helmet",
    },
    "custom": {
        "event_schema": "custom",
        "custom_value": "anything at all",
        "custom_metadata": {"line": "A1", "run": "$inputs.tag"},
    },
    "annotated": {
        "event_schema": "quality_check",
        "qc_result": "pass",
        "input_image": "$inputs.frame",
        "image_label": "defects",
        "custom_metadata": {"line": "A1", "count": 3, "ok": True},
        "object_detections": "$inputs.boxes",
        "classifications": "$inputs.classes",
        "instance_segmentations": "$inputs.masks",
        "keypoint_detections": "$inputs.poses",
    },
}
EVENT_DATA = {
    "qc": {"result": "fail"},
    "inventory": {"location": "dock 4", "itemCount": 12, "itemType": "pallet"},
    "alert": {"alertType": "no_helmet", "severity": "high", "description": "worker without helmet"},
    "custom": {"value": "anything at all"},
    "annotated": {"result": "pass"},
}
HEIGHT, WIDTH = 48, 64


def step(name: str, block: str, fields: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return {
        "type": block,
        "name": name,
        "output_image": "$inputs.image",
        "event_ingestion_url": "$inputs.url",
        "external_id": "$inputs.tag",
        "fire_and_forget": "$inputs.ff",
        "disable_sink": "$inputs.disable",
        **fields,
        **overrides,
    }


def workflow(*steps: dict[str, Any]) -> dict[str, Any]:
    outputs = [{"type": "JsonField", "name": s["name"], "selector": f"$steps.{s['name']}.*"} for s in steps]
    return {"version": "1.0", "inputs": INPUTS, "steps": list(steps), "outputs": outputs}


def detections(with_masks: bool = False, with_keypoints: bool = False) -> sv.Detections:
    mask = None
    if with_masks:
        mask = np.zeros((2, HEIGHT, WIDTH), dtype=bool)
        mask[0, 5:20, 5:30] = True
        mask[1, 25:40, 30:60] = True
    found = sv.Detections(
        xyxy=np.array([[5.0, 5.0, 30.0, 20.0], [30.0, 25.0, 60.0, 40.0]]),
        confidence=np.array([0.9, 0.55]),
        class_id=np.array([0, 1]),
        mask=mask,
        data={"class_name": np.array(["scratch", "dent"])},
    )
    if with_keypoints:
        found.data["keypoints_xy"] = np.array(
            [[[6.0, 7.0], [8.0, 9.0], [0.0, 0.0]], [[31.0, 26.0], [40.0, 30.0], [50.0, 35.0]]]
        )
        found.data["keypoints_class_name"] = np.array([["nose", "eye", ""], ["nose", "eye", "ear"]])
        found.data["keypoints_confidence"] = np.array([[0.9, 0.8, 0.0], [0.7, 0.6, 0.5]])
    return found


def classification() -> dict[str, Any]:
    # The class_name/confidence lists are the shape the Event Writer block reads.
    return {
        "image": {"width": WIDTH, "height": HEIGHT},
        "predictions": [
            {"class": "ok", "class_id": 0, "confidence": 0.8},
            {"class": "bad", "class_id": 1, "confidence": 0.2},
        ],
        "top": "ok",
        "confidence": [0.8, 0.2],
        "class_name": ["ok", "bad"],
    }


def runtime(url: str, tag: str, *, batch: int = 2, **extra: Any) -> dict[str, Any]:
    """Two images: a numpy frame, and a JPEG that arrives as base64 (as through the HTTP API)."""
    first, second = frames()
    images: list[Any] = [first, {"type": "base64", "value": base64.b64encode(jpeg_of(second)).decode()}][:batch]
    return {
        "image": images,
        "frame": [first, second][:batch],
        "url": url,
        "tag": tag,
        "boxes": [detections() for _ in range(batch)],
        "masks": [detections(with_masks=True) for _ in range(batch)],
        "poses": [detections(with_keypoints=True) for _ in range(batch)],
        "classes": [classification() for _ in range(batch)],
        **extra,
    }


@pytest.fixture(scope="module", autouse=True)
def plugins():
    """fastsend's plugin and inference's enterprise blocks, loaded together as a user would."""
    with pytest.MonkeyPatch.context() as patch:
        current = [p for p in os.environ.get("WORKFLOWS_PLUGINS", "").split(",") if p]
        patch.setenv("WORKFLOWS_PLUGINS", ",".join([*current, ENTERPRISE_PLUGIN, "fastsend.workflows"]))
        patch.delenv(API_KEY_ENV, raising=False)
        yield


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    with ReferenceService(tmp_path_factory.mktemp("events")) as running:
        yield running


@pytest.fixture(scope="module")
def both_blocks():
    """One engine, every step twice: fastsend's block as ``fs_*``, the Event Writer as ``ew_*``."""
    steps = [step(f"fs_{name}", FASTSEND, fields) for name, fields in STEPS.items()]
    steps += [step(f"ew_{name}", ENTERPRISE, fields) for name, fields in STEPS.items()]
    return ExecutionEngine.init(workflow_definition=workflow(*steps), init_parameters={})


@pytest.fixture(scope="module")
def synchronous_run(both_blocks, service):
    return both_blocks.run(runtime_parameters=runtime(service.url, "sync-run"))


def outputs_of(results: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [result[name] for result in results]


def comparable(event: dict[str, Any]) -> dict[str, Any]:
    """A stored event without what differs by nature: ids, times, image URLs."""
    kept = {k: v for k, v in event.items() if k not in ("id", "received_at", "idempotency_key", "inference_timestamp")}
    kept["images"] = [
        {k: v for k, v in image.items() if k not in ("outputImageUrl", "inputImageUrl")} for image in event["images"]
    ]
    return kept


def decoded(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None
    return image


def test_every_schema_is_sent_synchronously_and_returns_the_stored_id(synchronous_run, service):
    for name, event_data in EVENT_DATA.items():
        results = outputs_of(synchronous_run, f"fs_{name}")
        assert len(results) == 2, "a batch of two images is two events"
        for result in results:
            assert result["error_status"] is False, result["message"]
            assert result["throttling_status"] is False
            stored = service.get_event(result["event_id"])
            assert stored is not None, f"{name}: id {result['event_id']!r} is not stored"
            assert stored["event_schema"] == STEPS[name]["event_schema"]
            assert stored["event_data"] == {**event_data, "externalId": "sync-run"}
    custom = service.get_event(outputs_of(synchronous_run, "fs_custom")[0]["event_id"])
    assert custom["custom_metadata"] == {"line": "A1", "run": "sync-run"}


def test_every_prediction_kind_is_attached(synchronous_run, service):
    result = outputs_of(synchronous_run, "fs_annotated")[0]
    (image,) = service.get_event(result["event_id"])["images"]
    assert image["label"] == "defects"
    boxes = image["objectDetections"]
    assert [(b["class"], b["x"], b["y"], b["width"], b["height"]) for b in boxes] == [
        ("scratch", 17.5, 12.5, 25.0, 15.0),
        ("dent", 45.0, 32.5, 30.0, 15.0),
    ]
    assert [b["confidence"] for b in boxes] == pytest.approx([0.9, 0.55])
    assert [(c["class"], c["confidence"]) for c in image["classifications"]] == [("ok", 0.8), ("bad", 0.2)]
    assert [len(s["points"]) >= 3 for s in image["instanceSegmentations"]] == [True, True]
    # The padding slot (class name "") of the first pose is not sent.
    assert [[(k["id"], k["x"], k["y"]) for k in p["keypoints"]] for p in image["keypoints"]] == [
        [(0, 6.0, 7.0), (1, 8.0, 9.0)],
        [(0, 31.0, 26.0), (1, 40.0, 30.0), (2, 50.0, 35.0)],
    ]


def test_images_numpy_is_encoded_and_base64_jpeg_is_sent_as_it_came(synchronous_run, service):
    numpy_result, base64_result = outputs_of(synchronous_run, "fs_annotated")
    first, second = frames()
    stored_first = decoded(service.get_image(numpy_result["event_id"], "output"))
    assert np.abs(stored_first.astype(int) - first).mean() < 4
    assert service.get_image(base64_result["event_id"], "output") == jpeg_of(second)
    assert np.abs(decoded(service.get_image(base64_result["event_id"], "input")).astype(int) - second).mean() < 4


def test_the_event_writer_block_and_fastsends_store_the_same_events(synchronous_run, service):
    for name in STEPS:
        for fastsend_result, reference_result in zip(
            outputs_of(synchronous_run, f"fs_{name}"), outputs_of(synchronous_run, f"ew_{name}"), strict=True
        ):
            assert reference_result["error_status"] is False, reference_result["message"]
            ours = service.get_event(fastsend_result["event_id"])
            theirs = service.get_event(reference_result["event_id"])
            assert comparable(ours) == comparable(theirs), name
            for role in ("output", "input"):
                our_image, their_image = (service.get_image(e["id"], role) for e in (ours, theirs))
                assert (our_image is None) == (their_image is None)
                if our_image is not None:
                    assert np.abs(decoded(our_image).astype(int) - decoded(their_image)).mean() < 4, (name, role)
    # An image that arrived as JPEG is stored byte for byte by both.
    ours, theirs = (outputs_of(synchronous_run, f"{p}_qc")[1]["event_id"] for p in ("fs", "ew"))
    assert service.get_image(ours, "output") == service.get_image(theirs, "output") == jpeg_of(frames()[1])


def test_disable_sink_sends_nothing(both_blocks, service):
    before = service.stored_count()
    results = both_blocks.run(runtime_parameters=runtime(service.url, "disabled", disable=True))
    assert service.stored_count() == before
    for result in outputs_of(results, "fs_qc"):
        assert result == {
            "error_status": False,
            "throttling_status": False,
            "event_id": "",
            "message": "Sink was disabled by parameter `disable_sink`",
        }


def test_engine_disable_sinks_sends_nothing(service):
    steps = [step("fs", FASTSEND, STEPS["annotated"]), step("ew", ENTERPRISE, STEPS["annotated"])]
    engine = ExecutionEngine.init(
        workflow_definition=workflow(*steps), init_parameters={"workflows_core.disable_sinks": True}
    )
    before = service.stored_count()
    results = engine.run(runtime_parameters=runtime(service.url, "policy", ff=True))
    engine.close()
    assert service.stored_count() == before
    for name in ("fs", "ew"):
        for result in outputs_of(results, name):
            assert result["error_status"] is False and result["event_id"] == ""
            assert result["message"] == "Sink was disabled by workflow execution policy"


def test_fire_and_forget_returns_at_once_and_close_delivers_every_event(service):
    engine = ExecutionEngine.init(workflow_definition=workflow(step("fs", FASTSEND, STEPS["qc"])), init_parameters={})
    runs = [engine.run(runtime_parameters=runtime(service.url, "fire-and-forget", ff=True)) for _ in range(3)]
    for result in (r for results in runs for r in outputs_of(results, "fs")):
        assert result["error_status"] is False and result["event_id"] == ""
    engine.close()  # the engine closes its blocks: the block waits for what it queued
    stored = [e for e in service.list_events() if e["event_data"].get("externalId") == "fire-and-forget"]
    assert len(stored) == 6


def test_a_queued_event_keeps_its_frames_as_they_were_when_the_step_ran(service, monkeypatch):
    """Blocks after a sink may draw on the frame in place: the queued event sends the frame it was given,
    byte for byte the JPEG of that frame."""
    import fastsend.integrations.block as block_module  # where the block's calls are prepared
    import fastsend.send.encoding

    borrowed = []
    real_prepare = block_module.prepare_block_event

    def recording_prepare(**params):
        borrowed.append(params["output_image"].numpy_image)
        return real_prepare(**params)

    overwritten = threading.Event()
    real_to_base64, real_encode_pair = fastsend.send.encoding.to_base64, fastsend.send.encoding.encode_pair

    def encode_after_the_overwrite(source, options):
        assert overwritten.wait(10)
        return real_to_base64(source, options)

    def encode_pair_after_the_overwrite(output, input, options):
        assert overwritten.wait(10)
        return real_encode_pair(output, input, options)

    monkeypatch.setattr(block_module, "prepare_block_event", recording_prepare)
    monkeypatch.setattr(fastsend.send.encoding, "to_base64", encode_after_the_overwrite)
    monkeypatch.setattr(fastsend.send.encoding, "encode_pair", encode_pair_after_the_overwrite)
    engine = ExecutionEngine.init(
        workflow_definition=workflow(step("fs", FASTSEND, STEPS["annotated"])), init_parameters={}
    )
    parameters = runtime(service.url, "drawn-on-later", batch=1, ff=True)
    frame, original = parameters["image"][0], parameters["image"][0].copy()
    engine.run(runtime_parameters=parameters)
    assert np.shares_memory(borrowed[0], frame), "the step saw the caller's own array"
    frame[:] = 0  # what a later block drawing on numpy_image does
    overwritten.set()
    engine.close()
    (stored,) = [e for e in service.list_events() if e["event_data"].get("externalId") == "drawn-on-later"]
    # Compared as pixels: a pair may be encoded by the segment-reusing encoder, whose bytes differ.
    for kind, frame_then in (("output", original), ("input", frames()[0])):
        sent = simplejpeg.decode_jpeg(service.get_image(stored["id"], kind), colorspace="BGR")
        assert np.abs(sent.astype(int) - frame_then.astype(int)).mean() < 2.0, kind


def test_cooldown_throttles_and_reports_it(service):
    definition = workflow(step("fs", FASTSEND, STEPS["qc"], cooldown_seconds=3600))
    engine = ExecutionEngine.init(workflow_definition=definition, init_parameters={})
    first = outputs_of(engine.run(runtime_parameters=runtime(service.url, "cooldown")), "fs")
    second = outputs_of(engine.run(runtime_parameters=runtime(service.url, "cooldown")), "fs")
    engine.close()
    sent, *throttled = first + second
    assert sent["throttling_status"] is False and service.get_event(sent["event_id"]) is not None
    for result in throttled:
        assert result == {
            "error_status": False,
            "throttling_status": True,
            "event_id": "",
            "message": "Sink cooldown applies",
        }
    assert len([e for e in service.list_events() if e["event_data"].get("externalId") == "cooldown"]) == 1


def test_api_key_from_the_environment(both_blocks, tmp_path, monkeypatch):
    with ReferenceService(tmp_path, api_key="s3cret") as guarded:
        refused = outputs_of(both_blocks.run(runtime_parameters=runtime(guarded.url, "no-key", batch=1)), "fs_qc")[0]
        assert refused["error_status"] is True and "401" in refused["message"]
        monkeypatch.setenv(API_KEY_ENV, "s3cret")
        results = both_blocks.run(runtime_parameters=runtime(guarded.url, "with-key", batch=1))
        for name in ("fs_qc", "ew_qc"):
            (result,) = outputs_of(results, name)
            assert result["error_status"] is False, result["message"]
            assert guarded.get_event(result["event_id"])["event_data"]["externalId"] == "with-key"


def test_the_manifest_repeats_the_event_writers_field_for_field():
    from inference.enterprise.workflows.enterprise_blocks.sinks.event_writer.v1 import BlockManifest as theirs

    from fastsend.integrations.workflows.event_writer import BlockManifest as ours

    # The JSON schema carries each field's kinds, selector patterns, default, description and examples.
    our_schema, their_schema = ours.model_json_schema(), theirs.model_json_schema()
    their_fields = set(their_schema["properties"]) - {"type"}
    assert their_fields <= set(our_schema["properties"]), their_fields - set(our_schema["properties"])
    for field in sorted(their_fields):
        assert our_schema["properties"][field] == their_schema["properties"][field], field
        our_field, their_field = ours.model_fields[field], theirs.model_fields[field]
        assert our_field.get_default(call_default_factory=True) == their_field.get_default(call_default_factory=True)
        assert our_field.json_schema_extra == their_field.json_schema_extra, field
    assert our_schema.get("required") == their_schema.get("required")
    assert set(our_schema["properties"]) - their_fields == {"type", "cooldown_seconds"}
    assert our_schema["properties"]["type"] == {"const": FASTSEND, "title": "Type", "type": "string"}
    assert ours.model_fields["cooldown_seconds"].default == 0
    their_outputs = {(o.name, tuple(k.name for k in o.kind)) for o in theirs.describe_outputs()}
    our_outputs = {(o.name, tuple(k.name for k in o.kind)) for o in ours.describe_outputs()}
    assert our_outputs - their_outputs == {("throttling_status", ("boolean",))}
    assert their_outputs <= our_outputs
    assert ours.get_execution_engine_compatibility() == theirs.get_execution_engine_compatibility()


def test_load_blocks_gives_the_same_classes_every_time():
    import fastsend.workflows

    assert fastsend.integrations.workflows.load_blocks() == fastsend.integrations.workflows.load_blocks()
    types = [
        b.get_manifest().model_json_schema()["properties"]["type"]["const"] for b in fastsend.workflows.load_blocks()
    ]
    assert types == [FASTSEND, "fastsend/vision_events@v1", "fastsend/vision_event_bundle@v1"]


EXIT_SCRIPT = """
import sys
import numpy as np
from inference.core.workflows.execution_engine.core import ExecutionEngine

url, count = sys.argv[1], int(sys.argv[2])
definition = {
    "version": "1.0",
    "inputs": [{"type": "WorkflowImage", "name": "image"}],
    "steps": [{"type": "fastsend/event_writer_sink@v1", "name": "events", "event_schema": "custom",
               "custom_value": "at exit", "output_image": "$inputs.image", "event_ingestion_url": url}],
    "outputs": [{"type": "JsonField", "name": "sent", "selector": "$steps.events.*"}],
}
engine = ExecutionEngine.init(workflow_definition=definition, init_parameters={})
for index in range(count):
    engine.run(runtime_parameters={"image": np.full((48, 64, 3), index, np.uint8)})
# No close(): the queued events are delivered at interpreter exit.
"""


def test_queued_events_are_delivered_at_interpreter_exit(service):
    env = {**python_env(), **OFFLINE_ENVIRONMENT, "WORKFLOWS_PLUGINS": "fastsend.workflows"}
    env.pop(API_KEY_ENV, None)
    before = service.stored_count()
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, service.url, "4"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert service.stored_count() - before == 4


def test_bad_values_from_selectors_are_reported_by_the_step_not_raised(service):
    fields = {"event_schema": "safety_alert", "alert_type": "$inputs.tag", "severity": "low"}
    definition = workflow(step("fs", FASTSEND, fields))
    engine = ExecutionEngine.init(workflow_definition=definition, init_parameters={})
    before = service.stored_count()
    for fire_and_forget in (False, True):
        results = outputs_of(
            engine.run(runtime_parameters=runtime(service.url, "no helmet!", ff=fire_and_forget)), "fs"
        )
        for result in results:
            assert result["error_status"] is True and result["event_id"] == ""
            assert "alertType" in result["message"] and "no helmet!" in result["message"]
    engine.close()
    assert service.stored_count() == before


def test_flush_waits_for_every_queued_event_without_closing_the_engine(both_blocks, service):
    import fastsend.workflows

    results = outputs_of(both_blocks.run(runtime_parameters=runtime(service.url, "flushed", ff=True)), "fs_annotated")
    assert [r["event_id"] for r in results] == ["", ""]
    assert fastsend.integrations.workflows.flush(timeout=20) == 0
    flushed = [e for e in service.list_events() if e["event_data"].get("externalId") == "flushed"]
    # Ten steps over two images; the Event Writer's steps, with no thread pool here, sent theirs at once.
    assert len(flushed) == 20


@pytest.mark.parametrize("extension", [".jpg", ".png", ".bmp"])
def test_workflow_image_data_sends_jpeg_or_png_as_it_came_and_other_formats_as_pixels(extension):
    from inference.core.workflows.execution_engine.entities.base import ImageParentMetadata, WorkflowImageData

    from fastsend.imaging.jpeg import EncodedImage, RawImage, prepare_image

    picture = frames()[0]
    ok, encoded = cv2.imencode(extension, picture)
    assert ok
    text = base64.b64encode(bytes(encoded)).decode()
    image = WorkflowImageData(parent_metadata=ImageParentMetadata(parent_id="x"), base64_image=text)
    source = prepare_image(image, field="output_image")
    if extension == ".bmp":  # not a format the service stores: decoded, and the pixels encoded
        assert isinstance(source, RawImage) and np.array_equal(source.array, picture)
    else:
        assert isinstance(source, EncodedImage) and source.base64 == text.encode()


def test_segmentations_without_masks_or_polygons_go_out_as_the_event_writer_sends_them(service, caplog):
    """The enterprise block sends such an event without them; the block does too, and says so once."""
    fields = {**STEPS["qc"], "instance_segmentations": "$inputs.bare", "object_detections": "$inputs.boxes"}
    definition = workflow(step("fs", FASTSEND, fields), step("ew", ENTERPRISE, fields))
    definition["inputs"] = [
        *INPUTS,
        {"type": "WorkflowBatchInput", "name": "bare", "kind": ["instance_segmentation_prediction"]},
    ]
    engine = ExecutionEngine.init(workflow_definition=definition, init_parameters={})
    with caplog.at_level("WARNING", logger="fastsend"):
        parameters = runtime(service.url, "bare segments", bare=[detections(), detections()])
        results = engine.run(runtime_parameters=parameters)
    for ours, theirs in zip(outputs_of(results, "fs"), outputs_of(results, "ew"), strict=True):
        assert ours["error_status"] is theirs["error_status"] is False, ours["message"]
        stored, reference = service.get_event(ours["event_id"]), service.get_event(theirs["event_id"])
        assert "instanceSegmentations" not in stored["images"][0]
        assert comparable(stored)["images"] == comparable(reference)["images"]
    dropped = [r for r in caplog.records if "without masks or polygons dropped" in r.getMessage()]
    assert len(dropped) <= 1 and (dropped or _already_warned())


def _already_warned() -> bool:
    from fastsend.integrations import block

    return block._warn_dropped_segmentations._warned
