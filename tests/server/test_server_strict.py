"""The reference service read strictly: the Host header, numbers in list summaries, and API keys.

Each service listens on 127.0.0.1 and is stopped by the test that started it.
"""

from __future__ import annotations

import argparse
import ast
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from support.browser import post_event
from support.service_process import REPO_ROOT, TIMEOUT, python_env

from fastsend import ValidationError
from fastsend.server import ReferenceService
from fastsend.server.hosts import HostPolicy
from fastsend.server.index import SUMMARY_TEXT_CHARS
from fastsend.server.options import add_service_arguments, config_from_arguments

# --- the Host header --------------------------------------------------------------------------

MALFORMED_HOSTS = [
    "[::1]evil.com",
    "[::1]:8001evil.com",
    "[::1",
    "::1",
    "[127.0.0.1]",
    "127.0.0.1:80:80",
    "localhost:abc",
    "localhost:123456",
    "localhost@evil.com",
    "evil.com#.localhost",
    "local host",
    "localhost/evil",
]


@pytest.mark.parametrize("host", MALFORMED_HOSTS)
def test_a_malformed_host_is_refused_by_the_loopback_check(host: str) -> None:
    assert not HostPolicy("127.0.0.1").admits(host)
    assert not HostPolicy("0.0.0.0", ["events.lan"]).admits(host)


@pytest.mark.parametrize("host", ["[::1]evil.com", "[::1", "127.0.0.1:80:80", "localhost@evil.com"])
def test_a_malformed_host_gets_421_saying_so(make_service: Any, host: str) -> None:
    service = make_service()
    answer = requests.get(f"{service.url}/v2/events", headers={"Host": host}, timeout=TIMEOUT)
    assert answer.status_code == 421
    assert answer.json()["detail"] == f"Host {host!r} is not a host name: the header must be host[:port]"


@pytest.mark.parametrize("host", ["[::1]:8001", "[0:0:0:0:0:0:0:1]", "127.0.0.1:8001", "localhost.:1", "LocalHost"])
def test_well_formed_loopback_hosts_still_pass(host: str) -> None:
    assert HostPolicy("127.0.0.1").admits(host)


def test_an_allowed_host_must_be_a_host_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"allowed_hosts must be host names .* not '\[::1\]evil.com'"):
        ReferenceService(tmp_path, allowed_hosts=("[::1]evil.com",))


# --- numbers in list summaries ---------------------------------------------------------------


@pytest.mark.parametrize("location", ["dock", "d" * (SUMMARY_TEXT_CHARS + 50)], ids=["short", "clipped"])
def test_list_summaries_keep_integers_exact(make_service: Any, location: str) -> None:
    service = make_service()
    data = {"itemCount": 2**64 - 1, "location": location, "itemType": "box"}
    post_event(service.url, schema="inventory_count", event_data=data)
    for path in ("/v2/events", "/viewer/api/events"):
        answer = requests.get(f"{service.url}{path}", timeout=TIMEOUT)
        assert b'"itemCount":18446744073709551615' in answer.content, answer.text
        summary = answer.json()["events"][0]["event_data"]
        assert summary["itemCount"] == 2**64 - 1
        assert summary["location"] == (location if len(location) <= SUMMARY_TEXT_CHARS else "d" * 200 + "…")


# --- API keys -------------------------------------------------------------------------------


def _serve(tmp_path: Path, *options: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fastsend", "serve", "--port", "0", "--data-dir", str(tmp_path / "data"), *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env={**python_env(), **(env or {})},
    )


@pytest.mark.parametrize(
    ("options", "env", "named"),
    [
        (("--api-key", ""), {}, "--api-key"),
        (("--api-key", "  "), {}, "--api-key"),
        ((), {"FASTSEND_SERVE_API_KEY": ""}, "FASTSEND_SERVE_API_KEY"),
    ],
    ids=["empty", "blank", "empty-variable"],
)
def test_an_empty_key_is_refused(tmp_path: Path, options: tuple[str, ...], env: dict[str, str], named: str) -> None:
    process = _serve(tmp_path, *options, env=env)
    try:
        _, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(TIMEOUT)
    assert process.returncode == 2
    assert stderr.startswith(f"error: {named}: ") and "must not be empty" in stderr, stderr


@pytest.mark.parametrize(("options", "says"), [((), "no API key"), (("--api-key", "k3y"), "API key required")])
def test_the_serve_banner_says_whether_a_key_is_required(tmp_path: Path, options: tuple[str, ...], says: str) -> None:
    process = _serve(tmp_path, *options)
    try:
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], TIMEOUT)
        banner = process.stdout.readline() if readable else ""
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(TIMEOUT)
    assert "fastsend reference service on http://127.0.0.1:" in banner
    assert says in banner, banner


def test_a_key_in_the_options_is_kept() -> None:
    parser = argparse.ArgumentParser()
    add_service_arguments(parser)
    assert config_from_arguments(parser.parse_args(["--api-key", "k3y"]), {}).api_key == "k3y"
    with pytest.raises(ValidationError, match="must not be empty"):
        config_from_arguments(parser.parse_args(["--api-key", ""]), {})


# --- the service's code --------------------------------------------------------------------

MAX_FUNCTION_LINES = 60


def test_no_function_of_the_service_is_over_sixty_lines() -> None:
    server = REPO_ROOT / "fastsend" / "server"
    long = [
        f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in sorted(server.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []
