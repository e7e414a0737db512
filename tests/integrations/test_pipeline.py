"""``fastsend.pipeline.EventSink``: frames → events, as an InferencePipeline ``on_prediction`` sink.

The first tests call the sink as the pipeline does, with stand-in frames; the last
run the real ``InferencePipeline`` (``pip install "fastsend[inference]"``) on a
short video the test writes.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from support.inference import require_inference
from support.service_process import python_env

from fastsend import Event, EventWriter, ValidationError
from fastsend.pipeline import EventSink
from fastsend.server import ReferenceService

pytestmark = [
    pytest.mark.timeout(120),
    # inference's own deprecation warnings at import are not this project's.
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"),
]

FAST = {"backoff_base": 0.01, "backoff_max": 0.02, "connect_timeout": 2.0, "deadline": 10.0}
HEIGHT, WIDTH = 48, 64


@dataclass
class Frame:
    """What the sink reads of inference's VideoFrame."""

    image: np.ndarray
    frame_id: int
    source_id: int | None = None


def frame_image(shade: int) -> np.ndarray:
    image = np.full((HEIGHT, WIDTH, 3), shade, np.uint8)
    image[10:30, 20:50] = 255 - shade
    return image


def model_predictions(frame_id: int) -> dict[str, Any]:
    """inference's JSON for a detection model, one box per even frame."""
    boxes = [{"x": 35.0, "y": 20.0, "width": 30.0, "height": 20.0, "confidence": 0.75, "class": "box", "class_id": 0}]
    return {"image": {"width": WIDTH, "height": HEIGHT}, "predictions": boxes if frame_id % 2 == 0 else []}


def event_when_boxes(predictions: dict[str, Any], frame: Any) -> Event | None:
    if not predictions["predictions"]:
        return None
    return Event.custom(value=f"frame {frame.frame_id}", external_id=f"source-{frame.source_id}")


@pytest.fixture
def service(tmp_path):
    with ReferenceService(tmp_path / "events") as running:
        yield running


def stored(service: ReferenceService) -> list[dict[str, Any]]:
    return list(reversed(service.list_events()))


