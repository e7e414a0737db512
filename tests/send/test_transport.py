"""The sender against hostile answers, a forward proxy, a self-signed HTTPS service and odd base URLs.

Every server is a loopback server started and stopped by its test (``tests/support/hostile_server.py``
for raw bytes, ``tests/support/scripted_server.py`` for well-formed answers). Results are awaited with
``future.result(timeout=...)`` bounds derived from the writer's own settings; nothing here
asserts how fast anything is.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import select
import socket
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trustme
from support.books import adds_up, close_within
from support.hostile_server import ENDLESS_SECONDS, ForwardProxy, Handler, RawRequest, RawServer, answer, trickle
from support.scripted_server import Reply, ScriptedServer
from support.service_process import python_env

from fastsend import Event, EventWriter, ValidationError

pytestmark = pytest.mark.timeout(60)

FRAME = np.full((16, 16, 3), (40, 90, 200), np.uint8)
REQUEST_TIMEOUT = 1.0
# Settings for one event's life: two attempts of at most a second each, tiny backoffs.
QUICK: dict[str, Any] = {
    "retries": 1,
    "request_timeout": REQUEST_TIMEOUT,
    "connect_timeout": 1.0,
    "backoff_base": 0.01,
    "backoff_max": 0.02,
    "deadline": 5.0,
}
# What a Result may take past its attempts: backoffs, encoding, thread hand-offs on a busy machine.
SLACK = 5.0
CREATED = b'HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"id":"e-1"}'
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def event() -> Event:
    return Event.quality_check(result="pass", external_id="hostile")


@pytest.fixture(autouse=True)
def _no_proxy_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer honours the proxy variables: none from the shell may reach a test."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def writer_defaults() -> dict[str, Any]:
    return QUICK


# ---------------------------------------------------------------- hostile answers

HEAD = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
CHUNKED = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"


def hostile(name: str) -> Handler:
    """The raw server's side of each hostile answer (a request is read first, every time)."""
    answers: dict[str, Handler] = {
        "negative chunk size": answer(CHUNKED + b'-6\r\n{"id":\r\n0\r\n\r\n'),
        "chunk size 0x9": answer(CHUNKED + b'0x9\r\n{"id":"a"}\r\n0\r\n\r\n'),
        "chunk size zz": answer(CHUNKED + b'zz\r\n{"id":"a"}\r\n0\r\n\r\n'),
        "two content lengths": answer(HEAD + b'Content-Length: 10\r\nContent-Length: 5\r\n\r\n{"id":"a"}'),
        "content length 1_1": answer(HEAD + b'Content-Length: 1_1\r\n\r\n{"id":"abc"}'),
        # Not chunked: the body runs to the close, which never comes.
        "transfer encoding notchunked": answer(HEAD + b'Transfer-Encoding: notchunked\r\n\r\n{"id":"a"}'),
        "endless header line": answer(HEAD + b"X-Endless: ", then=trickle(b"a" * 4096)),
        "endless chunk size line": answer(CHUNKED, then=trickle(b"1" * 4096)),
        "body shorter than content length": answer(HEAD + b'Content-Length: 100\r\n\r\n{"id":'),
        "endless chunked body": answer(CHUNKED, then=trickle(b"4\r\nabcd\r\n")),
    }
    return answers[name]


# What each answer's Result must say: the framing error itself, or that the attempt timed out.
HOSTILE_MESSAGES = {
    "negative chunk size": "chunk size",
    "chunk size 0x9": "chunk size",
    "chunk size zz": "chunk size",
    "two content lengths": "content-length",
    "content length 1_1": "content-length",
    "transfer encoding notchunked": "timed out",
    "endless header line": "8190 bytes",
    "endless chunk size line": "timed out|chunk size",
    "body shorter than content length": "timed out",
    "endless chunked body": "timed out",
}
HOSTILE = list(HOSTILE_MESSAGES)


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_answer_is_an_error_within_the_attempts_bound(name: str, make_writer: Any) -> None:
    with RawServer(hostile(name)) as server:
        writer = make_writer(server.base_url)
        result = writer.submit(event(), FRAME).result(timeout=REQUEST_TIMEOUT * 2 + SLACK)
        assert result.error_status is True and result.event_id == ""
        assert any(word in result.message.lower() for word in HOSTILE_MESSAGES[name].split("|")), result.message
        stats = writer.stats()
        assert (stats["submitted"], stats["sent"], stats["failed"], stats["pending"]) == (1, 0, 1, 0)
        assert adds_up(stats)
        assert sum(stats["failed_by_cause"].values()) == 1
        assert set(stats["failed_by_cause"]) <= {"connection", "timeout", "bad_response"}
        assert 1 <= len(server.requests) <= 2  # retries=1: never more than two attempts
        assert close_within(writer, 2 + SLACK, timeout=2) == 0


