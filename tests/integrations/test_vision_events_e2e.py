"""The Vision Events blocks end to end: inference's Execution Engine → ``fastsend serve`` (a real subprocess).

- fastsend's block in cloud mode (``API_BASE_URL`` at the service): stored with its use case, images
  (the uploaded bytes), annotations and ``eventId``; retried as a unit while the service is down or
  failing at random, each event stored once.
- Both blocks in local mode, side by side, with and without images (also the input image alone).
- A bundle written by Roboflow's bundle block, delivered by ``fastsend bundles send`` (a CLI process):
  stored once, moved to ``DIR/sent``; running again changes nothing.
- What ``test_vision_events.py`` leaves out of the side-by-side comparison: the cloud request sequence
  of every event type × image combination × with and without predictions, the cooldown in cloud mode
  and after it elapses, and the headers and gateway URL the platform client adds to cloud requests.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from support.inference import require_inference
from support.scripted_server import Received, Reply, ScriptedServer, unused_port
from support.service_process import TIMEOUT, python_env, start_service

require_inference()

from inference.core.workflows.execution_engine.core import ExecutionEngine  # noqa: E402
from support.vision import (  # noqa: E402
    EVENT_TYPES,
    IMAGE_COMBINATIONS,
    PREDICTION_INPUTS,
    decoded,
    frames,
    jpeg_of,
    predictions,
    runtime,
    vision_step,
    workflow,
)

from fastsend.integrations.block import API_KEY_ENV  # noqa: E402
from fastsend.integrations.bundles import read_bundle  # noqa: E402
from fastsend.send import cloud  # noqa: E402

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"),
]

FASTSEND = "fastsend/vision_events@v1"
ROBOFLOW = "roboflow_core/roboflow_vision_events@v1"
ROBOFLOW_BUNDLE = "roboflow_core/vision_event_bundle@v1"
KEY = "e2e-service-key-7"
LOCAL = {"write_to_event_store": True, "event_store_url": "$inputs.url"}
# What the per-type fields of support.vision become in eventData (external ids are the run's tag).
EVENT_DATA = {
    "quality_check": lambda tag: {"result": "fail", "externalId": tag},
    "inventory_count": lambda tag: {"location": "dock 4", "itemCount": 12, "itemType": "pallet", "externalId": tag},
    "safety_alert": lambda tag: {"alertType": "no_helmet", "severity": "high", "description": "worker without helmet"},
    "custom": lambda tag: {"value": "anything at all", "externalId": tag},
    "operator_feedback": lambda tag: {"relatedEventId": "evt-1", "feedback": "incorrect"},
}
IMAGE_COUNT = {"none": 0, "output": 1, "input": 1, "both": 2}
ANNOTATION_KEYS = ("objectDetections", "classifications", "instanceSegmentations", "keypoints")


@pytest.fixture(scope="module", autouse=True)
def plugins():
    with pytest.MonkeyPatch.context() as patch:
        current = [p for p in os.environ.get("WORKFLOWS_PLUGINS", "").split(",") if p]
        patch.setenv("WORKFLOWS_PLUGINS", ",".join([*current, "fastsend.workflows"]))
        yield


@pytest.fixture(autouse=True)
def service_key(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, KEY)  # both blocks' local mode and bundles send --url read it


# ---------------------------------------------------------------- the service, as a client sees it


@dataclass
class Serve:
    """``fastsend serve`` in a child process, read back through its HTTP API."""

    process: subprocess.Popen[str]
    url: str
    data_dir: Path

    def get(self, path: str, **params: Any) -> requests.Response:
        reply = requests.get(f"{self.url}{path}", params=params, headers={"X-API-Key": KEY}, timeout=TIMEOUT)
        assert reply.status_code in (200, 404), reply.text
        return reply

    def events(self) -> list[dict[str, Any]]:
        """Every stored event, whole, oldest first."""
        listed = self.get("/v2/events", limit=1000).json()["events"]
        return [self.get(f"/v2/events/{summary['id']}").json() for summary in reversed(listed)]

    def image(self, event_id: str, role: str) -> bytes | None:
        reply = self.get(f"/v2/events/{event_id}/images/{role}")
        return reply.content if reply.status_code == 200 else None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(TIMEOUT)


def serve(data_dir: Path, port: int = 0, *extra: str) -> Serve:
    key_file = data_dir.parent / f"{data_dir.name}.key"
    key_file.write_text(KEY + "\n")  # the key stays out of ps
    process, url = start_service(data_dir, port, "--api-key-file", str(key_file), *extra)
    return Serve(process, url, data_dir)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Serve]:
    running = serve(tmp_path / "data")
    yield running
    running.stop()


def roboflow_annotations(kind: str | None) -> dict[str, Any]:
    """The annotation lists Roboflow's own converter makes of a prediction input of support.vision."""
    from roboflow_workflows.core_steps.sinks.roboflow.vision_events.v1 import _convert_predictions_to_annotations

    return _convert_predictions_to_annotations(None if kind is None else predictions()[kind])