def test_model_pipeline_frames_with_detections_become_events(service):
    sink = EventSink(service.url, event=event_when_boxes, object_detections="predictions", **FAST)
    for frame_id in range(1, 7):
        sink(model_predictions(frame_id), Frame(frame_image(frame_id * 30), frame_id))
    assert sink.close(timeout=10) == 0
    events = sorted(stored(service), key=lambda e: e["event_data"]["value"])  # sent concurrently: any order
    assert [e["event_data"]["value"] for e in events] == ["frame 2", "frame 4", "frame 6"]
    (image,) = events[0]["images"]
    assert image["objectDetections"] == [
        {"class": "box", "x": 35.0, "y": 20.0, "width": 30.0, "height": 20.0, "confidence": 0.75}
    ]
    output = cv2.imdecode(np.frombuffer(service.get_image(events[0]["id"]), np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(output.astype(int) - frame_image(60)).mean() < 4, "the frame's image is the event's output image"
    assert sink.stats() == {"skipped": 3, "submitted": 3, "delivered": 3}


def test_workflow_outputs_name_the_image_and_the_input_image_is_the_frame(service):
    sink = EventSink(
        service.url,
        event=lambda outputs, frame: Event.quality_check(result=outputs["verdict"]),
        image="visualization",
        input_image=True,
        label="line 7",
        **FAST,
    )
    drawn = frame_image(200)
    sink({"verdict": "fail", "visualization": drawn}, Frame(frame_image(10), 1))
    sink.close(timeout=10)
    (event,) = stored(service)
    assert event["event_data"] == {"result": "fail"}
    assert event["images"][0]["label"] == "line 7"
    for role, expected in (("output", drawn), ("input", frame_image(10))):
        image = cv2.imdecode(np.frombuffer(service.get_image(event["id"], role), np.uint8), cv2.IMREAD_COLOR)
        assert np.abs(image.astype(int) - expected).mean() < 4, role


def test_multi_source_lists_with_gaps_and_a_cooldown_per_source(service):
    sink = EventSink(service.url, event=event_when_boxes, cooldown_seconds=3600, **FAST)
    batches = [
        (
            [model_predictions(0), None, model_predictions(0)],
            [Frame(frame_image(1), 0, 0), None, Frame(frame_image(2), 0, 2)],
        ),
        ([model_predictions(2), model_predictions(2)], [Frame(frame_image(3), 2, 0), Frame(frame_image(4), 2, 1)]),
    ]
    for predictions, frames in batches:
        sink(predictions, frames)
    sink.close(timeout=10)
    assert sorted(e["event_data"]["externalId"] for e in stored(service)) == ["source-0", "source-1", "source-2"]
    assert sink.stats()["throttled"] == 1  # source 0's second frame, inside its cooldown


def test_it_never_raises_into_the_pipeline_and_counts_each_failure(service, caplog):
    def explode(predictions, frame):
        if frame.frame_id == 1:
            raise RuntimeError("user code failed")
        return Event.custom(value="x")

    sink = EventSink(service.url, event=explode, image="missing", **FAST)
    sink({}, Frame(frame_image(0), 1))  # the callable raises
    sink({}, Frame(frame_image(0), 2))  # no "missing" output
    sink({"missing": np.zeros((4, 4, 3), np.float32)}, Frame(frame_image(0), 3))  # not uint8
    sink.close(timeout=10)
    assert sink.stats() == {"error": 1, "invalid": 2}
    assert service.stored_count() == 0
    messages = [r.getMessage() for r in caplog.records if r.name == "fastsend"]
    assert any("user code failed" in m for m in messages)
    assert any("missing" in m and "not a key" in m for m in messages)


def test_delivery_failures_are_counted(tmp_path):
    with ReferenceService(tmp_path, api_key="s3cret") as guarded:
        sink = EventSink(guarded.url, event=lambda p, f: Event.custom(value="x"), retries=0, **FAST)
        sink({}, Frame(frame_image(0), 1))
        sink.close(timeout=10)
        assert sink.stats() == {"submitted": 1, "delivery_failed": 1}


def test_a_writer_given_is_used_and_left_open(service):
    with EventWriter(service.url, **FAST) as writer:
        sink = EventSink(event=lambda p, f: Event.custom(value="shared"), writer=writer)
        sink({}, Frame(frame_image(0), 1))
        assert sink.close(timeout=10) == 0
        writer.send(Event.custom(value="after"), frame_image(0))
    assert sorted(e["event_data"]["value"] for e in stored(service)) == ["after", "shared"]


@pytest.mark.parametrize(
    "options, field",
    [
        ({"event": "not callable"}, "event"),
        ({"event": event_when_boxes, "cooldown_seconds": -1}, "cooldown_seconds"),
        ({"event": event_when_boxes, "image": 3}, "image"),
        ({"event": event_when_boxes, "writer": object(), "retries": 1}, "writer"),
    ],
)
def test_bad_options_are_refused_by_name(options, field):
    with pytest.raises(ValidationError) as info:
        EventSink(**options)
    assert info.value.field == field


def test_importing_fastsend_and_its_plugin_modules_does_not_import_inference():
    code = "import sys, fastsend, fastsend.workflows, fastsend.pipeline; print('inference' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=python_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


# ---------------------------------------------------------------- the real InferencePipeline


def write_video(path: Path, frames: int, shade_step: int = 40) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for index in range(frames):
        writer.write(frame_image(index * shade_step % 256))
    writer.release()
    return path


@pytest.fixture
def inference(monkeypatch):
    module = require_inference()
    monkeypatch.setenv("WORKFLOWS_PLUGINS", "fastsend.workflows")
    return module


def block_workflow(url: str) -> dict[str, Any]:
    """A workflow with no model: the fastsend block sends every frame; the frame is an output too."""
    return {
        "version": "1.0",
        "inputs": [{"type": "WorkflowImage", "name": "image"}],
        "steps": [
            {
                "type": "fastsend/event_writer_sink@v1",
                "name": "events",
                "event_schema": "custom",
                "custom_value": "from the block",
                "output_image": "$inputs.image",
                "event_ingestion_url": url,
            }
        ],
        "outputs": [
            {"type": "JsonField", "name": "sent", "selector": "$steps.events.*"},
            {"type": "JsonField", "name": "picture", "selector": "$inputs.image"},
        ],
    }


def test_init_with_workflow_stores_one_event_per_frame(inference, service, tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=5)
    workflow = block_workflow(service.url)
    # The same run also feeds the sink: its image is a workflow output (a WorkflowImageData).
    sink = EventSink(service.url, event=lambda outputs, frame: Event.custom(value="from the sink"), image="picture")
    pipeline = inference.InferencePipeline.init_with_workflow(
        video_reference=str(video), workflow_specification=workflow, on_prediction=sink
    )
    pipeline.start()
    pipeline.join()  # the pipeline closes the engine, which waits for the block's queued events
    assert sink.close(timeout=10) == 0
    values = [e["event_data"]["value"] for e in stored(service)]
    assert values.count("from the block") == 5
    assert values.count("from the sink") == 5


def test_pipeline_disable_sinks_reaches_the_block(inference, service, tmp_path):
    video = write_video(tmp_path / "clip.avi", frames=3)
    seen: list[dict[str, Any]] = []
    pipeline = inference.InferencePipeline.init_with_workflow(
        video_reference=str(video),
        workflow_specification=block_workflow(service.url),
        on_prediction=lambda outputs, frame: seen.append(outputs["sent"]),
        disable_sinks=True,
    )
    pipeline.start()
    pipeline.join()
    assert len(seen) == 3
    assert {result["message"] for result in seen} == {"Sink was disabled by workflow execution policy"}
    assert service.stored_count() == 0


def test_init_with_custom_logic_feeds_the_sink_through_multi_sink(inference, service, tmp_path):
    from inference.core.interfaces.stream.sinks import multi_sink

    def detect(frames: list[Any]) -> list[dict[str, Any]]:  # a model-free "model"
        return [model_predictions(frame.frame_id) for frame in frames]

    videos = [str(write_video(tmp_path / "a.avi", frames=4)), str(write_video(tmp_path / "b.avi", frames=2))]
    sink = EventSink(service.url, event=event_when_boxes, object_detections="predictions")
    pipeline = inference.InferencePipeline.init_with_custom_logic(
        video_reference=videos, on_video_frame=detect, on_prediction=partial(multi_sink, sinks=[sink])
    )
    pipeline.start()
    pipeline.join()
    assert sink.close(timeout=10) == 0
    # Frame ids start at 1: frames 2 and 4 of the first video and frame 2 of the second have a box.
    assert sorted((e["event_data"]["externalId"], e["event_data"]["value"]) for e in stored(service)) == [
        ("source-0", "frame 2"),
        ("source-0", "frame 4"),
        ("source-1", "frame 2"),
    ]
    assert all(e["images"][0]["objectDetections"][0]["class"] == "box" for e in stored(service))
