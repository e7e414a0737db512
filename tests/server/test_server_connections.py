"""Stalled and surplus connections: header, body and idle timeouts, the connection cap, and
descriptor exhaustion, each while a real client is still served.

Clients are raw sockets on 127.0.0.1; timeouts are set small (they are options)
and every wait is bounded by a generous multiple of them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simplejpeg
from support.service_process import TIMEOUT, port_of, python_env

from fastsend.events import ValidationError
from fastsend.server import Faults
from fastsend.server.options import add_service_arguments, config_from_arguments

JPEG = simplejpeg.encode_jpeg(np.full((8, 8, 3), 90, np.uint8), quality=95, colorspace="BGR")
BODY = json.dumps(
    {
        "inference_timestamp": "2026-11-26T04:44:12.123456+00:00",
        "event_schema": "custom",
        "event_data": {"value": "v"},
        "images": [{"base64Image": base64.b64encode(JPEG).decode()}],
        "displayImagePosition": 0,
    }
).encode()


def post_head(length: int = len(BODY)) -> bytes:
    return (
        b"POST /v2/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % length
    )


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class Client:
    """One raw connection: send bytes, read one answer, or read until the server closes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int) -> Client:
        return cls(*await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT))

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self) -> tuple[int, dict[str, str], bytes]:
        async def read() -> tuple[int, dict[str, str], bytes]:
            status_line = await self.reader.readline()
            if not status_line:
                raise ConnectionError("closed without an answer")
            headers = {}
            while (line := await self.reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
            return int(status_line.split()[1]), headers, body

        return await asyncio.wait_for(read(), TIMEOUT)

    async def closed_by_server(self) -> bytes:
        """Everything the server sends until it closes the connection (bounded in time)."""
        return await asyncio.wait_for(self.reader.read(), TIMEOUT)

    def close(self) -> None:
        self.writer.close()


def test_stalled_connections_are_closed_while_a_real_client_is_served(make_service: Any) -> None:
    service = make_service(header_timeout=1.0, body_timeout=1.0, idle_timeout=1.5)
    port = port_of(service)

    async def scenario() -> dict[str, Any]:
        silent = await Client.connect(port)  # never sends a byte
        half_headers = await Client.connect(port)
        await half_headers.send(b"POST /v2/events HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        half_body = await Client.connect(port)
        await half_body.send(post_head(1000) + b'{"inference')
        idle = await Client.connect(port)
        await idle.send(HEALTHZ)
        idle_first = await idle.answer()
        second_late = await Client.connect(port)  # one request answered, the next one's headers stall
        await second_late.send(HEALTHZ)
        second_first = await second_late.answer()
        await second_late.send(b"GET /healthz HTTP/1.1\r\n")

        # A real client is served while all of those hang.
        real = await Client.connect(port)
        await real.send(post_head() + BODY)
        real_post = await real.answer()
        await real.send(HEALTHZ)
        real_get = await real.answer()
        real.close()

        stalled = [silent, half_headers, half_body, idle, second_late]
        endings = await asyncio.gather(*(client.closed_by_server() for client in stalled))
        for client in stalled:
            client.close()
        return {
            "real": (real_post[0], real_get[0]),
            "first answers": (idle_first[0], second_first[0]),
            "endings": dict(zip(["silent", "half_headers", "half_body", "idle", "second_late"], endings, strict=True)),
        }

    result = asyncio.run(scenario())
    assert result["real"] == (201, 200)
    assert result["first answers"] == (200, 200)
    endings = result["endings"]
    for name in ("silent", "half_headers", "second_late"):
        assert endings[name].startswith(b"HTTP/1.1 408 "), (name, endings[name])
        assert b'"detail":"request headers not received within 1 s"' in endings[name]
    assert endings["half_body"].startswith(b"HTTP/1.1 408 ")
    assert b"request body not received within 1 s of its headers" in endings["half_body"]
    assert endings["idle"] == b""  # an idle keep-alive connection is simply closed
    assert service.stored_count() == 1


def test_a_slow_request_is_not_cut_by_the_header_timeout(make_service: Any) -> None:
    # Headers arrive in pieces within the timeout, and the write takes longer than it.
    service = make_service(header_timeout=2.0, faults=Faults(latency=3.0))
    port = port_of(service)

    async def scenario() -> tuple[int, dict[str, str], bytes]:
        client = await Client.connect(port)
        head = post_head()
        await client.send(head[:20])
        await asyncio.sleep(0.2)
        await client.send(head[20:] + BODY)
        try:
            return await client.answer()
        finally:
            client.close()

    status, _, body = asyncio.run(scenario())
    assert status == 201, body
    assert service.stored_count() == 1


def test_connections_past_the_cap_get_503_and_are_closed(make_service: Any) -> None:
    service = make_service(max_connections=5, header_timeout=30.0)
    port = port_of(service)

    async def scenario() -> tuple[bytes, int, int]:
        holders = [await Client.connect(port) for _ in range(5)]
        for holder in holders:  # a finished request proves the connection was admitted
            await holder.send(HEALTHZ)
            assert (await holder.answer())[0] == 200
        surplus = await Client.connect(port)
        refused = await surplus.closed_by_server()
        surplus.close()
        for holder in holders[:2]:
            holder.close()
        # Once two have left, a new client is admitted (bounded retries: the close takes a moment to arrive).
        status = 0
        for _ in range(100):
            client = await Client.connect(port)
            await client.send(HEALTHZ)
            try:
                status = (await client.answer())[0]
            except ConnectionError:
                status = 0
            finally:
                client.close()
            if status == 200:
                break
            await asyncio.sleep(0.05)
        for holder in holders[2:]:
            holder.close()
        return refused, status, len(holders)

    refused, status, _ = asyncio.run(scenario())
    assert refused.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Retry-After: 1\r\n" in refused
    assert refused.endswith(b'{"detail":"too many open connections; retry shortly"}')
    assert status == 200


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_NOFILE")
def test_descriptor_exhaustion_is_logged_once_and_clears(tmp_path: Path) -> None:
    import resource

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    command = [sys.executable, "-m", "fastsend.server", "--port", "0", "--data-dir", str(tmp_path)]
    process = subprocess.Popen(
        [*command, "--header-timeout", "1", "--log-level", "WARNING"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=python_env(),
        preexec_fn=few_descriptors,
    )
    stalled: list[socket.socket] = []
    try:
        assert process.stdout is not None and process.stderr is not None
        readable, _, _ = select.select([process.stdout], [], [], TIMEOUT)
        line = process.stdout.readline() if readable else ""
        assert line.startswith("listening on "), line
        url = line.removeprefix("listening on ").strip()
        port = int(url.rsplit(":", 1)[1])
        # More silent connections than the service has descriptors: accept() fails with EMFILE.
        stalled = [socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) for _ in range(120)]
        status = None
        deadline = time.monotonic() + TIMEOUT
        while status is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=5) as reply:
                    status = reply.status
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.2)
        assert status == 200  # the header timeout frees descriptors; the real client gets in
    finally:
        for connection in stalled:
            connection.close()
        process.terminate()
        _, errors = process.communicate(timeout=TIMEOUT)
    accept_reports = [line for line in errors.splitlines() if "cannot accept connections" in line]
    assert 1 <= len(accept_reports) <= 3, errors
    assert "Too many open files" in accept_reports[0]
    assert "Traceback" not in errors


def test_limits_are_serve_options(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_service_arguments(parser)
    defaults = config_from_arguments(parser.parse_args(["--data-dir", str(tmp_path)]))
    assert (defaults.header_timeout, defaults.body_timeout, defaults.idle_timeout) == (10.0, 60.0, 75.0)
    assert (defaults.max_connections, defaults.body_budget_bytes) == (1000, 256 * 1024 * 1024)
    flags = "--header-timeout 2 --body-timeout 3 --idle-timeout 4 --max-connections 5 --body-budget-bytes 70000000"
    given = config_from_arguments(parser.parse_args(flags.split()))
    assert (given.header_timeout, given.body_timeout, given.idle_timeout, given.max_connections) == (2, 3, 4, 5)
    assert given.body_budget_bytes == 70_000_000
    for flag, value in [
        ("--header-timeout", "0"),
        ("--body-timeout", "-1"),
        ("--idle-timeout", "inf"),
        ("--max-connections", "0"),
        ("--body-budget-bytes", "1000"),  # below --max-body-bytes
    ]:
        with pytest.raises(ValidationError) as raised:
            config_from_arguments(parser.parse_args([flag, value]))
        assert raised.value.field == flag