def annotations_of(stored: dict[str, Any]) -> dict[str, Any]:
    entry = stored["images"][0] if stored["images"] else {}
    return {key: entry[key] for key in ANNOTATION_KEYS if key in entry}


# ---------------------------------------------------------------- cloud mode into the service


class Uploads:
    """What fastsend's cloud transport uploaded, by the sourceId the service answered."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.by_source: dict[str, bytes] = {}
        self.attempts = 0
        original, uploads = cloud.CloudTransport._call, self

        class RecordingForm(cloud.aiohttp.FormData):  # type: ignore[misc, name-defined]
            def add_field(self, name: str, value: Any, **kwargs: Any) -> None:
                self.jpeg = value
                super().add_field(name, value, **kwargs)

        async def recording_call(transport: Any, path: str, *, data: Any, content_type: str | None = None) -> Any:
            status, body, headers = await original(transport, path, data=data, content_type=content_type)
            if path == cloud.UPLOAD_PATH:
                uploads.attempts += 1
                if status == 201:
                    uploads.by_source[json.loads(body)["sourceId"]] = data.jpeg
            return status, body, headers

        monkeypatch.setattr(cloud.aiohttp, "FormData", RecordingForm)
        monkeypatch.setattr(cloud.CloudTransport, "_call", recording_call)


def point_cloud_at(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import roboflow_workflows.core_steps.sinks.roboflow.vision_events.v1 as roboflow_block
    import roboflow_workflows.environment as environment

    monkeypatch.setattr(environment, "API_BASE_URL", url)  # where inference reads it; fastsend's block too
    monkeypatch.setattr(roboflow_block, "API_BASE_URL", url)


CLOUD_CASES = [
    ("quality_check", "both", "masks"),
    ("operator_feedback", "input", None),
    ("custom", "output", "classes"),
    ("safety_alert", "none", "poses"),
    ("inventory_count", "both", "bare_segments"),
]


def cloud_engine(cases: list[tuple[str, str, str | None]], **extra: Any) -> ExecutionEngine:
    steps = [vision_step(f"fs_{index}", FASTSEND, *case, **extra) for index, case in enumerate(cases)]
    return ExecutionEngine.init(workflow_definition=workflow(*steps), init_parameters={"workflows_core.api_key": KEY})


def assert_cloud_events_stored(
    service: Serve, uploads: Uploads, cases: list[tuple[str, str, str | None]], tag: str, event_ids: set[str]
) -> None:
    """Each event once, as fastsend's block built it, its images the bytes it uploaded."""
    stored = service.events()
    assert sorted(event["vision_event_id"] for event in stored) == sorted(event_ids), "each event stored once"
    first, second = frames()
    for event in stored:
        index = int(event["custom_metadata"]["pair"])
        event_type, images, kind = cases[index]
        assert event["custom_metadata"] == {"pair": str(index), "run": tag}
        assert (event["solution"], event["event_schema"]) == ("line-7", event_type)
        assert event["event_data"] == EVENT_DATA[event_type](tag)
        assert annotations_of(event) == (roboflow_annotations(kind) if images != "none" else {})
        assert event["idempotency_key"] is None or event["idempotency_key"] == event["vision_event_id"]
        output, source = service.image(event["id"], "output"), service.image(event["id"], "input")
        assert (output is not None, source is not None) == (images in ("output", "both"), images in ("input", "both"))
        for image in (output, source):
            if image is not None:
                assert image in uploads.by_source.values(), "stored byte for byte as uploaded"
        if source is not None:  # the input frames are numpy arrays: the first or the second of the batch
            assert min(np.abs(decoded(source).astype(int) - f).mean() for f in (first, second)) < 2
    # Every image uploaded successfully once: a retry does not upload again what the service took.
    assert len(uploads.by_source) == len(event_ids) // len(cases) * sum(IMAGE_COUNT[images] for _, images, _ in cases)


