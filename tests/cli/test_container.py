"""The container recipe (Dockerfile, compose.yaml) holds without docker: its commands are real fastsend
command lines, its volume is the sender's spool, its health check asks /healthz, its grace period covers
the exit flush, and its two commands, run here on loopback, serve, send, and end on SIGTERM as promised."""

from __future__ import annotations

import json
import os
import re
import select
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from support.service_process import REPO_ROOT, python_env, wait_until

from fastsend import EventWriter
from fastsend.cli.commands import _parser
from fastsend.config import Settings

yaml = pytest.importorskip("yaml", reason="reading compose.yaml needs PyYAML (supervision, of the test extra, has it)")

DOCKERFILE = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
COMPOSE: dict[str, Any] = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text(encoding="utf-8"))
SERVICE, SENDER = COMPOSE["services"]["service"], COMPOSE["services"]["sender"]
TIMEOUT = 60.0
SIGTERM_EXIT = 143  # fastsend's SIGTERM handler exits as sys.exit(128 + SIGTERM) would


def dockerfile_instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order, continuation lines joined, comments left out."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    lines = [line.strip() for line in joined.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines if line and not line.startswith("#")
    ]


def instruction(name: str) -> str:
    (found,) = [arguments for kind, arguments in dockerfile_instructions() if kind == name]
    return found


def exec_form(arguments: str) -> list[str]:
    """A Dockerfile exec-form argument list (JSON); shell form fails here, as it would hide SIGTERM."""
    parsed = json.loads(arguments)
    assert isinstance(parsed, list) and all(isinstance(word, str) for word in parsed), arguments
    return parsed


def seconds(duration: str) -> float:
    """A compose duration such as ``15s`` or ``1m30s``."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(number + unit for number, unit in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def with_option(command: list[str], name: str, value: str) -> list[str]:
    changed = list(command)
    changed[changed.index(name) + 1] = value
    return changed


def healthcheck_hits_healthz(test: list[str], url: str) -> bool:
    """Run a health check command (exec form, ``python -c …``) against ``url`` instead of the recipe's."""
    assert test[0] == "python" and test[1] == "-c", test
    code = test[2].replace("http://127.0.0.1:8001", url)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    return done.returncode == 0


# ---------------------------------------------------------------- the recipe read


def test_every_command_is_exec_form_and_a_valid_fastsend_command_line():
    commands = [exec_form(instruction("CMD")), SERVICE["command"], SENDER["command"]]
    for command in commands:
        assert command[0] == "fastsend", command
        _parser().parse_args(command[1:])  # an unknown option or a bad value exits 2 here
        done = subprocess.run(
            [sys.executable, "-m", "fastsend", command[1], "--help"],
            capture_output=True,
            text=True,
            env=python_env(),
            timeout=TIMEOUT,
        )
        assert done.returncode == 0, done.stderr
    assert exec_form(instruction("CMD")) == SERVICE["command"]


def test_the_image_is_built_from_files_that_exist_and_stops_with_sigterm():
    for kind, arguments in dockerfile_instructions():
        if kind == "COPY":
            *sources, _ = shlex.split(arguments)
            assert all((REPO_ROOT / source).exists() for source in sources), arguments
    assert instruction("STOPSIGNAL") == "SIGTERM"
    assert instruction("USER") != "root"


def test_the_data_and_spool_directories_are_volumes():
    volumes = exec_form(instruction("VOLUME"))
    assert option(SERVICE["command"], "--data-dir") in volumes
    assert SENDER["environment"]["FASTSEND_SPOOL_DIR"] in volumes
    mounts = {mount.split(":")[1]: mount.split(":")[0] for mount in SENDER["volumes"]}
    assert mounts[SENDER["environment"]["FASTSEND_SPOOL_DIR"]] in COMPOSE["volumes"]  # a named volume
    mounts = {mount.split(":")[1]: mount.split(":")[0] for mount in SERVICE["volumes"]}
    assert mounts[option(SERVICE["command"], "--data-dir")] in COMPOSE["volumes"]


