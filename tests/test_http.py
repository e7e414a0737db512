"""fastsend.http: the HTTP/1.1 client the dispatcher posts with, against raw loopback servers."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from typing import AsyncIterator, Awaitable, Callable

import pytest
import trustme

from fastsend.http import MAX_BODY_BYTES, MAX_HEAD_BYTES, ConnectionPool, HttpError, parse_url, request_head
from scripted_server import unused_port

pytestmark = pytest.mark.timeout(30)

Handler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]
CREATED = b'HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"id":"e-1"}'


class RawServer:
    """A loopback server whose handler gets itself, each connection's streams and the connection's number."""

    def __init__(self, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.open_now = 0
        self.most_open = 0
        self.requests: list[tuple[bytes, bytes]] = []

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/v2/events"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            await self.handler(self, reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_now -= 1
            writer.close()

    async def read_request(self, reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        request = (head, await reader.readexactly(length))
        self.requests.append(request)
        return request


def answering(*answers: bytes, then_close: bool = False) -> Handler:
    """Read a request, write the next answer; repeat per connection."""

    async def handler(server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        for answer in answers:
            await server.read_request(reader)
            writer.write(answer)
            await writer.drain()
        if not then_close:
            await reader.read()  # keep the connection until the client closes it

    return handler


@contextlib.asynccontextmanager
async def serving(
    handler: Handler, tls: ssl.SSLContext | None = None, limit: int = 1
) -> AsyncIterator[tuple[RawServer, ConnectionPool]]:
    """A started server and a client pool (``limit`` connections), both closed on the way out."""
    async with RawServer(handler, tls) as server:
        pool = ConnectionPool(limit, 1.0)
        try:
            yield server, pool
        finally:
            pool.close()


def run(coroutine: Awaitable[object]) -> object:
    return asyncio.run(coroutine)


async def post(pool: ConnectionPool, server: RawServer, body: bytes = b'{"a":1}', timeout: float = 5.0, **headers: str):
    chunks = [body[: len(body) // 2], body[len(body) // 2 :]]
    return await pool.post(server.url, {"Content-Type": "application/json", **headers}, chunks, len(body), timeout)


# ---------------------------------------------------------------- the exchange


def test_request_carries_the_chunks_as_one_body_with_its_length_and_headers():
    async def main():
        async with serving(answering(CREATED), limit=2) as (server, pool):
            response = await pool.post(
                server.url + "?tenant=7", {"Idempotency-Key": "k-1", "X-API-Key": "s3cret"}, [b'{"a":', b"1}"], 7, 5.0
            )
        return server, response

    server, response = run(main())
    (head, body), = server.requests
    lines = head.decode().split("\r\n")
    assert lines[0] == "POST /v2/events?tenant=7 HTTP/1.1"
    assert f"Host: 127.0.0.1:{server.port}" in lines
    assert "Content-Length: 7" in lines and "Idempotency-Key: k-1" in lines and "X-API-Key: s3cret" in lines
    assert body == b'{"a":1}'
    assert (response.status, response.body) == (201, b'{"id":"e-1"}')
    assert response.headers["content-type"] == "application/json"


def test_keep_alive_connection_is_reused():
    async def main():
        async with serving(answering(CREATED, CREATED, CREATED), limit=4) as (server, pool):
            statuses = [(await post(pool, server)).status for _ in range(3)]
        return server, statuses

    server, statuses = run(main())
    assert statuses == [201, 201, 201]
    assert server.connections == 1 and len(server.requests) == 3


def test_connection_close_or_http_1_0_means_a_fresh_connection_next_time():
    closing = b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 12\r\n\r\n" + b'{"id":"e-1"}'
    old = b'HTTP/1.0 201 Created\r\nContent-Length: 12\r\n\r\n{"id":"e-1"}'

    async def main(answer):
        async with serving(answering(answer), limit=4) as (server, pool):
            statuses = [(await post(pool, server)).status for _ in range(2)]
        return server.connections, statuses

    assert run(main(closing)) == (2, [201, 201])
    assert run(main(old)) == (2, [201, 201])


def test_chunked_answer_arriving_byte_by_byte_is_reassembled():
    answer = (
        b"HTTP/1.1 422 Unprocessable Entity\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n"
        b"7;ext=1\r\n{\"detai\r\n" b"10\r\nl\":\"bad field\"} \r\n" b"0\r\nX-Trailer: t\r\n\r\n"
    )

    async def handler(server, reader, writer, number):
        await server.read_request(reader)
        for index in range(len(answer)):
            writer.write(answer[index : index + 1])
            await writer.drain()
        await reader.read()

    async def main():
        async with serving(handler) as (server, pool):
            first = await post(pool, server)
            second_connection = server.connections
        return first, second_connection

    response, connections = run(main())
    assert response.status == 422 and response.headers["retry-after"] == "3"
    assert response.body == b'{"detail":"bad field"} '
    assert connections == 1


def test_body_without_length_runs_to_the_close_and_the_connection_is_not_kept():
    async def handler(server, reader, writer, number):
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 503 Service Unavailable\r\n\r\nback soon")
        await writer.drain()
        writer.close()

    async def main():
        async with serving(handler) as (server, pool):
            responses = [await post(pool, server) for _ in range(2)]
        return server.connections, responses

    connections, responses = run(main())
    assert [(r.status, r.body) for r in responses] == [(503, b"back soon")] * 2
    assert connections == 2


def test_informational_answers_before_the_real_one_are_skipped():
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n" + CREATED

    async def main():
        async with serving(answering(answer)) as (server, pool):
            return await post(pool, server)

    response = run(main())
    assert response.status == 201 and response.body == b'{"id":"e-1"}'


def test_no_body_for_204():
    async def main():
        async with serving(answering(b"HTTP/1.1 204 No Content\r\n\r\n", CREATED)) as (server, pool):
            return [await post(pool, server) for _ in range(2)], server.connections

    (empty, created), connections = run(main())
    assert (empty.status, empty.body, created.status, connections) == (204, b"", 201, 1)


def test_bytes_after_the_answer_make_the_connection_unusable():
    async def main():
        async with serving(answering(CREATED + b"HTTP/1.1 200 OK\r\n\r\n", CREATED)) as (server, pool):
            statuses = [(await post(pool, server)).status for _ in range(2)]
        return server.connections, statuses

    assert run(main()) == (2, [201, 201])


def test_https_verifies_the_service_against_the_system_trust_store(tmp_path, monkeypatch):
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_tls)
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))

    async def main():
        async with serving(answering(CREATED), tls=server_tls) as (server, pool):
            return await post(pool, server)

    with pytest.raises(HttpError, match="certificate verify failed"):
        run(main())  # the test authority is not trusted yet
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
    response = run(main())
    assert (response.status, response.body) == (201, b'{"id":"e-1"}')


def test_an_answer_before_the_whole_body_was_sent_does_not_leave_the_connection_for_reuse():
    body = b"x" * (32 * 1024 * 1024)  # more than the socket buffers hold: most is still unsent at the answer

    async def handler(server, reader, writer, number):
        if number == 1:  # refuse on the headers alone, never read the body, keep the connection open
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b'HTTP/1.1 413 Payload Too Large\r\nContent-Length: 2\r\n\r\n{}')
            await writer.drain()
            await asyncio.sleep(5)
            return
        await server.read_request(reader)
        writer.write(CREATED)
        await writer.drain()
        await reader.read()

    async def main():
        async with serving(handler) as (server, pool):
            first = await pool.post(server.url, {}, [body], len(body), 5.0)
            second = await post(pool, server)
        return first.status, second.status, server.connections

    assert run(main()) == (413, 201, 2)


# ---------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "answer, says",
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x answer"),
        (b"HTTP/1.1 2x1 Created\r\n\r\n", "not an HTTP/1.x answer"),
        (b"HTTP/1.1 201 Created\r\nContent-Length: many\r\n\r\n", "bad Content-Length"),
        (b"HTTP/1.1 201 Created\r\nno colon here\r\n\r\n", "malformed answer header"),
        (b"HTTP/1.1 201 Created\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 10), "headers longer than"),
        (b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY_BYTES + 1), "at most"),
        (b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 201 Created\r\nContent-Length: 50\r\n\r\n{\"id\":", "in the middle of the answer"),
        (b"HTTP/1.1 201 Created\r\nContent-Le", "in the middle of the answer"),
    ],
)
def test_malformed_or_cut_answers_raise_http_error(answer, says):
    async def main():
        async with serving(answering(answer, then_close=True)) as (server, pool):
            with pytest.raises(HttpError) as info:
                await post(pool, server)
        return info.value

    assert says in str(run(main()))


def test_a_fresh_connection_closed_without_an_answer_is_an_error_not_a_loop():
    async def handler(server, reader, writer, number):
        await server.read_request(reader)
        writer.close()

    async def main():
        async with serving(handler) as (server, pool):
            with pytest.raises(HttpError, match="closed before any answer"):
                await post(pool, server)
        return server.connections

    assert run(main()) == 1


def test_a_pooled_connection_the_service_dropped_is_replaced_once_transparently():
    async def handler(server, reader, writer, number):
        await server.read_request(reader)
        if number == 1:  # answer, keep the connection, then drop it when the next request arrives
            writer.write(CREATED)
            await writer.drain()
            await server.read_request(reader)
            return
        writer.write(CREATED)
        await writer.drain()
        await reader.read()

    async def main():
        async with serving(handler) as (server, pool):
            statuses = [(await post(pool, server, body=f'{{"n":{n}}}'.encode())).status for n in range(2)]
        return server, statuses

    server, statuses = run(main())
    assert statuses == [201, 201]
    assert server.connections == 2
    assert [body for _, body in server.requests] == [b'{"n":0}', b'{"n":1}', b'{"n":1}']


def test_timeout_raises_in_time_and_the_connection_is_not_reused():
    async def handler(server, reader, writer, number):
        await server.read_request(reader)
        if number == 1:
            await asyncio.sleep(5)  # never answers in time
        writer.write(CREATED)
        await writer.drain()
        await reader.read()

    async def main():
        async with serving(handler) as (server, pool):
            started = time.monotonic()
            with pytest.raises(asyncio.TimeoutError):
                await post(pool, server, timeout=0.3)
            elapsed = time.monotonic() - started
            second = await post(pool, server)
        return elapsed, second.status, server.connections

    elapsed, status, connections = run(main())
    assert 0.3 <= elapsed < 1.5
    assert (status, connections) == (201, 2)


def test_connection_refused_names_host_and_port():
    port = unused_port()

    async def main():
        pool = ConnectionPool(1, 1.0)
        try:
            await pool.post(f"http://127.0.0.1:{port}/v2/events", {}, [b"{}"], 2, 2.0)
        finally:
            pool.close()

    with pytest.raises(HttpError, match=f"cannot connect to 127.0.0.1:{port}"):
        run(main())


def test_cancelling_a_post_whose_connect_just_failed_still_cancels():
    # asyncio.wait_for before 3.12 turned this cancellation into the connect's error: a task asked to stop kept going.
    async def main():
        loop = asyncio.get_running_loop()
        connect = loop.create_future()

        async def create_connection(*args, **kwargs):
            return await connect

        loop.create_connection = create_connection
        pool = ConnectionPool(1, 1.0)
        task = asyncio.ensure_future(pool.post("http://127.0.0.1:9/v2/events", {}, [b"{}"], 2, 5.0))
        for _ in range(3):
            await asyncio.sleep(0)
        connect.set_exception(ConnectionRefusedError(111, "refused"))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_cancelling_a_post_waiting_for_its_answer_closes_the_connection():
    async def handler(server, reader, writer, number):
        await server.read_request(reader)
        await reader.read()  # until the client goes away

    async def main():
        async with serving(handler) as (server, pool):
            task = asyncio.ensure_future(post(pool, server))
            while not server.requests:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            for _ in range(100):  # the server sees the close within a second
                if server.open_now == 0:
                    break
                await asyncio.sleep(0.01)
            return server.open_now

    assert run(main()) == 0


def test_at_most_limit_connections_are_open_at_once():
    async def handler(server, reader, writer, number):
        while True:
            await server.read_request(reader)
            await asyncio.sleep(0.05)
            writer.write(CREATED)
            await writer.drain()

    async def main():
        async with serving(handler, limit=2) as (server, pool):
            responses = await asyncio.gather(*(post(pool, server) for _ in range(6)))
        return server, responses

    server, responses = run(main())
    assert [r.status for r in responses] == [201] * 6
    assert server.most_open == 2 and server.connections == 2


# ---------------------------------------------------------------- URLs and heads


@pytest.mark.parametrize(
    "url, origin, path, host_header",
    [
        ("http://events.local/v2/events", ("http", "events.local", 80), "/v2/events", "events.local"),
        ("https://events.local/v2/events", ("https", "events.local", 443), "/v2/events", "events.local"),
        ("http://10.0.0.5:8001/p/v2/events?x=1", ("http", "10.0.0.5", 8001), "/p/v2/events?x=1", "10.0.0.5:8001"),
        ("http://[::1]:8001/v2/events", ("http", "::1", 8001), "/v2/events", "[::1]:8001"),
    ],
)
def test_parse_url(url, origin, path, host_header):
    target = parse_url(url)
    assert (target.origin, target.path, target.host_header) == (origin, path, host_header)


@pytest.mark.parametrize(
    "url, says",
    [
        ("ftp://h/v2/events", "http:// or https://"),
        ("http://user:pw@h/v2/events", "credentials"),
        ("http://h:99999/v2/events", "invalid port"),
        ("http://h:port/v2/events", "invalid port"),
        ("http:///v2/events", "no host"),
    ],
)
def test_parse_url_refuses(url, says):
    with pytest.raises(ValueError, match=says):
        parse_url(url)


def test_request_head_refuses_a_header_that_would_start_another():
    with pytest.raises(ValueError, match="X-API-Key"):
        request_head(parse_url("http://h/v2/events"), {"X-API-Key": "k\r\nX-Admin: 1"}, 0)