def event_ids_of(outputs: list[dict[str, Any]], count: int) -> set[str]:
    found = {row[f"fs_{index}"]["event_id"] for row in outputs for index in range(count)}
    for row in outputs:
        for index in range(count):
            assert row[f"fs_{index}"]["error_status"] is False, row[f"fs_{index}"]
            assert row[f"fs_{index}"]["message"] == "Vision event sent successfully"
    return found


def test_cloud_mode_into_the_service_stores_each_event_with_its_use_case_images_annotations_and_event_id(
    service, monkeypatch
):
    uploads = Uploads(monkeypatch)
    point_cloud_at(service.url, monkeypatch)
    engine = cloud_engine(CLOUD_CASES)
    outputs = engine.run(runtime_parameters=runtime("cloud-e2e"))
    engine.close()
    event_ids = event_ids_of(outputs, len(CLOUD_CASES))
    assert len(event_ids) == 2 * len(CLOUD_CASES)
    assert_cloud_events_stored(service, uploads, CLOUD_CASES, "cloud-e2e", event_ids)
    assert uploads.attempts == len(uploads.by_source)


def test_roboflows_cloud_mode_and_fastsends_are_stored_alike(service, monkeypatch):
    point_cloud_at(service.url, monkeypatch)
    steps = [
        vision_step(f"{side}_{index}", block, *case)
        for index, case in enumerate(CLOUD_CASES)
        for side, block in (("fs", FASTSEND), ("rf", ROBOFLOW))
    ]
    engine = ExecutionEngine.init(workflow_definition=workflow(*steps), init_parameters={"workflows_core.api_key": KEY})
    (outputs,) = engine.run(runtime_parameters=runtime("both-clouds", batch=1))
    engine.close()
    stored = {e["vision_event_id"]: e for e in service.events()}
    assert len(stored) == 2 * len(CLOUD_CASES)
    for index, case in enumerate(CLOUD_CASES):
        ours, theirs = (stored[outputs[f"{side}_{index}"]["event_id"]] for side in ("fs", "rf"))
        assert {**shown(ours), "vision_event_id": ""} == {**shown(theirs), "vision_event_id": ""}, case
        for role in ("output", "input"):
            mine, roboflows = service.image(ours["id"], role), service.image(theirs["id"], role)
            assert (mine is None) is (roboflows is None), (case, role)
            if mine is not None:
                assert np.abs(decoded(mine).astype(int) - decoded(roboflows)).mean() < 2, (case, role)


def fast_retries(monkeypatch: pytest.MonkeyPatch, retries: int) -> None:
    """Many quick retries, so that a service starting up or failing at random is waited for (bounded: 30 s)."""
    monkeypatch.setenv("FASTSEND_RETRIES", str(retries))
    monkeypatch.setenv("FASTSEND_BACKOFF_BASE", "0.05")
    monkeypatch.setenv("FASTSEND_BACKOFF_MAX", "0.15")


def test_cloud_events_queued_while_the_service_is_down_are_stored_once_when_it_comes_up(tmp_path, monkeypatch):
    from fastsend.integrations.workflows.vision_events import flush_shared_writers

    fast_retries(monkeypatch, 400)
    uploads = Uploads(monkeypatch)
    port = unused_port()
    point_cloud_at(f"http://127.0.0.1:{port}", monkeypatch)
    engine = cloud_engine(CLOUD_CASES, fire_and_forget=True)
    outputs = engine.run(runtime_parameters=runtime("while-down"))
    assert {row[name]["message"] for row in outputs for name in row} == {"Vision event sent in background task"}
    time.sleep(0.3)  # the first attempts find nothing listening
    running = serve(tmp_path / "data", port)
    try:
        assert flush_shared_writers(timeout=30) == 0
        stored = running.events()
        assert len(stored) == 2 * len(CLOUD_CASES)
        assert_cloud_events_stored(running, uploads, CLOUD_CASES, "while-down", {e["vision_event_id"] for e in stored})
    finally:
        running.stop()
        engine.close()