def test_the_health_checks_ask_healthz_on_the_port_served():
    port = option(SERVICE["command"], "--port")
    dockerfile_check = instruction("HEALTHCHECK").split(" CMD ", 1)[1]
    for test in (exec_form(dockerfile_check), SERVICE["healthcheck"]["test"][1:]):
        assert f"http://127.0.0.1:{port}/healthz" in test[-1], test
    assert SENDER["healthcheck"] == {"disable": True}  # the sender serves nothing to check
    assert SENDER["depends_on"]["service"]["condition"] == "service_healthy"


def test_the_sender_points_at_the_service_and_its_settings_are_valid():
    assert option(SENDER["command"], "--url") == f"http://service:{option(SERVICE['command'], '--port')}"
    settings = Settings.resolve(environ=SENDER["environment"])
    assert settings.spool_dir == SENDER["environment"]["FASTSEND_SPOOL_DIR"]
    assert settings.overflow == "spill"  # with a spool nothing is dropped


def test_the_grace_periods_cover_the_exit_flush_and_signals_reach_fastsend():
    flush = Settings.resolve(environ=SENDER["environment"]).exit_flush_timeout
    assert seconds(SENDER["stop_grace_period"]) >= flush + 5  # the flush, then the rest written to the spool
    assert seconds(SERVICE["stop_grace_period"]) >= 5
    assert SERVICE["init"] is True and SENDER["init"] is True  # fastsend is not PID 1, which ignores SIGTERM
    published = [port.split(":")[0] for port in SERVICE["ports"]]
    assert published == ["127.0.0.1"]  # the service has no key here: this machine only


# ---------------------------------------------------------------- the recipe run, on loopback


def start(command: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fastsend", *command[1:]],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**python_env(), **env},
    )


def stop(process: subprocess.Popen[str], grace: float) -> int:
    """SIGTERM, as ``docker stop`` sends it, then SIGKILL past ``grace`` (failing the test); the exit code."""
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()  # what docker does past the grace period
        process.wait(TIMEOUT)
        pytest.fail(f"{process.args} outlived its stop_grace_period of {grace} s")
    return code


def stored(url: str) -> int:
    return int(requests.get(f"{url}/v2/events?limit=1", timeout=5).json()["total"])


def test_the_two_commands_serve_send_and_end_on_sigterm_with_nothing_lost(tmp_path: Path):
    serve = with_option(with_option(SERVICE["command"], "--host", "127.0.0.1"), "--port", "0")
    serve = with_option(serve, "--data-dir", str(tmp_path / "data"))
    service = start(serve, {})
    sender = None
    try:
        assert service.stdout is not None
        readable, _, _ = select.select([service.stdout], [], [], TIMEOUT)
        match = re.search(r"(http://127\.0\.0\.1:\d+)", service.stdout.readline() if readable else "")
        assert match, "the service printed no URL"
        url = match.group(1)
        assert wait_until(lambda: healthcheck_hits_healthz(SERVICE["healthcheck"]["test"][1:], url), TIMEOUT)

        spool = tmp_path / "spool"
        environment = {**SENDER["environment"], "FASTSEND_SPOOL_DIR": str(spool)}
        sender = start(with_option(SENDER["command"], "--url", url), environment)
        assert wait_until(lambda: stored(url) >= 3, TIMEOUT, interval=0.2), "the sender stored nothing"

        code = stop(sender, seconds(SENDER["stop_grace_period"]))
        _, errors = sender.communicate(timeout=TIMEOUT)
        assert code == SIGTERM_EXIT, errors
        assert "Traceback" not in errors, errors
        # The next start on the volume takes the spool over (its lock was released) and sends what it holds.
        with EventWriter(url, spool_dir=str(spool)) as restarted:
            assert restarted.drain(timeout=TIMEOUT) == 0
    finally:
        if sender is not None and sender.poll() is None:
            sender.kill()
            sender.wait(TIMEOUT)
        code = stop(service, seconds(SERVICE["stop_grace_period"]))
    assert code == 0
    assert os.listdir(tmp_path / "data")
