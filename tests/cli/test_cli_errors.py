"""The command line as a newcomer meets it: each failure one line naming the option typed, the right exit
status, no traceback unless -v; did-you-mean; help for every option; the key from a file; the demo's link."""

from __future__ import annotations

import argparse
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from support.cli import CLI_TIMEOUT, fastsend_cli
from support.service_process import REPO_ROOT

from fastsend.cli.commands import _parser
from fastsend.server import ReferenceService

pytestmark = pytest.mark.timeout(90)

TIMEOUT = CLI_TIMEOUT


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    """The failure's one line; fails the test if stderr holds more (a usage block, a traceback)."""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: "), done.stderr
    return lines[0]


@pytest.fixture
def busy_port():
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        yield listening.getsockname()[1]


def test_serve_on_a_busy_port_is_one_line_naming_the_port_and_exit_1(tmp_path: Path, busy_port: int) -> None:
    done = fastsend_cli("serve", "--port", str(busy_port), "--data-dir", str(tmp_path / "data"))
    assert done.returncode == 1
    line = one_line_error(done)
    assert line.startswith(f"error: --port: {busy_port} on 127.0.0.1 is in use"), line


def test_with_v_a_failure_shows_its_traceback_too(tmp_path: Path, busy_port: int) -> None:
    done = fastsend_cli("serve", "--port", str(busy_port), "--data-dir", str(tmp_path / "data"), "-v")
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: --port: {busy_port}")


def test_serve_with_an_unusable_data_dir_names_it_and_exits_1(tmp_path: Path) -> None:
    a_file = tmp_path / "not-a-directory"
    a_file.write_text("x")
    done = fastsend_cli("serve", "--port", "0", "--data-dir", str(a_file))
    assert done.returncode == 1
    assert one_line_error(done).startswith(f"error: --data-dir: {str(a_file)!r} cannot hold the service's data")


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["serve", "--port", "99999"], "error: --port: '99999' must be a port number from 0 to 65535"),
        (["demo", "--width", "0"], "error: --width: '0' must be an integer from 32 to 8192"),
        (["demo", "--frames", "-5"], "error: --frames: '-5' must be an integer from 1 to"),
        (["demo", "--fps", "nan"], "error: --fps: 'nan' must be a number ≥ 0"),
        (["send", "--image", "x.jpg", "--schema", "custom", "--timeout", "-1"], "error: --timeout: '-1' must be"),
        (["send", "--image", "x.jpg", "--schema", "custom", "--deadline", "0"], "error: --deadline: '0' must be"),
        (
            ["send", "--image", "x.jpg", "--schema", "custom", "--url", "localhost:8001"],
            "error: --url: 'localhost:8001' must start with http:// or https://",
        ),
        (
            ["send", "--image", "x.jpg", "--schema", "custom", "--url", "http://local host:8001"],
            "error: --url: 'http://local host:8001' must name a valid host",
        ),
    ],
)
def test_a_bad_value_is_one_line_naming_the_option_and_exit_2(arguments: list[str], expected: str) -> None:
    done = fastsend_cli(*arguments, timeout=15)
    assert done.returncode == 2
    line = one_line_error(done)
    assert line.startswith(expected), line
    assert "request_timeout" not in line and line.count("http:// or https://") <= 1  # said once, in its words


def test_a_bmp_image_is_named_by_its_format_not_its_bytes(service, tmp_path: Path) -> None:
    bmp = tmp_path / "frame.bmp"
    bmp.write_bytes(b"BM" + bytes(52))
    done = fastsend_cli("send", "--url", service.url, "--image", str(bmp), "--schema", "custom")
    assert done.returncode == 2
    line = one_line_error(done)
    assert line.startswith("error: --image: ") and "is a BMP image" in line and "b'BM" not in line, line


@pytest.mark.parametrize("where", ["before", "after"])
def test_v_is_taken_before_or_after_the_command(tmp_path: Path, where: str) -> None:
    send = ["send", "--image", str(tmp_path / "missing.jpg"), "--schema", "custom"]
    done = fastsend_cli(*(["-v", *send] if where == "before" else [*send, "-v"]))
    assert done.returncode == 2
    assert "--image" in done.stderr and "unrecognized" not in done.stderr and "no such option" not in done.stderr