def test_cloud_events_against_injected_faults_are_stored_once_keeping_their_uploads(tmp_path, monkeypatch):
    fast_retries(monkeypatch, 60)
    uploads = Uploads(monkeypatch)
    running = serve(tmp_path / "data", 0, "--error-rate", "0.35", "--drop-rate", "0.1", "--seed", "11")
    try:
        point_cloud_at(running.url, monkeypatch)
        engine = cloud_engine(CLOUD_CASES)
        outputs = engine.run(runtime_parameters=runtime("faulty"))
        engine.close()
        event_ids = event_ids_of(outputs, len(CLOUD_CASES))
        assert_cloud_events_stored(running, uploads, CLOUD_CASES, "faulty", event_ids)
        # Some uploads failed and were made again; none that succeeded was repeated (counted above).
        assert uploads.attempts > len(uploads.by_source)
    finally:
        running.stop()


# ---------------------------------------------------------------- local mode into the service, both blocks

LOCAL_CASES = [
    ("quality_check", "none", None),
    ("safety_alert", "none", "boxes"),
    ("custom", "output", None),
    ("inventory_count", "output", "masks"),
    ("operator_feedback", "input", None),
    ("quality_check", "input", "poses"),
    ("custom", "both", None),
    ("safety_alert", "both", "classes"),
]
SERVICE_FIELDS = ("id", "received_at", "idempotency_key", "inference_timestamp")


