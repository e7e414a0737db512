"""``fastsend/vision_event_bundle@v1`` beside ``roboflow_core/vision_event_bundle@v1`` in inference's Execution Engine.

Both blocks write into their own directory from the same inputs; the bundles must hold the same
``payload.json`` (but for eventId, timestamp and member names) and decodable images of the same frames.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.inference import require_inference

require_inference()

from inference.core.workflows.execution_engine.core import ExecutionEngine  # noqa: E402
from support.vision import EVENT_TYPES, IMAGE_COMBINATIONS, PREDICTION_INPUTS, decoded, runtime, vision_step, workflow  # noqa: E402

from fastsend.integrations.bundles import (  # noqa: E402
    MAX_ANNOTATIONS_PER_LIST,
    BundleError,
    build_bundle,
    cap_annotations,
    read_bundle,
)

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"),
]

FASTSEND = "fastsend/vision_event_bundle@v1"
ROBOFLOW = "roboflow_core/vision_event_bundle@v1"
DEFAULT_NAME = re.compile(r"event_\d{8}T\d{6}_\d{6}_[0-9a-f-]{36}\.tar\.gz")


@pytest.fixture(scope="module", autouse=True)
def plugins():
    with pytest.MonkeyPatch.context() as patch:
        current = [p for p in os.environ.get("WORKFLOWS_PLUGINS", "").split(",") if p]
        patch.setenv("WORKFLOWS_PLUGINS", ",".join([*current, "fastsend.workflows"]))
        yield


def bundle_step(
    name: str, block: str, case: tuple[str, str, str | None], directory: str, **extra: Any
) -> dict[str, Any]:
    step = vision_step(name, block, *case, target_directory=directory, **extra)
    step.pop("fire_and_forget")
    step["fire_and_forget"] = extra.get("fire_and_forget", False)
    return step


def comparable(payload: dict[str, Any]) -> dict[str, Any]:
    kept = dict(payload, eventId="<id>", timestamp="<time>")
    kept["images"] = [
        {k: ("<member>" if k in ("file", "inputFile") else v) for k, v in entry.items()} for entry in payload["images"]
    ]
    return kept


def cases() -> list[tuple[str, str, str | None]]:
    found = []
    for type_index, event_type in enumerate(EVENT_TYPES):
        for combo_index, images in enumerate(IMAGE_COMBINATIONS):
            found.append((event_type, images, PREDICTION_INPUTS[(type_index + combo_index) % len(PREDICTION_INPUTS)]))
    return [*found, ("custom", "both", None)]


def test_bundles_are_roboflows_for_every_type_and_image_combination(tmp_path):
    all_cases = cases()
    steps = []
    for index, case in enumerate(all_cases):
        for prefix, block in (("fs", FASTSEND), ("rf", ROBOFLOW)):
            steps.append(bundle_step(f"{prefix}_{index}", block, case, str(tmp_path / prefix / str(index))))
    engine = ExecutionEngine.init(workflow_definition=workflow(*steps), init_parameters={})
    (outputs,) = engine.run(runtime_parameters=runtime("bundles", batch=1))
    for index, case in enumerate(all_cases):
        ours, theirs = outputs[f"fs_{index}"], outputs[f"rf_{index}"]
        assert ours["error_status"] is theirs["error_status"] is False, (ours, theirs)
        assert ours["message"] == theirs["message"]
        assert Path(ours["bundle_path"]).parent == tmp_path / "fs" / str(index)
        assert DEFAULT_NAME.fullmatch(Path(ours["bundle_path"]).name), ours["bundle_path"]
        assert os.listdir(tmp_path / "fs" / str(index)) == [Path(ours["bundle_path"]).name], "no temporary file left"
        mine, roboflows = read_bundle(ours["bundle_path"]), read_bundle(theirs["bundle_path"])
        assert mine.event_id == ours["event_id"] and mine.event_id in ours["bundle_path"]
        assert comparable(mine.payload) == comparable(roboflows.payload), case
        with tarfile.open(ours["bundle_path"]) as tar:
            assert tar.getnames()[0] == "payload.json"
        for entry, their_entry in zip(mine.payload["images"], roboflows.payload["images"], strict=True):
            for key in ("file", "inputFile"):
                assert (key in entry) == (key in their_entry)
                if key in entry:
                    assert re.fullmatch(r"images/[0-9a-f-]{36}\.jpg", entry[key])
                    ours_decoded = decoded(mine.image(entry[key])).astype(int)
                    assert np.abs(ours_decoded - decoded(roboflows.image(their_entry[key]))).mean() < 2, (case, key)


def test_fire_and_forget_writes_off_the_workflow_thread_and_close_waits_for_it(tmp_path):
    step = bundle_step("fs_0", FASTSEND, ("custom", "both", "boxes"), str(tmp_path), fire_and_forget=True)
    engine = ExecutionEngine.init(workflow_definition=workflow(step), init_parameters={})
    (outputs,) = engine.run(runtime_parameters=runtime("background", batch=1))
    assert outputs["fs_0"] == {
        "error_status": False,
        "throttling_status": False,
        "event_id": "",
        "bundle_path": "",
        "message": "Vision event bundle written in background task",
    }
    engine.close()
    (written,) = tmp_path.iterdir()
    assert read_bundle(written).payload["eventData"] == {"value": "anything at all", "externalId": "background"}


def test_a_custom_file_name_is_used_once_and_a_bad_one_is_refused_by_both(tmp_path):
    from inference.core.workflows.errors import StepExecutionError

    for block, prefix in ((FASTSEND, "fs"), (ROBOFLOW, "rf")):
        step = bundle_step(f"{prefix}_0", block, ("custom", "output", None), str(tmp_path / prefix), file_name="lot-7")
        engine = ExecutionEngine.init(workflow_definition=workflow(step), init_parameters={})
        (outputs,) = engine.run(runtime_parameters=runtime("named", batch=1))
        assert outputs[f"{prefix}_0"]["bundle_path"] == str(tmp_path / prefix / "lot-7.tar.gz")
        with pytest.raises(StepExecutionError, match="already exists"):
            engine.run(runtime_parameters=runtime("named", batch=1))
    # A name from another step's output bypasses the manifest's check: the block checks it again.
    from fastsend.integrations.workflows.vision_event_bundle import FastsendVisionEventBundleBlockV1

    block = FastsendVisionEventBundleBlockV1()
    for name, rule in (
        ("x" * 201, "at most 200 characters"),
        ("../escape", "letters, digits"),
        ("", "must not be empty"),
    ):
        with pytest.raises(BundleError, match=rule):
            block.run(target_directory=str(tmp_path), event_type="custom", file_name=name, cooldown_seconds=0)
    assert sorted(os.listdir(tmp_path)) == ["fs", "rf"]


def test_the_limits_a_bundle_past_25_mib_is_an_error_and_annotation_lists_stop_at_1000(caplog):
    with pytest.raises(BundleError, match="exceeds the limit of 26,214,400 bytes"):
        build_bundle({"bundleFormatVersion": 1}, {"images/a.jpg": os.urandom(26 * 1024 * 1024)}, 0)
    boxes = [{"class": "a"}] * (MAX_ANNOTATIONS_PER_LIST + 5)
    capped = cap_annotations({"objectDetections": boxes, "classifications": boxes[:3]})
    assert len(capped["objectDetections"]) == MAX_ANNOTATIONS_PER_LIST and len(capped["classifications"]) == 3
    assert "objectDetections" in caplog.text and "1005" in caplog.text


def test_the_manifest_is_roboflows_field_for_field():
    from roboflow_workflows.core_steps.sinks.roboflow.vision_events_bundle.v1 import BlockManifest as theirs

    from fastsend.integrations.workflows.vision_event_bundle import BlockManifest as ours

    our_schema, their_schema = ours.model_json_schema(), theirs.model_json_schema()
    assert set(our_schema["properties"]) == set(their_schema["properties"])
    for field in sorted(set(their_schema["properties"]) - {"type"}):
        assert our_schema["properties"][field] == their_schema["properties"][field], field
    assert our_schema["required"] == their_schema["required"]
    assert our_schema["properties"]["type"]["const"] == FASTSEND
    describe = lambda manifest: [(o.name, [k.name for k in o.kind]) for o in manifest.describe_outputs()]  # noqa: E731
    assert describe(ours) == describe(theirs)