def test_malformed_answer_is_not_reported_as_an_http_status(make_writer: Any) -> None:
    with RawServer(hostile("two content lengths")) as server:
        result = make_writer(server.base_url, retries=0).submit(event(), FRAME).result(timeout=REQUEST_TIMEOUT + SLACK)
    assert result.error_status is True
    assert "400" not in result.message and "malformed answer" in result.message, result.message


def test_a_malformed_answers_message_is_one_bounded_line(make_writer: Any) -> None:
    # aiohttp's parser refuses the line at once when it comes with the headers; when it comes in a later
    # packet the attempt ends at its timeout instead. Either way the message is one bounded line.
    with RawServer(hostile("endless chunk size line")) as server:
        result = make_writer(server.base_url, retries=0).submit(event(), FRAME).result(timeout=REQUEST_TIMEOUT + SLACK)
    assert result.error_status is True and re.search("chunk size|timed out", result.message.lower()), result.message
    assert "\n" not in result.message and len(result.message) <= 600, (len(result.message), result.message[:200])


# Answers that only a timeout ends: the event is still on its way when close() is called.
NEVER_ENDING = ["transfer encoding notchunked", "endless chunked body", "body shorter than content length"]


@pytest.mark.parametrize("name", NEVER_ENDING)
def test_close_with_a_timeout_returns_while_a_hostile_answer_is_still_arriving(name: str) -> None:
    with RawServer(hostile(name)) as server:
        writer = EventWriter(server.base_url, request_timeout=30, deadline=60, retries=3)
        future = writer.submit(event(), FRAME)
        assert server.wait_for(lambda: server.connections >= 1)
        unsent = close_within(writer, 0.2 + SLACK, timeout=0.2)  # not waiting for the answer to end
        result = future.result(timeout=SLACK)
    assert result.error_status is True
    stats = writer.stats()
    assert adds_up(stats) and stats["pending"] == 0
    assert unsent == stats["dropped_by_reason"].get("closed", 0) == 1


CHILD = """
import logging
import sys
import numpy as np
from fastsend import Event, EventWriter

logging.basicConfig(level=logging.WARNING)
writer = EventWriter(sys.argv[1], request_timeout=20, deadline=60, retries=3, exit_flush_timeout={flush})
writer.submit(Event.quality_check(result="pass"), np.zeros((8, 8, 3), np.uint8))
print("submitted", flush=True)
"""


@pytest.mark.parametrize("name", NEVER_ENDING)
def test_a_process_with_an_event_in_flight_to_a_hostile_server_exits_within_its_flush_timeout(name: str) -> None:
    flush = 1.0
    with RawServer(hostile(name)) as server:
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(CHILD.format(flush=flush)), server.base_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=python_env(),
        )
        try:
            assert child.stdout is not None
            readable, _, _ = select.select([child.stdout], [], [], 30)
            assert readable and child.stdout.readline().strip() == "submitted"
            _, stderr = child.communicate(timeout=flush + SLACK)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
        assert child.returncode == 0, stderr
        assert server.connections >= 1  # the event was on its way when the process ended
        assert "closed with 1 event(s) not sent" in stderr


