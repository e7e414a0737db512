"""The command line, run as users run it: ``python -m fastsend …`` in a subprocess."""

from __future__ import annotations

import io
import platform
import re
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support.cli import CLI_TIMEOUT, fastsend_cli
from support.service_process import REPO_ROOT

import fastsend
from fastsend.cli.commands import _progress
from fastsend.server import ReferenceService

pytestmark = pytest.mark.timeout(90)

TIMEOUT = CLI_TIMEOUT


def test_send_prints_the_event_id_and_the_service_stores_the_event(service, jpeg_file: Path) -> None:
    done = fastsend_cli(
        "send", "--url", service.url, "--image", str(jpeg_file), "--input-image", str(jpeg_file),
        "--schema", "safety_alert", "--alert-type", "fall", "--severity", "high",
        "--metadata", "line:=3", "--metadata", "ok:=true", "--metadata", "ratio:=0.5", "--metadata", "site=north dock",
        "--metadata", "zip=007", "--metadata", "id=12345678901234567890123", "--metadata", "flag=true",
        "--metadata", "quoted:=\"7\"", "--metadata", "formula=a=b",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    event_id = done.stdout.strip()
    stored = service.get_event(event_id)
    assert stored is not None
    assert stored["event_schema"] == "safety_alert"
    assert stored["event_data"] == {"alertType": "fall", "severity": "high"}
    # KEY=VALUE is a string, whatever it looks like; KEY:=JSON is typed.
    assert stored["custom_metadata"] == {
        "line": 3, "ok": True, "ratio": 0.5, "site": "north dock",
        "zip": "007", "id": "12345678901234567890123", "flag": "true", "quoted": "7", "formula": "a=b",
    }  # fmt: skip
    assert service.get_image(event_id, "output") == jpeg_file.read_bytes()
    assert service.get_image(event_id, "input") == jpeg_file.read_bytes()


def test_send_with_invalid_field_exits_2_naming_the_field(service, jpeg_file: Path) -> None:
    done = fastsend_cli(
        "send", "--url", service.url, "--image", str(jpeg_file), "--schema", "safety_alert", "--severity", "extreme"
    )  # fmt: skip
    assert done.returncode == 2
    assert "severity" in done.stderr and "extreme" in done.stderr
    assert service.stored_count() == 0


@pytest.mark.parametrize(
    "options, named",
    [
        (["--schema", "custom", "--severity", "high"], "--severity: 'high' is not a field of custom (it takes --value"),
        (["--schema", "quality_check", "--value", "x"], "--value: 'x' is not a field of quality_check"),
        (["--schema", "operator_feedback", "--item-count", "3"], "--item-count: 3 is not a field of operator_feedback"),
    ],
)
def test_send_with_an_option_its_schema_does_not_take_exits_2_naming_it(
    service, jpeg_file: Path, options: list[str], named: str
) -> None:
    done = fastsend_cli("send", "--url", service.url, "--image", str(jpeg_file), *options)
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {named}"), done.stderr
    assert service.stored_count() == 0


@pytest.mark.parametrize(
    "pair, named",
    [
        ("zip:=007", "--metadata: 'zip:=007' must hold JSON after :="),
        ("line", "--metadata: 'line' must be KEY=VALUE (a string) or KEY:=JSON"),
        ("id:=12345678901234567890123", "--metadata (custom_metadata['id']): 12345678901234567890123 must fit in 64"),
        ("ratio:=NaN", "--metadata (custom_metadata['ratio']): nan must be a finite number"),
        ("list:=[1]", "--metadata (custom_metadata['list']): [1] must be str, int, float or bool"),
    ],
)
def test_send_with_bad_metadata_exits_2_naming_the_option(service, jpeg_file: Path, pair: str, named: str) -> None:
    done = fastsend_cli(
        "send", "--url", service.url, "--image", str(jpeg_file), "--schema", "custom", "--metadata", pair
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {named}"), done.stderr
    assert service.stored_count() == 0


def test_send_names_the_option_typed_when_a_value_breaks_its_rule(service, jpeg_file: Path) -> None:
    done = fastsend_cli(
        "send", "--url", service.url, "--image", str(jpeg_file), "--schema", "inventory_count", "--item-count", "-3"
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: --item-count (event_data.itemCount): -3 must be between 0 and")


def test_send_names_the_image_and_label_options_typed(service, jpeg_file: Path, tmp_path: Path) -> None:
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_bytes(b"plain text")
    done = fastsend_cli("send", "--url", service.url, "--image", str(not_an_image), "--schema", "custom")
    assert done.returncode == 2
    assert done.stderr.startswith("error: --image: b'plain text' bytes must be a JPEG or PNG"), done.stderr
    done = fastsend_cli(
        "send", "--url", service.url, "--image", str(jpeg_file), "--schema", "custom", "--label", "x" * 1001
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: --label (images[0].label): 'xxx"), done.stderr
    assert service.stored_count() == 0


def test_send_help_explains_the_metadata_convention() -> None:
    done = fastsend_cli("send", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "KEY=VALUE sends VALUE as a string" in text and "KEY:=JSON sends a JSON number, true or false" in text


def test_fastsend_alone_prints_the_help_and_exits_0() -> None:
    done = fastsend_cli()
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: fastsend")
    assert all(command in done.stdout for command in ("serve", "send", "demo", "--version"))
    assert done.stderr == ""


def test_version_prints_the_package_version_and_the_python() -> None:
    done = fastsend_cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"fastsend {fastsend.__version__} (Python {platform.python_version()})"


def test_send_with_unreadable_image_exits_2(service, tmp_path: Path) -> None:
    done = fastsend_cli("send", "--url", service.url, "--image", str(tmp_path / "missing.jpg"), "--schema", "custom")
    assert done.returncode == 2
    assert "--image" in done.stderr


def test_send_rejected_by_the_service_exits_1_with_its_status(tmp_path: Path, jpeg_file: Path) -> None:
    with ReferenceService(tmp_path / "locked", api_key="right-key") as locked:
        done = fastsend_cli(
            "send", "--url", locked.url, "--image", str(jpeg_file), "--schema", "custom", "--value", "x",
            env={"EVENT_INGESTION_API_KEY": "wrong-key"},
        )  # fmt: skip
        assert done.returncode == 1
        assert "HTTP 401" in done.stderr
        assert locked.stored_count() == 0


def test_send_to_nothing_listening_exits_1_within_its_deadline(jpeg_file: Path) -> None:
    done = fastsend_cli(
        "send", "--url", "http://127.0.0.1:9", "--image", str(jpeg_file), "--schema", "custom",
        "--timeout", "0.5", "--deadline", "1.5",
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.count("connection error") == 1, done.stderr  # the CLI's line, not the library's log too
    assert done.stderr.startswith("error: connection error")


def test_serve_answers_send_and_stops_on_sigterm(tmp_path: Path, jpeg_file: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "fastsend", "serve", "--port", "0", "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        readable, _, _ = select.select([server.stdout], [], [], TIMEOUT)
        banner = server.stdout.readline() if readable else ""
        match = re.search(r"on (http://\S+)", banner)
        assert match, f"no URL in {banner!r}"
        done = fastsend_cli(
            "send", "--url", match.group(1), "--image", str(jpeg_file), "--schema", "quality_check", "--result", "pass"
        )
        assert done.returncode == 0, done.stderr
        assert re.fullmatch(r"[0-9a-f-]{36}", done.stdout.strip())
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(TIMEOUT) == 0
    assert (tmp_path / "data").is_dir()


def test_demo_end_to_end_on_the_embedded_service() -> None:
    done = fastsend_cli("demo", "--frames", "24", "--width", "320", "--height", "240")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verified      24/24 acknowledged events" in done.stdout
    assert re.search(r"events\s+24 in [\d.]+s", done.stdout)
    # stdout is a pipe here: no bar redrawn with carriage returns, whole progress lines instead.
    assert "\r" not in done.stdout
    progress = [line for line in done.stdout.splitlines() if line.startswith("progress")]
    assert 1 <= len(progress) <= 4 and re.match(r"progress\s+24/24 events", progress[-1])
    assert re.search(r"latency\s+submit→201 p50 [\d.]+ ms", done.stdout)


def test_demo_with_nothing_acknowledged_shows_no_latency_and_each_failure_once() -> None:
    done = fastsend_cli("demo", "--url", "http://127.0.0.1:9", "--frames", "2", "--width", "64", "--height", "48")
    assert done.returncode == 1
    latency = next(line for line in done.stdout.splitlines() if line.startswith("latency"))
    assert "—" in latency and "ms" not in latency
    assert re.search(r"^  2 \u00d7 connection error", done.stdout, re.M)
    assert "connection error" not in done.stderr  # the summary says it; the library's warnings stay quiet


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_progress_bar_redraws_in_place_and_ends_its_line() -> None:
    out = _Terminal()
    show = _progress(10, out)
    show(0, 0, 0.1)
    show(10, 1, 1.0)
    show(10, 1, 1.1)  # after the end: nothing more
    text = out.getvalue()
    assert text.startswith("\r[") and text.count("\r") == 2
    assert text.endswith("10/10 events    10.0/s  failures 1\n") and text.count("\n") == 1


def test_off_a_terminal_progress_is_a_few_plain_lines() -> None:
    out = io.StringIO()
    show = _progress(100, out)
    for done in range(0, 101, 5):
        show(done, 0, 1.0)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split()[1] for line in lines] == ["25/100", "50/100", "75/100", "100/100"]


def test_demo_against_a_running_service(service) -> None:
    done = fastsend_cli("demo", "--url", service.url, "--frames", "12", "--width", "160", "--height", "120")
    assert done.returncode == 0, done.stdout + done.stderr
    assert service.stored_count() == 12
    schemas = {event["event_schema"] for event in service.list_events()}
    assert schemas == {"quality_check", "inventory_count", "safety_alert", "custom"}


@pytest.mark.parametrize("option, value", [("--error-rate", "2"), ("--capacity", "-1"), ("--drop-rate", "-0.5")])
def test_serve_refuses_a_bad_option_naming_it(tmp_path: Path, option: str, value: str) -> None:
    done = fastsend_cli("serve", "--port", "0", "--data-dir", str(tmp_path / "data"), option, value)
    assert done.returncode == 2
    assert option in done.stderr and value.lstrip("-") in done.stderr
