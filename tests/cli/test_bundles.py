"""``fastsend bundles send DIR`` with bundles written by Roboflow's bundle block and by fastsend's.

Into the reference service, and into loopback servers that refuse, fail or answer as the cloud API does.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support.inference import require_inference
from support.scripted_server import Received, Reply, ScriptedServer

require_inference()

from inference.core.workflows.execution_engine.core import ExecutionEngine  # noqa: E402
from support.vision import runtime, vision_step, workflow  # noqa: E402

from fastsend.cli import main  # noqa: E402
from fastsend.integrations.block import API_KEY_ENV  # noqa: E402
from fastsend.integrations.bundles import read_bundle  # noqa: E402
from fastsend.server import ReferenceService  # noqa: E402

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"),
]

BLOCKS = {"fs": "fastsend/vision_event_bundle@v1", "rf": "roboflow_core/vision_event_bundle@v1"}
CASES = [("quality_check", "both", "masks"), ("custom", "output", "classes"), ("safety_alert", "both", "poses")]


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """Six bundles: three cases written by each block."""
    directory = tmp_path_factory.mktemp("bundles")
    with pytest.MonkeyPatch.context() as patch:
        current = [p for p in os.environ.get("WORKFLOWS_PLUGINS", "").split(",") if p]
        patch.setenv("WORKFLOWS_PLUGINS", ",".join([*current, "fastsend.workflows"]))
        steps = [
            {**vision_step(f"{prefix}_{index}", block, *case), "target_directory": str(directory)}
            for prefix, block in BLOCKS.items()
            for index, case in enumerate(CASES)
        ]
        engine = ExecutionEngine.init(workflow_definition=workflow(*steps), init_parameters={})
        engine.run(runtime_parameters=runtime("bundled", batch=1))
    assert len(list(directory.glob("*.tar.gz"))) == 6
    return directory


@pytest.fixture
def inbox(written, tmp_path) -> Path:
    copy = tmp_path / "inbox"
    shutil.copytree(written, copy)
    return copy


@pytest.fixture(autouse=True)
def no_key(monkeypatch):
    monkeypatch.delenv(API_KEY_ENV, raising=False)


def test_bundles_of_both_blocks_are_stored_by_the_reference_service_and_moved_aside(inbox, tmp_path, capsys):
    bundles = {read_bundle(p).event_id: read_bundle(p) for p in inbox.glob("*.tar.gz")}
    with ReferenceService(tmp_path / "store") as service:
        assert main(["bundles", "send", str(inbox), "--url", service.url]) == 0
        stored = service.list_events()
        assert len(stored) == 6
        for event in stored:
            bundle = bundles[event["idempotency_key"]]
            payload, (entry,) = bundle.payload, bundle.payload["images"]
            assert event["event_schema"] == payload["eventType"]
            assert event["event_data"] == payload["eventData"]
            assert event["custom_metadata"] == payload["customMetadata"]
            assert event["solution"] == payload["useCaseId"] == "line-7"
            (image,) = event["images"]
            for key in ("objectDetections", "classifications", "instanceSegmentations", "keypoints"):
                assert image.get(key) == entry.get(key), key
            assert service.get_image(event["id"], "output") == bundle.image(entry["file"])
            assert service.get_image(event["id"], "input") == bundle.image(entry.get("inputFile"))
    assert list(inbox.glob("*.tar.gz")) == []
    assert len(list((inbox / "sent").glob("*.tar.gz"))) == 6
    assert "6 sent, 0 refused" in capsys.readouterr().out


def test_refused_bundles_are_set_aside_with_the_reason_and_unreachable_ones_wait_for_the_next_run(inbox):
    (inbox / "broken.tar.gz").write_bytes(b"not a tarball")
    first = sorted(inbox.glob("event_*.tar.gz"))[0]

    def answer(received: Received) -> Reply:
        if received.headers["Idempotency-Key"] == read_bundle(first).event_id:
            return Reply(422, {"detail": "event_data.result: bad"})
        return Reply(503, {"detail": "busy"})

    with ScriptedServer(answer) as server:
        assert main(["bundles", "send", str(inbox), "--url", server.base_url]) == 1
    refused = inbox / "refused"
    assert sorted(p.name for p in refused.iterdir()) == sorted(
        [first.name, f"{first.name}.reason.txt", "broken.tar.gz", "broken.tar.gz.reason.txt"]
    )
    assert "422" in (refused / f"{first.name}.reason.txt").read_text()
    assert len(list(inbox.glob("*.tar.gz"))) == 5, "the ones not acknowledged are still there"
    # The next run delivers them, each with its eventId as the Idempotency-Key.
    with ScriptedServer(Reply(201)) as server:
        assert main(["bundles", "send", str(inbox), "--url", server.base_url, "--delete"]) == 0
        keys = {r.headers["Idempotency-Key"] for r in server.requests}
    assert list(inbox.glob("*.tar.gz")) == [] and not (inbox / "sent").exists()
    assert len(keys) == 5


def test_bundles_go_to_the_cloud_api_as_uploads_and_their_event(inbox):
    bundles = {read_bundle(p).event_id: read_bundle(p) for p in inbox.glob("*.tar.gz")}

    def answer(received: Received) -> Reply:
        if received.path.endswith("/upload"):
            return Reply(200, {"sourceId": f"src-{received.index}"})
        return Reply(201, {"status": "ok"})

    with ScriptedServer(answer) as server:
        code = main(["bundles", "send", str(inbox), "--cloud", "--api-url", server.base_url, "--api-key", "k3y"])
        assert code == 0
        requests = list(server.requests)
    events = [r for r in requests if r.path == "/vision-events"]
    uploads = {f"src-{r.index}": r for r in requests if r.path == "/vision-events/upload"}
    assert len(events) == 6 and all(r.headers["Authorization"] == "Bearer k3y" for r in requests)
    for request in events:
        bundle = bundles[request.json["eventId"]]
        (entry,) = bundle.payload["images"]
        (sent,) = request.json["images"]
        assert request.json["useCaseId"] == "line-7" and request.json["timestamp"] == bundle.payload["timestamp"]
        assert {k: v for k, v in sent.items() if not k.endswith("ourceId")} == {
            k: v for k, v in entry.items() if k not in ("file", "inputFile")
        }
        # Uploaded as they are in the bundle: the JPEG bytes, not encoded again.
        assert bundle.image(entry["file"]) in uploads[sent["sourceId"]].raw
    assert len(list((inbox / "sent").glob("*.tar.gz"))) == 6


def test_a_missing_directory_or_key_is_a_usage_error(tmp_path, capsys):
    assert main(["bundles", "send", str(tmp_path / "nowhere"), "--url", "http://127.0.0.1:9"]) == 2
    assert main(["bundles", "send", str(tmp_path), "--cloud", "--api-key", ""]) == 2
    assert "--api-key" in capsys.readouterr().err


def test_the_key_comes_from_a_file_for_either_destination(inbox, tmp_path, capsys):
    key_file = tmp_path / "key"
    key_file.write_text("  file-key-1\n")
    with ReferenceService(tmp_path / "store", api_key="file-key-1") as service:
        assert main(["bundles", "send", str(inbox), "--url", service.url, "--api-key-file", str(key_file)]) == 0
        assert len(service.list_events()) == 6
    for sent in (inbox / "sent").iterdir():
        sent.rename(inbox / sent.name)

    def answer(received: Received) -> Reply:
        if received.path.endswith("/upload"):
            return Reply(200, {"sourceId": f"src-{received.index}"})
        return Reply(201, {"status": "ok"})

    with ScriptedServer(answer) as server:
        command = ["bundles", "send", str(inbox), "--cloud", "--api-url", server.base_url, "--api-key-file"]
        assert main([*command, str(key_file)]) == 0
        assert {r.headers["Authorization"] for r in server.requests} == {"Bearer file-key-1"}
    assert "6 sent, 0 refused" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("options", "named"),
    [
        (["--url", "http://127.0.0.1:9", "--api-key", "s3cret"], "--api-key: '***' is for --cloud only"),
        (["--cloud", "--api-key", "k", "--api-key-file", "k.txt"], "not allowed with argument"),
        (["--cloud", "--api-key-file", "missing.txt"], "--api-key-file: 'missing.txt' must be a readable UTF-8 file"),
        (["--url", "http://127.0.0.1:9", "--api-key-file", "empty.txt"], "must hold the key (the file is empty)"),
    ],
    ids=["--api-key with --url", "both", "missing file", "empty file"],
)
def test_a_key_option_that_cannot_apply_is_a_usage_error(tmp_path, monkeypatch, capsys, options, named):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("\n")
    assert main(["bundles", "send", str(tmp_path), *options]) == 2
    error = capsys.readouterr().err
    assert named in error and "s3cret" not in error
