"""The receiving side of the end-to-end benchmarks: a minimal HTTP/1.1 receiver.

Every contender posts to the same receiver, which runs in a separate process so
its CPU shows up as the machine's, not as the sender's. It is as cheap as an
HTTP server can be on asyncio (uvloop when installed): instead of a Protocol
(whose transport would copy every body byte into Python), each connection is a
non-blocking socket watched with ``loop.add_reader``. The request line and
headers are peeked (``MSG_PEEK``) and parsed; the body — ``Content-Length`` or
chunked — is dropped in the kernel as it arrives (``recv(MSG_TRUNC)`` on Linux,
about a third of the CPU of copying it out; elsewhere it is read into one
scratch buffer and ignored), never accumulated. The answer is a fixed ``201``
with ``{"id": "<counter>"}``. Connections are kept alive unless the client asks
otherwise.

Routes: ``POST /v2/events`` → ``status`` (201 by default, 529 for the
backpressure scenario); ``GET /stats`` → ``200 {"requests": n, "body_bytes": b}``
(POSTs received and body bytes read, to check that every event arrived);
anything else → 404.

Use it through ``running_receiver()``; ``python benchmarks/receiver.py --fd N`` is how
the child process is started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

__all__ = ["receiver_stats", "running_receiver"]

_READ_BUFFER = 1 << 20
_MAX_HEAD = 64 * 1024
_EVENTS_PATH = b"/v2/events"
_REASONS = {200: b"OK", 201: b"Created", 400: b"Bad Request", 404: b"Not Found", 529: b"Site Overloaded"}

# Parser states.
_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _TRAILER = range(5)
# Linux drops TCP data in the kernel with MSG_TRUNC: the body is never copied to us.
_DISCARD = socket.MSG_TRUNC if sys.platform.startswith("linux") else 0
_READS_PER_WAKEUP = 16


class _Counters:
    __slots__ = ("body_bytes", "requests")

    def __init__(self) -> None:
        self.requests = 0
        self.body_bytes = 0


class _Connection:
    """One client connection: an HTTP/1.1 request parser that never keeps a body byte.

    Header lines are read with ``MSG_PEEK`` into a small buffer, then exactly the
    bytes up to the end of the line are taken; body bytes (``Content-Length`` or
    chunked data) are dropped with ``MSG_TRUNC``.
    """

    # One scratch buffer for all connections: each callback consumes what it reads before returning.
    _buffer = bytearray(_READ_BUFFER)

    def __init__(self, loop, sock: socket.socket, counters: _Counters, status: int, retry_after: str | None) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.counters = counters
        self.status = status
        self.retry_after = retry_after
        self.state = _HEAD
        self.head = bytearray()  # a header block or chunk-size line split across reads
        self.remaining = 0
        self.method = b""
        self.path = b""
        self.close_after = False
        self.outgoing = b""
        self.open = True
        loop.add_reader(self.fd, self.readable)

    # ------------------------------------------------------------ reading

    def readable(self) -> None:
        sock, buf = self.sock, self._buffer
        try:
            for _ in range(_READS_PER_WAKEUP):
                if not self.open:
                    return
                state = self.state
                if state == _BODY or state == _CHUNK_DATA:
                    n = sock.recv_into(buf, min(self.remaining, _READ_BUFFER), _DISCARD)
                    if n == 0:
                        return self.close()
                    self.remaining -= n
                    self.counters.body_bytes += n
                    if self.remaining == 0:
                        if state == _BODY:
                            self.respond()
                        else:
                            self.state = _CHUNK_SIZE
                    continue
                line = self.read_until(b"\r\n\r\n" if state == _HEAD else b"\r\n")
                if line is None:
                    continue
                if state == _HEAD:
                    self.start_request(line)
                elif state == _CHUNK_SIZE:
                    self.chunk_size(line)
                elif line == b"":  # the empty line that ends the trailers
                    self.respond()
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()

    def read_until(self, end: bytes) -> bytes | None:
        """The bytes before ``end``, with ``end`` consumed; None after keeping a partial line."""
        sock, buf = self.sock, self._buffer
        n = sock.recv_into(buf, _MAX_HEAD, socket.MSG_PEEK)
        if n == 0:
            self.close()
            return None
        old = len(self.head)
        if old == 0:
            idx = buf.find(end, 0, n)
            if idx >= 0:
                line = bytes(buf[:idx])
                sock.recv_into(buf, idx + len(end), _DISCARD)
                return line
        else:
            self.head += buf[:n]
            idx = self.head.find(end, max(0, old - len(end) + 1))
            if idx >= 0:
                line = bytes(self.head[:idx])
                self.head.clear()
                sock.recv_into(buf, idx + len(end) - old, _DISCARD)
                return line
            del self.head[old:]
        if old + n > _MAX_HEAD:
            self.fail(400)
            return None
        self.head += buf[:n]
        sock.recv_into(buf, n, _DISCARD)
        return None

    # ------------------------------------------------------------ parsing

    def start_request(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return self.fail(400)
        self.method, self.path, version = parts
        length = 0
        chunked = False
        connection = b""
        expect_continue = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return self.fail(400)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                connection = value.strip().lower()
            elif name == b"expect":
                expect_continue = value.strip().lower() == b"100-continue"
        self.close_after = connection == b"close" or (version == b"HTTP/1.0" and connection != b"keep-alive")
        if expect_continue:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if chunked:
            self.state = _CHUNK_SIZE
        elif length > 0:
            self.state = _BODY
            self.remaining = length
        elif length < 0:
            self.fail(400)
        else:
            self.respond()

    def chunk_size(self, line: bytes) -> None:
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            return self.fail(400)
        if size == 0:
            self.state = _TRAILER
        else:
            self.state = _CHUNK_DATA
            self.remaining = size + 2  # the data and its CRLF
            self.counters.body_bytes -= 2

    # ------------------------------------------------------------ answers

    def respond(self) -> None:
        self.state = _HEAD
        counters = self.counters
        if self.method == b"POST" and self.path == _EVENTS_PATH:
            counters.requests += 1
            status = self.status
            if status == 201:
                body = b'{"id": "%d"}' % counters.requests
            else:
                body = b'{"detail": "service at capacity (benchmark receiver)"}'
        elif self.method == b"GET" and self.path == b"/stats":
            status = 200
            body = b'{"requests": %d, "body_bytes": %d}' % (counters.requests, counters.body_bytes)
        else:
            status = 404
            body = b'{"detail": "not found"}'
        self.answer(status, body)

    def answer(self, status: int, body: bytes) -> None:
        extra = b""
        if status == 529 and self.retry_after is not None:
            extra = b"Retry-After: %s\r\n" % self.retry_after.encode()
        if self.close_after:
            extra += b"Connection: close\r\n"
        self.write(
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, _REASONS.get(status, b"Status"), len(body), extra, body)
        )
        if self.close_after and not self.outgoing:
            self.close()

    def fail(self, status: int) -> None:
        self.close_after = True
        self.state = _HEAD
        self.head.clear()
        self.answer(status, b'{"detail": "bad request"}')

    # ------------------------------------------------------------ writing

    def write(self, data: bytes) -> None:
        if not self.open:
            return
        if self.outgoing:
            self.outgoing += data
            return
        try:
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            return self.close()
        if sent < len(data):
            self.outgoing = data[sent:]
            self.loop.add_writer(self.fd, self.writable)

    def writable(self) -> None:
        try:
            sent = self.sock.send(self.outgoing)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return self.close()
        self.outgoing = self.outgoing[sent:]
        if not self.outgoing:
            self.loop.remove_writer(self.fd)
            if self.close_after:
                self.close()

    def close(self) -> None:
        if self.open:
            self.open = False
            self.loop.remove_reader(self.fd)
            if self.outgoing:
                self.loop.remove_writer(self.fd)
            self.sock.close()


def _serve(fd: int, status: int, retry_after: str | None, parent: int | None = None) -> None:
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    counters = _Counters()
    listener = socket.socket(fileno=fd)
    listener.setblocking(False)

    def accept() -> None:
        for _ in range(64):
            try:
                sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _Connection(loop, sock, counters, status, retry_after)

    loop.add_reader(listener.fileno(), accept)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)

    def watch_parent() -> None:
        # Orphaned (the benchmark run was killed): stop instead of lingering.
        if os.getppid() != parent:
            loop.stop()
        else:
            loop.call_later(1.0, watch_parent)

    if parent is not None:
        loop.call_later(1.0, watch_parent)
    try:
        loop.run_forever()
    finally:
        loop.remove_reader(listener.fileno())
        listener.close()
        loop.close()


# ---------------------------------------------------------------- parent side


def receiver_stats(base_url: str, timeout: float = 2.0) -> dict[str, int]:
    """``{"requests": POSTs to /v2/events so far, "body_bytes": body bytes read}``."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/stats")
        response = conn.getresponse()
        return json.loads(response.read())
    finally:
        conn.close()