@pytest.mark.parametrize("framing", [b"Content-Length: 1000000000000\r\n", b"Transfer-Encoding: chunked\r\n"])
def test_an_endless_201_body_is_read_only_up_to_its_bound(framing: bytes, make_writer: Any) -> None:
    piece = b"x" * 65536
    if b"chunked" in framing:
        piece = b"%x\r\n%s\r\n" % (len(piece), piece)
    with RawServer(answer(HEAD + framing + b"\r\n", then=trickle(piece, interval=0.001))) as server:
        writer = make_writer(server.base_url, request_timeout=20, deadline=30, retries=3)
        result = writer.submit(event(), FRAME).result(timeout=20 + SLACK)
        assert result.error_status is True
        assert "201 without a usable id" in result.message  # not a timeout: reading stopped at the bound
        assert writer.stats()["failed_by_cause"] == {"bad_response": 1}
        assert len(server.requests) == 1


LARGE_FRAME = np.random.default_rng(0).integers(0, 256, size=(1500, 1500, 3), dtype=np.uint8)  # megabytes of JPEG
TOO_LARGE = b'{"detail":"request body too large"}'


async def refuse_before_the_body(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer 413 on the request head alone, then reset the connection with the body unread."""
    server.record(RawRequest((await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")[0], {}, b""))
    writer.write(
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(TOO_LARGE), TOO_LARGE)
    )
    await writer.drain()
    await asyncio.sleep(0.05)


def test_an_answer_sent_before_the_body_was_read_is_reported_as_it_was(make_writer: Any) -> None:
    with RawServer(refuse_before_the_body) as server:
        writer = make_writer(server.base_url, retries=2, request_timeout=5, jpeg_quality=100)
        result = writer.submit(event(), LARGE_FRAME).result(timeout=5 * 3 + SLACK)
        assert result.error_status is True
        assert "HTTP 413" in result.message and "request body too large" in result.message, result.message
        assert writer.stats()["failed_by_cause"] == {"http_413": 1}
        assert server.connections == 1  # a 413 is not retried


async def never_read(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(ENDLESS_SECONDS)  # the body stalls once the socket buffers are full; no answer ever comes


def test_a_server_that_never_reads_the_request_times_the_attempt_out(make_writer: Any) -> None:
    with RawServer(never_read) as server:
        writer = make_writer(server.base_url, retries=0, jpeg_quality=100)
        result = writer.submit(event(), LARGE_FRAME).result(timeout=REQUEST_TIMEOUT + SLACK)
        assert result.error_status is True and "timed out" in result.message, result.message
        assert writer.stats()["failed_by_cause"] == {"timeout": 1}
        assert server.connections == 1
        assert close_within(writer, 1 + SLACK, timeout=1) == 0


# ---------------------------------------------------------------- well-formed answers the writer must not trust


@pytest.mark.parametrize("body", [{"id": None}, {"id": ""}, {"id": True}, {}, "not json at all"])
def test_201_without_a_usable_id_is_a_bad_response_not_retried(
    body: Any, server: ScriptedServer, make_writer: Any
) -> None:
    server.script = Reply(201, body)
    writer = make_writer(server.base_url, retries=3)
    result = writer.submit(event(), FRAME).result(timeout=REQUEST_TIMEOUT * 4 + SLACK)
    assert result.error_status is True
    assert "201 without a usable id" in result.message
    assert writer.flush(timeout=SLACK) == 0
    stats = writer.stats()
    assert stats["failed_by_cause"] == {"bad_response": 1} and stats["retried"] == 0
    assert len(server.requests) == 1


def test_201_with_an_integer_id_gives_its_text(server: ScriptedServer, make_writer: Any) -> None:
    server.script = Reply(201, {"id": 7})
    result = make_writer(server.base_url).send(event(), FRAME)
    assert (result.error_status, result.event_id) == (False, "7")


def test_401_names_the_api_key_variable(server: ScriptedServer, make_writer: Any) -> None:
    server.script = Reply(401, {"detail": "missing key"})
    result = make_writer(server.base_url, retries=3).send(event(), FRAME)
    assert result.error_status is True
    assert "EVENT_INGESTION_API_KEY" in result.message and "missing key" in result.message
    assert len(server.requests) == 1


def test_404_shows_the_url_posted_to(server: ScriptedServer, make_writer: Any) -> None:
    server.script = Reply(404, {"detail": "Not Found"})
    result = make_writer(server.base_url + "/api").send(event(), FRAME)
    assert result.error_status is True
    assert f"{server.base_url}/api/v2/events" in result.message


def test_base_url_ending_in_the_events_path_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fastsend"):
        writer = EventWriter("http://127.0.0.1:9/v2/events")
    writer.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "fastsend" and r.levelno == logging.WARNING]
    assert any("already ends in /v2/events" in m and "/v2/events/v2/events" in m for m in warnings), warnings


# ---------------------------------------------------------------- a forward proxy

PROXIED_HOST = "events.internal.test"


@pytest.fixture
def proxied(server: ScriptedServer) -> Iterator[ForwardProxy]:
    """A forward proxy that knows ``events.internal.test`` as the scripted server."""
    with ForwardProxy({PROXIED_HOST: ("127.0.0.1", server.port)}) as proxy:
        yield proxy


def test_http_proxy_from_the_environment_carries_the_events(
    server: ScriptedServer, proxied: ForwardProxy, make_writer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxied.base_url)
    writer = make_writer(f"http://{PROXIED_HOST}:{server.port}")
    results = [writer.submit(event(), FRAME) for _ in range(3)]
    assert sorted(f.result(timeout=REQUEST_TIMEOUT * 2 + SLACK).event_id for f in results) == ["1", "2", "3"]
    assert [r.target for r in proxied.requests] == [f"http://{PROXIED_HOST}:{server.port}/v2/events"] * 3
    assert len(server.requests) == 3
    assert all(r.path == "/v2/events" and r.json is not None for r in server.requests)


def test_credentials_in_http_proxy_go_to_the_proxy(
    server: ScriptedServer, proxied: ForwardProxy, make_writer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://relay:s3cret@127.0.0.1:{proxied.port}")
    result = make_writer(f"http://{PROXIED_HOST}:{server.port}").send(event(), FRAME)
    assert result.error_status is False, result.message
    assert proxied.requests[0].headers["proxy-authorization"] == "Basic " + base64.b64encode(b"relay:s3cret").decode()


def test_no_proxy_bypasses_the_proxy(
    server: ScriptedServer, proxied: ForwardProxy, make_writer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxied.base_url)
    monkeypatch.setenv("NO_PROXY", PROXIED_HOST)
    writer = make_writer(f"http://{PROXIED_HOST}:{server.port}", retries=0)
    result = writer.submit(event(), FRAME).result(timeout=REQUEST_TIMEOUT + SLACK)
    assert result.error_status is True
    assert "connection error" in result.message and PROXIED_HOST in result.message
    assert writer.stats()["failed_by_cause"] == {"connection": 1}
    assert proxied.connections == 0 and server.requests == []


PROXY_REFUSAL = b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n"


def test_a_proxy_refusing_a_tunnel_says_so(make_writer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with RawServer(answer(PROXY_REFUSAL)) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.base_url)
        writer = make_writer(f"https://{PROXIED_HOST}:8443", retries=0)
        result = writer.submit(event(), FRAME).result(timeout=REQUEST_TIMEOUT + SLACK)
        assert result.error_status is True
        assert "proxy refused" in result.message and "407" in result.message, result.message
        assert [r.line for r in proxy.requests] == [f"CONNECT {PROXIED_HOST}:8443 HTTP/1.1"]


def test_a_proxy_refusing_a_plain_http_request_says_it_was_the_proxy(
    make_writer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with RawServer(answer(PROXY_REFUSAL)) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.base_url)
        writer = make_writer(f"http://{PROXIED_HOST}:8001", retries=0)
        result = writer.submit(event(), FRAME).result(timeout=REQUEST_TIMEOUT + SLACK)
        assert result.error_status is True and "407" in result.message
        assert "proxy" in result.message.lower(), result.message
        assert len(proxy.requests) == 1


# ---------------------------------------------------------------- a self-signed HTTPS service


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https_server(authority: trustme.CA) -> Iterator[RawServer]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1", PROXIED_HOST).configure_cert(context)
    with RawServer(answer(CREATED, CREATED, CREATED, CREATED), tls=context) as server:
        yield server


@pytest.fixture
def ca_file(authority: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return str(path)


def test_untrusted_certificate_fails_once_and_names_ca_file(https_server: RawServer, make_writer: Any) -> None:
    writer = make_writer(https_server.base_url, retries=3)
    result = writer.submit(event(), FRAME).result(timeout=REQUEST_TIMEOUT * 4 + SLACK)
    assert result.error_status is True
    assert "ca_file" in result.message and "FASTSEND_CA_FILE" in result.message
    stats = writer.stats()
    assert stats["failed_by_cause"] == {"tls": 1} and stats["retried"] == 0
    assert https_server.wait_for(lambda: https_server.connections >= 1)
    assert (https_server.connections, https_server.handshakes, https_server.requests) == (1, 0, [])


def test_ca_file_makes_the_self_signed_service_trusted(https_server: RawServer, ca_file: str, make_writer: Any) -> None:
    result = make_writer(https_server.base_url, ca_file=ca_file).send(event(), FRAME)
    assert (result.error_status, result.event_id) == (False, "e-1")
    assert https_server.handshakes == 1 and len(https_server.requests) == 1


def test_tls_verify_off_accepts_the_self_signed_service(https_server: RawServer, make_writer: Any) -> None:
    result = make_writer(https_server.base_url, tls_verify=False).send(event(), FRAME)
    assert (result.error_status, result.event_id) == (False, "e-1")
    assert len(https_server.requests) == 1


def test_https_through_a_proxy_tunnel_verifies_the_service_with_ca_file(
    https_server: RawServer, ca_file: str, make_writer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ForwardProxy({PROXIED_HOST: ("127.0.0.1", https_server.port)}) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.base_url)
        writer = make_writer(f"https://{PROXIED_HOST}:{https_server.port}", ca_file=ca_file)
        result = writer.submit(event(), FRAME).result(timeout=REQUEST_TIMEOUT * 2 + SLACK)
        assert (result.error_status, result.event_id) == (False, "e-1"), result.message
        assert [r.line for r in proxy.requests] == [f"CONNECT {PROXIED_HOST}:{https_server.port} HTTP/1.1"]
        assert (https_server.handshakes, len(https_server.requests)) == (1, 1)
        assert https_server.requests[0].target == "/v2/events"


# ---------------------------------------------------------------- base URLs


@pytest.mark.parametrize(
    ("path", "on_the_wire"),
    [
        ("/prefix", "/prefix/v2/events"),
        ("/prefix/", "/prefix/v2/events"),
        ("/my path", "/my%20path/v2/events"),
        ("/café", "/caf%C3%A9/v2/events"),
    ],
)
def test_base_url_path_is_percent_encoded_on_the_wire(path: str, on_the_wire: str, make_writer: Any) -> None:
    with RawServer(answer(CREATED)) as server:
        result = make_writer(server.base_url + path).send(event(), FRAME)
        assert result.error_status is False, result.message
        assert [r.target for r in server.requests] == [on_the_wire]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_literal_base_url(make_writer: Any) -> None:
    with RawServer(answer(CREATED), host="::1") as server:
        assert server.base_url.startswith("http://[::1]:")
        result = make_writer(server.base_url).send(event(), FRAME)
        assert (result.error_status, result.event_id) == (False, "e-1")
        assert server.requests[0].headers["host"] == f"[::1]:{server.port}"


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://127.0.0.1:8001/?tenant=7", "query string"),
        ("http://127.0.0.1:8001/#top", "fragment"),
        ("http://user:secret@127.0.0.1:8001", "credentials"),
    ],
)
def test_base_url_with_query_fragment_or_credentials_is_refused(url: str, rule: str) -> None:
    with pytest.raises(ValidationError) as refused:
        EventWriter(url)
    assert refused.value.field == "url" and refused.value.value == url
    assert rule in refused.value.rule