def sent_by_roboflow(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The bodies Roboflow's block posts (requests.post still sends them)."""
    sent: list[dict[str, Any]] = []
    post = requests.post

    def recording_post(url: str, **kwargs: Any) -> requests.Response:
        if "json" in kwargs:
            sent.append(kwargs["json"])
        return post(url, **kwargs)

    monkeypatch.setattr(requests, "post", recording_post)
    return sent


def shown(event: dict[str, Any]) -> dict[str, Any]:
    """A stored event without what the service or the moment decided."""
    kept = {key: value for key, value in event.items() if key not in SERVICE_FIELDS}
    kept["images"] = [{k: v for k, v in e.items() if not k.endswith(("Url", "Type"))} for e in event["images"]]
    return kept


def test_both_blocks_in_local_mode_are_stored_alike_with_and_without_images(service, monkeypatch):
    sent = sent_by_roboflow(monkeypatch)
    steps = [
        vision_step(f"{side}_{index}", block, *case, **LOCAL)
        for index, case in enumerate(LOCAL_CASES)
        for side, block in (("fs", FASTSEND), ("rf", ROBOFLOW))
    ]
    engine = ExecutionEngine.init(workflow_definition=workflow(*steps), init_parameters={})
    (outputs,) = engine.run(runtime_parameters=runtime("local-e2e", url=service.url, batch=1))
    engine.close()
    stored = {(e["idempotency_key"] is not None, e["custom_metadata"]["pair"]): e for e in service.events()}
    assert len(stored) == 2 * len(LOCAL_CASES), "each event stored once"
    sent_images = {
        body["custom_metadata"]["pair"]: {k: base64.b64decode(v) for k, v in body["images"][0].items() if "ase64" in k}
        for body in sent
        if body["images"]
    }
    for index, (event_type, images, kind) in enumerate(LOCAL_CASES):
        ours, theirs = stored[(True, str(index))], stored[(False, str(index))]
        assert outputs[f"fs_{index}"]["event_id"] == ours["id"] and outputs[f"rf_{index}"]["event_id"] == theirs["id"]
        assert shown(ours) == shown(theirs), (event_type, images, kind)
        assert (ours["solution"], ours["event_schema"]) == ("line-7", event_type)
        assert ours["event_data"] == EVENT_DATA[event_type]("local-e2e")
        assert ("displayImagePosition" in ours) is (images != "none")
        assert annotations_of(ours) == (roboflow_annotations(kind) if images != "none" else {})
        for role, key in (("output", "base64Image"), ("input", "inputBase64Image")):
            mine, roboflows = service.image(ours["id"], role), service.image(theirs["id"], role)
            assert roboflows == sent_images.get(str(index), {}).get(key), "Roboflow's block's image stored as sent"
            assert (mine is None) is (roboflows is None), (index, role)
            if mine is not None:
                assert np.abs(decoded(mine).astype(int) - decoded(roboflows)).mean() < 2, (index, role)


def test_an_input_image_alone_that_arrived_as_jpeg_is_stored_as_it_came(service):
    step = vision_step("fs_0", FASTSEND, "custom", "input", None, **LOCAL, input_image="$inputs.image")
    engine = ExecutionEngine.init(workflow_definition=workflow(step), init_parameters={})
    outputs = engine.run(runtime_parameters=runtime("input-only", url=service.url))
    engine.close()
    (_, second) = [row["fs_0"]["event_id"] for row in outputs]
    event = service.get(f"/v2/events/{second}").json()
    assert event["images"][0]["outputImageUrl"] is None and event["displayImagePosition"] == 0
    assert service.image(second, "output") is None
    assert service.image(second, "input") == jpeg_of(frames()[1])


# ---------------------------------------------------------------- Roboflow's bundles through bundles send

BUNDLE_CASES = [("quality_check", "both", "masks"), ("custom", "none", None), ("safety_alert", "output", "classes")]


def roboflow_bundles(directory: Path) -> list[Path]:
    steps = [
        {**vision_step(f"rf_{index}", ROBOFLOW_BUNDLE, *case), "target_directory": str(directory)}
        for index, case in enumerate(BUNDLE_CASES)
    ]
    engine = ExecutionEngine.init(workflow_definition=workflow(*steps), init_parameters={})
    (outputs,) = engine.run(runtime_parameters=runtime("bundled", batch=1))
    return [Path(outputs[f"rf_{index}"]["bundle_path"]) for index in range(len(BUNDLE_CASES))]


def bundles_send(directory: Path, *options: str, key_from_env: bool = True) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "fastsend", "bundles", "send", str(directory), *options]
    env = {k: v for k, v in python_env().items() if key_from_env or k != API_KEY_ENV}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


def test_roboflows_bundles_are_delivered_by_bundles_send_once_and_moved_aside(service, tmp_path):
    written = roboflow_bundles(tmp_path / "bundles")
    bundles = {read_bundle(path).event_id: read_bundle(path) for path in written}
    assert any(not bundle.payload["images"] for bundle in bundles.values()), "one bundle without images"
    key_file = tmp_path / "service.key"
    key_file.write_text(KEY)
    finished = bundles_send(
        tmp_path / "bundles", "--url", service.url, "--api-key-file", str(key_file), key_from_env=False
    )
    assert finished.returncode == 0, finished.stderr
    assert "3 sent, 0 refused" in finished.stdout
    stored = service.events()
    assert sorted(event["idempotency_key"] for event in stored) == sorted(bundles)
    for event in stored:
        bundle = bundles[event["idempotency_key"]]
        payload = bundle.payload
        entry = payload["images"][0] if payload["images"] else {}
        assert (event["event_schema"], event["solution"]) == (payload["eventType"], payload["useCaseId"])
        assert event["event_data"] == payload["eventData"] and event["custom_metadata"] == payload["customMetadata"]
        assert event["inference_timestamp"] == payload["timestamp"]
        assert annotations_of(event) == {key: entry[key] for key in ANNOTATION_KEYS if key in entry}
        assert ("displayImagePosition" in event) is bool(payload["images"])
        assert service.image(event["id"], "output") == bundle.image(entry.get("file"))
        assert service.image(event["id"], "input") == bundle.image(entry.get("inputFile"))
    sent = tmp_path / "bundles" / "sent"
    assert sorted(p.name for p in sent.iterdir()) == sorted(p.name for p in written)
    assert list((tmp_path / "bundles").glob("*.tar.gz")) == []
    # Again: nothing to send. Then a bundle acknowledged but not moved (a crash between the two): stored once.
    again = bundles_send(tmp_path / "bundles", "--url", service.url)
    assert again.returncode == 0 and "0 sent, 0 refused" in again.stdout, again.stderr
    shutil.copy(sent / written[0].name, tmp_path / "bundles")
    resent = bundles_send(tmp_path / "bundles", "--url", service.url)
    assert resent.returncode == 0 and "1 sent, 0 refused" in resent.stdout, resent.stderr
    assert [event["id"] for event in service.events()] == [event["id"] for event in stored]
    assert list((tmp_path / "bundles").glob("*.tar.gz")) == []


# ---------------------------------------------------------------- side by side: what test_vision_events.py leaves out

# Headers the HTTP client libraries add on their own (requests for Roboflow's block, aiohttp for fastsend's).
CLIENT_HEADERS = {"host", "user-agent", "accept", "accept-encoding", "connection", "content-length"}


def cloud_answers(refuse: bool = False):
    def answer(received: Received) -> Reply:
        if refuse:
            return Reply(400, {"detail": "no"})
        if "upload" in received.path + received.query:
            return Reply(200, {"sourceId": f"src-{received.index}", "url": "https://example.invalid/x"})
        return Reply(200, {"status": "ok"})

    return answer


def upload_part(request: Received) -> tuple[dict[str, str], bytes]:
    """The one part of a multipart upload: its headers and its bytes."""
    boundary = request.headers["Content-Type"].split("boundary=", 1)[1].strip('"').encode()
    (part,) = [p for p in request.raw.split(b"--" + boundary) if p.strip() not in (b"", b"--")]
    head, _, data = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
    return dict(line.split(": ", 1) for line in head.decode().split("\r\n")), data.removesuffix(b"\r\n")


def request_shape(request: Received) -> tuple[Any, ...]:
    """A cloud request without ids, times and what the client library adds; an upload's JPEG by its tables."""
    headers = {k.lower(): v for k, v in request.headers.items() if k.lower() not in CLIENT_HEADERS}
    if request.json is None:
        part_headers, data = upload_part(request)
        headers["content-type"] = headers["content-type"].split(";")[0]
        return ("upload", request.path, request.query, headers, part_headers, decoded(data).shape, data[:150])
    event = dict(request.json, eventId="<id>", timestamp="<time>")
    event["images"] = [{k: ("<source>" if k.endswith("ourceId") else v) for k, v in e.items()} for e in event["images"]]
    return ("event", request.path, request.query, headers, event)


def by_event(requests_made: list[Received]) -> dict[str, list[tuple[Any, ...]]]:
    """Each event's requests (its uploads, then the event) by the case it came from; the steps run one by one."""
    grouped, pending = {}, []
    for request in requests_made:
        pending.append(request_shape(request))
        if request.json is not None:
            grouped[request.json["customMetadata"]["pair"]] = pending
            pending = []
    assert pending == [], "uploads without their event"
    return grouped


def full_matrix() -> list[tuple[str, str, str | None]]:
    cases = []
    for type_index, event_type in enumerate(EVENT_TYPES):
        for combo_index, images in enumerate(IMAGE_COMBINATIONS):
            kind = PREDICTION_INPUTS[(type_index + combo_index) % len(PREDICTION_INPUTS)]
            cases += [(event_type, images, None), (event_type, images, kind)]
    return cases


def run_cloud_side(block: str, cases: list[tuple[str, str, str | None]], **extra: Any) -> ExecutionEngine:
    """An engine with one cloud-mode step of ``block`` per case (the steps run one after another)."""
    steps = [vision_step(f"x_{index}", block, *case, **extra) for index, case in enumerate(cases)]
    return ExecutionEngine.init(workflow_definition=workflow(*steps), init_parameters={"workflows_core.api_key": KEY})