@pytest.mark.parametrize(
    "arguments, suggestion",
    [
        (["send", "--timout", "3"], "error: --timout: no such option for fastsend send; did you mean --timeout?"),
        (
            ["send", "--api-key", "k"],
            "error: --api-key: no such option for fastsend send; did you mean --api-key-file?",
        ),
        (["demo", "--frame", "3"], "error: --frame: no such option for fastsend demo; did you mean --frames?"),
        (["sedn"], "error: the command: 'sedn' must be one of serve, send, demo, bundles; did you mean 'send'?"),
        (
            ["send", "--image", "x.jpg", "--schema", "safety_alert", "--severity", "hgih"],
            "error: --severity: 'hgih' must be one of low, medium, high; did you mean 'high'?",
        ),
    ],
)
def test_a_mistyped_option_or_choice_gets_the_closest_one(arguments: list[str], suggestion: str) -> None:
    done = fastsend_cli(*arguments)
    assert done.returncode == 2
    assert one_line_error(done).startswith(suggestion), done.stderr


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_has_help_and_a_closed_set_lists_its_values() -> None:
    for name, command in _subparsers(_parser()).items():
        for action in command._actions:
            assert action.help, f"fastsend {name} {'/'.join(action.option_strings)} has no help"
    done = fastsend_cli("send", "--help")
    text = " ".join(done.stdout.split())
    for values in ("pass, fail", "low, medium, high", "correct, incorrect, inconclusive"):
        assert f"one of {values}" in text
    assert "EVENT_INGESTION_API_KEY" in text and "--api-key-file PATH" in text


def test_a_mistyped_fastsend_variable_is_warned_without_v(service, jpeg_file: Path) -> None:
    done = fastsend_cli(
        "send", "--url", service.url, "--image", str(jpeg_file), "--schema", "custom",
        env={"FASTSEND_QUEU_SIZE": "3", "FASTSEND_API_KEY": "k"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "FASTSEND_QUEU_SIZE is not a fastsend setting" in done.stderr and "FASTSEND_QUEUE_SIZE" in done.stderr
    api_key_warning = next(line for line in done.stderr.splitlines() if "FASTSEND_API_KEY " in line)
    assert "did you mean EVENT_INGESTION_API_KEY" in api_key_warning


def test_send_takes_the_key_from_api_key_file(tmp_path: Path, jpeg_file: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("right-key\n")
    with ReferenceService(tmp_path / "locked", api_key="right-key") as locked:
        done = fastsend_cli(
            "send", "--url", locked.url, "--image", str(jpeg_file), "--schema", "custom",
            "--api-key-file", str(key_file),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert locked.get_event(done.stdout.strip()) is not None


def test_a_refused_key_is_told_in_the_command_lines_words(tmp_path: Path, jpeg_file: Path) -> None:
    with ReferenceService(tmp_path / "locked", api_key="right-key") as locked:
        done = fastsend_cli("send", "--url", locked.url, "--image", str(jpeg_file), "--schema", "custom")
    assert done.returncode == 1
    line = one_line_error(done)
    assert "HTTP 401" in line and "--api-key-file" in line and "EVENT_INGESTION_API_KEY" in line
    assert "api_key=" not in line


def test_an_empty_key_file_is_refused_naming_it(tmp_path: Path, jpeg_file: Path) -> None:
    empty = tmp_path / "key"
    empty.write_text("  \n")
    done = fastsend_cli("send", "--image", str(jpeg_file), "--schema", "custom", "--api-key-file", str(empty))
    assert done.returncode == 2
    assert one_line_error(done).startswith(f"error: --api-key-file: {str(empty)!r} must hold the key")


def test_the_demo_does_not_end_on_a_link_to_a_viewer_that_is_gone() -> None:
    done = fastsend_cli("demo", "--frames", "2", "--width", "64", "--height", "48")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "viewer" not in done.stdout.replace("in its viewer", "")
    assert done.stdout.strip().splitlines()[-1].endswith("run with --keep to browse the events in its viewer")


def test_demo_keep_serves_the_viewer_until_ctrl_c(processes: list[subprocess.Popen[str]]) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "fastsend", "demo", "--frames", "2", "--width", "64", "--height", "48", "--keep"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    processes.append(demo)
    assert demo.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in demo.stdout], daemon=True).start()
    line, ends = "", time.monotonic() + TIMEOUT
    while "serving until Ctrl-C" not in line:
        line = lines.get(timeout=max(0.01, ends - time.monotonic()))  # queue.Empty past the time allowed
    assert line.startswith("viewer"), line
    viewer = line.split()[1]
    with urllib.request.urlopen(viewer, timeout=10) as page:  # the embedded service on loopback
        assert page.status == 200
    demo.send_signal(signal.SIGINT)
    assert demo.wait(TIMEOUT) == 0


def test_serve_warns_of_a_mistyped_fastsend_variable_too(busy_port: int, tmp_path: Path) -> None:
    done = fastsend_cli(
        "serve", "--port", str(busy_port), "--data-dir", str(tmp_path / "data"),
        env={"FASTSEND_SERVE_API_KY": "k"},
    )  # fmt: skip
    assert "FASTSEND_SERVE_API_KY is not a fastsend setting" in done.stderr
    assert "did you mean" in done.stderr and "FASTSEND_SERVE_API_KEY" in done.stderr
