"""The reference service under hostile or unlucky traffic: bad idempotency keys in a busy commit group,
failed commits, orphan image files, bad query parameters and bodies past the memory budget.

Every test runs its own ReferenceService on 127.0.0.1 with a free port. Requests
that need exact bytes (a non-UTF-8 header, a half-sent body) go over raw sockets.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import simplejpeg
from support.service_process import port_of

from fastsend.server import ReferenceService
from fastsend.server.committer import Committer
from fastsend.server.store import EventStore
from fastsend.server.validation import Image, validate_body

TIMEOUT = 20.0

JPEG = simplejpeg.encode_jpeg(np.full((8, 8, 3), 90, np.uint8), quality=95, colorspace="BGR")


def body_json(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inference_timestamp": "2026-11-26T04:44:12.123456+00:00",
        "event_schema": "quality_check",
        "event_data": {"result": "pass"},
        "images": [{"base64Image": base64.b64encode(JPEG).decode()}],
        "displayImagePosition": 0,
    }
    body.update(overrides)
    return body


def body_bytes(size: int | None = None) -> bytes:
    """A valid body; with ``size``, padded to exactly that many bytes.

    The image takes the padding (NULs after a JPEG's end are allowed; each 3 add 4 base64 characters),
    the label the last 0 to 3 bytes.
    """
    if size is None:
        return json.dumps(body_json()).encode()

    def padded(nuls: int, label: str) -> bytes:
        image = base64.b64encode(JPEG + b"\0" * nuls).decode()
        return json.dumps(body_json(images=[{"base64Image": image, "label": label}])).encode()

    whole = -len(JPEG) % 3  # NULs that make the image a whole number of base64 groups
    extra = size - len(padded(whole, ""))
    data = padded(whole + extra // 4 * 3, "x" * (extra % 4))
    assert len(data) == size
    return data


def image_files(service: ReferenceService) -> list[str]:
    return sorted(path.name for path in (service.data_dir / "images").iterdir())


# --- raw HTTP over loopback ------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request_head(
    method: str, path: str, headers: Sequence[tuple[bytes, bytes]] = (), length: int | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Content-Type: application/json"]
    if length is not None:
        lines.append(b"Content-Length: %d" % length)
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before an answer")
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(status_line.split()[1]), headers, body)


async def exchange(port: int, data: bytes) -> Answer:
    """Send ``data`` on a new connection and read one answer, bounded in time."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), TIMEOUT)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(read_answer(reader), TIMEOUT)
    finally:
        writer.close()


# --- 1. one bad request never fails its commit group -------------------------------

BAD_KEYS = [
    b"\xff",  # not UTF-8
    "clé".encode(),  # UTF-8, not ASCII
    b"caf\xe9",  # Latin-1
    b"two words",  # a space is not printable ASCII 0x21-0x7E
    b"k" * 256,  # too long
]


def test_bad_idempotency_keys_fail_only_their_own_requests(make_service: Any) -> None:
    service = make_service()
    port = port_of(service)
    data = body_bytes()
    keys = [BAD_KEYS[index % len(BAD_KEYS)] if index % 10 == 0 else b"good-%d" % index for index in range(200)]
    assert sum(key in BAD_KEYS for key in keys) == 20

    async def send_all() -> list[Answer]:
        heads = [request_head("POST", "/v2/events", [(b"Idempotency-Key", key)], len(data)) for key in keys]
        return await asyncio.gather(*(exchange(port, head + data) for head in heads))

    answers = asyncio.run(send_all())

    rejected = [answer for key, answer in zip(keys, answers, strict=True) if key in BAD_KEYS]
    accepted = [answer for key, answer in zip(keys, answers, strict=True) if key not in BAD_KEYS]
    assert [answer.status for answer in rejected] == [400] * 20
    for answer in rejected:
        assert answer.json()["detail"].startswith("Idempotency-Key: ")
        assert "printable ASCII" in answer.json()["detail"]
    assert [answer.status for answer in accepted] == [201] * 180
    ids = {answer.json()["id"] for answer in accepted}
    assert len(ids) == 180
    assert service.stored_count() == 180
    assert image_files(service) == sorted(f"{event_id}.output.jpg" for event_id in ids)
    stored = {event["idempotency_key"] for event in service.list_events(limit=1000)}
    assert stored == {key.decode() for key in keys if key not in BAD_KEYS}


def test_idempotency_key_at_the_edges_of_the_rule(make_service: Any) -> None:
    service = make_service()
    port = port_of(service)
    data = body_bytes()
    edge = bytes(range(0x21, 0x7F))  # every printable ASCII character once
    for key, status in [(edge, 201), (b"k" * 255, 201), (b"a\x7fb", 400), (b"", 400)]:
        head = request_head("POST", "/v2/events", [(b"Idempotency-Key", key)], len(data))
        assert asyncio.run(exchange(port, head + data)).status == status, key


class _GroupingStore(EventStore):
    """An EventStore whose first write waits for ``release``, so the writes queued behind it form one group."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.release = threading.Event()
        self.groups: list[int] = []

    def add(self, items: Any) -> list[tuple[str, bool]]:
        self.groups.append(len(items))
        if len(self.groups) == 1:
            assert self.release.wait(TIMEOUT)
        return super().add(items)


def test_an_event_that_cannot_be_stored_fails_alone_in_its_group(tmp_path: Path) -> None:
    good = validate_body(body_json())
    # An image type the store has no file extension for: writing it raises inside the group.
    poisoned = dataclasses.replace(good, output_image=Image(JPEG, "image/gif"))
    store = _GroupingStore(tmp_path)
    committer = Committer(store)

    async def submit_all() -> list[Any]:
        first = asyncio.ensure_future(committer.submit(good, "first"))
        for _ in range(1000):  # until the writer thread is inside the first add()
            if store.groups:
                break
            await asyncio.sleep(0.005)
        events = [poisoned if index == 3 else good for index in range(8)]
        rest = [asyncio.ensure_future(committer.submit(event, f"key-{index}")) for index, event in enumerate(events)]
        await asyncio.sleep(0)  # let every submit enqueue before the writer takes the next group
        store.release.set()
        return await asyncio.wait_for(asyncio.gather(first, *rest, return_exceptions=True), TIMEOUT)

    try:
        results = asyncio.run(submit_all())
    finally:
        committer.close()
    try:
        assert store.groups[:2] == [1, 8], "the eight events must have been grouped in one commit"
        assert isinstance(results[4], KeyError)
        created = [result for index, result in enumerate(results) if index != 4]
        assert all(isinstance(result, tuple) and result[1] for result in created)
        assert store.count() == 8
        assert len(list(store.images_dir.iterdir())) == 8
    finally:
        store.close()


# --- 3. orphan image files ----------------------------------------------------------


def test_a_failed_commit_leaves_no_image_files(tmp_path: Path) -> None:
    good = validate_body(
        body_json(
            images=[
                {"base64Image": base64.b64encode(JPEG).decode(), "inputBase64Image": base64.b64encode(JPEG).decode()}
            ]
        )
    )
    poisoned = dataclasses.replace(good, input_image=Image(JPEG, "image/gif"))
    store = EventStore(tmp_path)
    try:
        with pytest.raises(KeyError):
            store.add([(good, None), (good, "k"), (poisoned, None)])
        assert store.count() == 0
        assert list(store.images_dir.iterdir()) == []
        # The key of the failed group was not taken.
        assert store.add([(good, "k")])[0][1] is True
    finally:
        store.close()


def test_orphan_image_files_are_removed_at_startup(tmp_path: Path) -> None:
    with ReferenceService(tmp_path) as service:
        event_id = asyncio.run(
            exchange(port_of(service), request_head("POST", "/v2/events", length=len(body_bytes())) + body_bytes())
        ).json()["id"]
    images = tmp_path / "images"
    # What a process killed between writing a file and committing its row leaves behind.
    orphans = [f"{uuid.uuid4()}.output.jpg", f"{uuid.uuid4()}.input.png"]
    for name in orphans:
        (images / name).write_bytes(JPEG)
    (images / "notes.txt").write_text("not ours to remove")

    with ReferenceService(tmp_path) as service:
        assert sorted(path.name for path in images.iterdir()) == sorted([f"{event_id}.output.jpg", "notes.txt"])
        assert service.get_image(event_id) == JPEG
        assert service.stored_count() == 1


# --- 4. query parameters --------------------------------------------------------------

BAD_QUERIES = [
    ("/v2/events?offset=99999999999999999999", "offset", "99999999999999999999"),
    ("/v2/events?offset=9223372036854775808", "offset", "9223372036854775808"),
    ("/v2/events?offset=-1", "offset", "-1"),
    ("/v2/events?offset=1.5", "offset", "1.5"),
    ("/v2/events?offset=%2B5", "offset", "+5"),
    ("/v2/events?offset=", "offset", ""),
    ("/v2/events?limit=0", "limit", "0"),
    ("/v2/events?limit=1001", "limit", "1001"),
    ("/v2/events?limit=ten", "limit", "ten"),
    ("/v2/events?limit=%D9%A3", "limit", "\u0663"),  # ARABIC-INDIC DIGIT THREE: int() would take it
    ("/v2/events?limit=5&limit=6", "limit", "6"),
    ("/v2/events?event_schema=nope", "event_schema", "nope"),
    ("/v2/events?event_schema=", "event_schema", ""),
    ("/v2/events?schema=custom", "schema", "custom"),
    ("/v2/events/some-id?fields=all", "fields", "all"),
    ("/v2/events/some-id/images/output?size=small", "size", "small"),
    # The viewer's routes and /metrics follow the same rules.
    ("/viewer/api/events?offset=99999999999999999999", "offset", "99999999999999999999"),
    ("/viewer/api/events?offset=-1", "offset", "-1"),
    ("/viewer/api/events?schema=custom&schema=", "schema", ""),
    ("/viewer/api/events?event_schema=custom", "event_schema", "custom"),
    ("/viewer/api/newest?since=1", "since", "1"),
    ("/viewer/api/events/00000000-0000-0000-0000-000000000000/thumbnail?size=small", "size", "small"),
    ("/metrics?name=x", "name", "x"),
]


@pytest.mark.parametrize(("path", "name", "value"), BAD_QUERIES, ids=[query[0] for query in BAD_QUERIES])
def test_bad_query_parameter_is_a_json_400_naming_it(make_service: Any, path: str, name: str, value: str) -> None:
    service = make_service()
    answer = asyncio.run(exchange(port_of(service), request_head("GET", path)))
    assert answer.status == 400
    assert answer.headers["content-type"].startswith("application/json")
    detail = answer.json()["detail"]
    assert detail.startswith(f"query parameter {name}: {value!r} "), detail
    assert detail.split(f"{value!r} ", 1)[1]  # and a rule follows


def test_query_parameter_rules(make_service: Any) -> None:
    service = make_service()
    port = port_of(service)
    detail = asyncio.run(exchange(port, request_head("GET", "/v2/events?offset=-1"))).json()["detail"]
    assert detail == "query parameter offset: '-1' must be an integer from 0 to 9223372036854775807"
    detail = asyncio.run(exchange(port, request_head("GET", "/v2/events?bogus=1"))).json()["detail"]
    assert "takes only limit, offset, event_schema" in detail
    # POST takes none either, and nothing is stored.
    data = body_bytes()
    answer = asyncio.run(exchange(port, request_head("POST", "/v2/events?dry_run=1", length=len(data)) + data))
    assert (answer.status, service.stored_count()) == (400, 0)
    # The largest offset is fine; /healthz ignores its query.
    answer = asyncio.run(exchange(port, request_head("GET", "/v2/events?offset=9223372036854775807&limit=1000")))
    assert (answer.status, answer.json()) == (200, {"events": [], "total": 0})
    assert asyncio.run(exchange(port, request_head("GET", "/healthz?probe=1"))).status == 200


def test_an_unexpected_error_is_a_json_500(make_service: Any) -> None:
    service = make_service()
    port = port_of(service)
    data = body_bytes()
    event_id = asyncio.run(exchange(port, request_head("POST", "/v2/events", length=len(data)) + data)).json()["id"]
    (service.data_dir / "images" / f"{event_id}.output.jpg").unlink()  # the row now names a missing file
    answer = asyncio.run(exchange(port, request_head("GET", f"/v2/events/{event_id}/images/output")))
    assert answer.status == 500
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json() == {"detail": "internal error; the service log has the details"}


# --- 5. the body memory budget ---------------------------------------------------------


def test_bodies_past_the_budget_get_529_and_the_rest_succeed(make_service: Any) -> None:
    size = 700_000
    service = make_service(max_body_bytes=1_000_000, body_budget_bytes=2 * size + 100_000)
    port = port_of(service)
    data = body_bytes(size)
    head = request_head("POST", "/v2/events", length=size)

    async def scenario() -> tuple[list[Answer], list[Answer], Answer]:
        # Two uploads sent all but their last byte: they hold what arrived, 2 * (size - 1) of the budget...
        holders = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for _, writer in holders:
            writer.write(head + data[:-1])
            await writer.drain()
        for _ in range(1000):
            if service.body_bytes_held() == 2 * (size - 1):
                break
            await asyncio.sleep(0.01)
        assert service.body_bytes_held() == 2 * (size - 1)
        # ...so four more, announced by Content-Length, and one chunked, do not fit.
        refused = list(await asyncio.gather(*(exchange(port, head + data) for _ in range(4))))
        chunked_head = head.replace(b"Content-Length: %d" % size, b"Transfer-Encoding: chunked")
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in (data[:300_000], data[300_000:]))
        refused_chunked = await exchange(port, chunked_head + chunks + b"0\r\n\r\n")
        # The two holders finish and are stored.
        accepted = []
        for reader, writer in holders:
            writer.write(data[-1:])
            await writer.drain()
            accepted.append(await asyncio.wait_for(read_answer(reader), TIMEOUT))
            writer.close()
        return accepted, [*refused, refused_chunked], await exchange(port, head + data)

    accepted, refused, after = asyncio.run(scenario())
    assert [answer.status for answer in accepted] == [201, 201]
    assert [answer.status for answer in refused] == [529] * 5
    for answer in refused:
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["detail"].startswith("service at capacity: request bodies in progress hold")
    assert after.status == 201  # the budget is free again
    assert service.body_bytes_held() == 0
    assert service.stored_count() == 3


def test_budget_smaller_than_one_body_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="body_budget_bytes"):
        ReferenceService(tmp_path, max_body_bytes=1000, body_budget_bytes=999)