@pytest.fixture
def platform_extras(monkeypatch):
    """ROBOFLOW_API_EXTRA_HEADERS (one of them the credential) and a SECURE_GATEWAY, as inference reads them."""
    import inference.core.roboflow_api as roboflow_api
    import inference.core.utils.url_utils as url_utils

    extra = '{"X-Tenant": "plant-4", "Authorization": "Bearer from-the-gateway"}'
    monkeypatch.setattr(roboflow_api, "ROBOFLOW_API_EXTRA_HEADERS", extra)
    return lambda gateway: monkeypatch.setattr(url_utils, "SECURE_GATEWAY", gateway)


def test_cloud_request_sequences_are_roboflows_for_every_type_image_combination_and_predictions(monkeypatch):
    cases = full_matrix()
    seen = {}
    for block in (FASTSEND, ROBOFLOW):
        with ScriptedServer(cloud_answers()) as server:
            point_cloud_at(server.base_url, monkeypatch)
            engine = run_cloud_side(block, cases)
            (outputs,) = engine.run(runtime_parameters=runtime("matrix", batch=1))
            engine.close()
        assert {outputs[f"x_{i}"]["message"] for i in range(len(cases))} == {"Vision event sent successfully"}
        seen[block] = by_event(server.requests)
    assert len(seen[FASTSEND]) == len(cases)
    for index, case in enumerate(cases):
        assert seen[FASTSEND][str(index)] == seen[ROBOFLOW][str(index)], case


def test_cloud_requests_carry_the_platform_clients_headers_and_gateway_url_as_roboflows_do(
    monkeypatch, platform_extras
):
    cases = [("quality_check", "both", "boxes"), ("custom", "none", None)]
    seen = {}
    with ScriptedServer(cloud_answers()) as server:
        point_cloud_at(server.base_url, monkeypatch)
        platform_extras(server.base_url)  # the gateway is the loopback server too: it answers /proxy
        for block in (FASTSEND, ROBOFLOW):
            made = len(server.requests)
            engine = run_cloud_side(block, cases)
            (outputs,) = engine.run(runtime_parameters=runtime("gateway", batch=1))
            engine.close()
            assert outputs["x_0"]["error_status"] is False, outputs
            seen[block] = by_event(server.requests[made:])
    assert {r.path for r in server.requests} == {"/proxy"}
    (upload, _, event) = seen[FASTSEND]["0"]
    assert upload[2] == "url=" + requests.utils.quote(f"{server.base_url}/vision-events/upload", safe="~()*!'")
    assert upload[3]["authorization"] == "Bearer from-the-gateway" and upload[3]["x-tenant"] == "plant-4"
    assert upload[3]["x-roboflow-inference-version"] and event[3]["content-type"] == "application/json"
    assert seen[FASTSEND] == seen[ROBOFLOW]


def cooldown_runs(block: str, script: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[list[dict[str, Any]], int]:
    """Three runs of one step with a 1 s cooldown: at once, at once again, and once it has passed."""
    with ScriptedServer(script) as server:
        point_cloud_at(server.base_url, monkeypatch)
        engine = run_cloud_side(block, [("custom", "output", None)], cooldown_seconds=1)
        results = [engine.run(runtime_parameters=runtime("cooldown", batch=1))[0]["x_0"] for _ in range(2)]
        time.sleep(1.05)
        results.append(engine.run(runtime_parameters=runtime("cooldown", batch=1))[0]["x_0"])
        engine.close()
    return results, len(server.requests)


@pytest.mark.parametrize("refuse", [False, True], ids=["delivered", "refused"])
def test_cloud_cooldown_and_throttling_status_are_roboflows_also_after_a_failure(monkeypatch, refuse):
    ours, our_count = cooldown_runs(FASTSEND, cloud_answers(refuse), monkeypatch)
    theirs, their_count = cooldown_runs(ROBOFLOW, cloud_answers(refuse), monkeypatch)
    assert our_count == their_count == (2 if refuse else 4), "a failed event still starts the cooldown"
    assert [r["throttling_status"] for r in ours] == [r["throttling_status"] for r in theirs] == [False, True, False]
    assert [r["error_status"] for r in ours] == [r["error_status"] for r in theirs] == [refuse, False, refuse]
    assert (
        ours[1]
        == theirs[1]
        == {
            "error_status": False,
            "throttling_status": True,
            "event_id": "",
            "message": "Sink cooldown applies",
        }
    )