@contextlib.contextmanager
def running_receiver(
    status: int = 201, *, retry_after: float | None = None, start_timeout: float = 10.0, stop_timeout: float = 5.0
) -> Iterator[str]:
    """Run the receiver in a child process on 127.0.0.1 and yield its base URL (``http://127.0.0.1:PORT``).

    ``status`` is what every ``POST /v2/events`` gets: 201 with an id, or e.g. 529
    with a ``detail`` (and ``Retry-After`` when ``retry_after`` is given). The
    listening socket is bound here, on a free port, and handed to the child, so
    there is no port race; the context waits (at most ``start_timeout``) until the
    child answers, and on exit terminates it (killing it after ``stop_timeout``).
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    port = listener.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    args = [sys.executable, os.path.abspath(__file__), "--fd", str(listener.fileno()), "--status", str(status)]
    args += ["--parent", str(os.getpid())]
    if retry_after is not None:
        args += ["--retry-after", f"{retry_after:g}"]
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            args, pass_fds=[listener.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors
        )
        listener.close()
        try:
            _wait_ready(proc, base_url, start_timeout, errors)
            yield base_url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=stop_timeout)


def _wait_ready(proc: subprocess.Popen, base_url: str, timeout: float, errors) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            errors.seek(0)
            raise RuntimeError(
                f"benchmark receiver exited with {proc.returncode}: {errors.read().decode(errors='replace')}"
            )
        try:
            receiver_stats(base_url, timeout=0.5)
            return
        except (OSError, http.client.HTTPException, ValueError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"benchmark receiver at {base_url} did not answer within {timeout:g}s") from None
            time.sleep(0.05)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Minimal HTTP/1.1 receiver for the fastsend benchmarks.")
    parser.add_argument("--fd", type=int, required=True, help="listening socket inherited from the parent")
    parser.add_argument("--status", type=int, default=201)
    parser.add_argument("--retry-after", default=None, help="sent verbatim with every 529")
    parser.add_argument("--parent", type=int, default=None, help="exit when this process is no longer the parent")
    options = parser.parse_args(argv)
    _serve(options.fd, options.status, options.retry_after, options.parent)


if __name__ == "__main__":
    main()
