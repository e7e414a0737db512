"""The durable outbox on its own: atomic entries, recovery, quarantine, the lock, the byte bound.

Unit level: a ``Spool`` on a temporary directory, requests built by hand; one test
at the end puts a damaged entry in front of a writer to show the drainer moves it
aside and goes on.
"""

from __future__ import annotations

import logging
import os
import random
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from support.service_process import wait_until

from fastsend import Event, EventWriter
from fastsend.config import SETTING_ENV_VARS
from fastsend.imaging.jpeg import JpegOptions
from fastsend.send.encoding import render_body
from fastsend.send.prepare import prepare_event
from fastsend.send.spool import QUARANTINE_DIR, CorruptEntry, Spool, SpoolLockedError
from fastsend.send.wire import Request
from fastsend.server import ReferenceService

pytestmark = pytest.mark.timeout(30)

API_KEY = "s3cret-api-key-that-must-not-reach-the-disk"


def request(number: int, body_bytes: int = 64) -> Request:
    filler = bytes(random.Random(number).choices(b"abcdefghijklmnopqrstuvwxyz", k=body_bytes))
    return Request.of(f"key-{number:04d}", [b'{"n":%d,"filler":"' % number, filler, b'"}'])


def real_body() -> bytes:
    prepared = prepare_event(Event.quality_check(result="pass", external_id="x"), np.zeros((8, 8, 3), np.uint8))
    return b"".join(render_body(prepared, JpegOptions()))


def entry_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.event"))


def key_of(loaded: Request) -> str:
    return loaded.idempotency_key


def drain_keys(spool: Spool) -> list[str]:
    """Every entry's key, oldest first, removing them as a drainer would."""
    keys = []
    for _ in range(10_000):
        entry = spool.oldest()
        if entry is None:
            return keys
        keys.append(key_of(spool.load(entry)))
        spool.remove(entry)
    raise AssertionError("the spool never ran empty")


@pytest.fixture
def open_spool(spool_dir: Path):
    opened: list[Spool] = []

    def make(max_bytes: int = 1 << 20, directory: Path | None = None) -> Spool:
        spool = Spool(directory or spool_dir, max_bytes)
        opened.append(spool)
        return spool

    yield make
    for spool in opened:
        spool.close()


# ---------------------------------------------------------------- round trip, order, reopening


def test_entry_round_trips_its_body_and_idempotency_key(open_spool):
    spool = open_spool()
    original = request(1, body_bytes=5000)
    assert spool.put(original)
    entry = spool.oldest()
    loaded = spool.load(entry)
    assert (loaded.idempotency_key, loaded.size, loaded.body()) == ("key-0001", original.size, original.body())
    assert spool.stats() == {"spool_pending": 1, "spool_bytes": entry.size, "spool_evicted": 0, "quarantined": 0}
    assert entry.size == os.path.getsize(spool.directory / entry.name)


def test_oldest_follows_submission_order(open_spool):
    spool = open_spool()
    for number in range(40):
        assert spool.put(request(number))
    assert drain_keys(spool) == [f"key-{n:04d}" for n in range(40)]
    assert spool.stats()["spool_pending"] == 0 and spool.stats()["spool_bytes"] == 0


def test_order_holds_when_the_wall_clock_steps_back(open_spool, monkeypatch):
    # NTP may step the clock back after an outage; entries written after must still sort after.
    spool = open_spool()
    readings = [2_000_000_000_000_000_000, 1_000_000_000_000_000_000, 1_000_000_000_000_000_000, 5]
    monkeypatch.setattr(time, "time_ns", lambda: readings.pop(0) if len(readings) > 1 else readings[0])
    for number in range(4):
        assert spool.put(request(number))
    assert drain_keys(spool) == [f"key-{n:04d}" for n in range(4)]


def test_entries_survive_reopening_in_order(open_spool, spool_dir):
    first = open_spool()
    for number in range(5):
        first.put(request(number))
    first.close()
    second = open_spool()
    assert second.stats()["spool_pending"] == 5
    assert second.stats()["spool_bytes"] == sum(p.stat().st_size for p in entry_files(spool_dir))
    second.put(request(5))  # written after the reopen: still after the five from before
    assert drain_keys(second) == [f"key-{n:04d}" for n in range(6)]
    assert entry_files(spool_dir) == []


# ---------------------------------------------------------------- atomic writes


def test_leftover_temporary_file_is_deleted_at_open_and_never_sent(open_spool, spool_dir):
    spool = open_spool()
    spool.put(request(1))
    whole = (spool.directory / spool.oldest().name).read_bytes()
    spool.close()
    # A process killed in the middle of a write leaves only its temporary file.
    (spool_dir / ".tmp-0123456789abcdef").write_bytes(whole[: len(whole) // 2])
    (spool_dir / ".tmp-fedcba9876543210").write_bytes(whole)  # even a complete one was never renamed
    reopened = open_spool()
    assert not list(spool_dir.glob(".tmp-*"))
    assert drain_keys(reopened) == ["key-0001"]


class _FailingChunks(list):
    """Body chunks whose second pass (the write to disk) dies half way, like a crash or a full disk."""

    def __init__(self, chunks: list[bytes]) -> None:
        super().__init__(chunks)
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        for index, chunk in enumerate(super().__iter__()):
            if self.passes > 1 and index == 1:
                raise OSError(28, "No space left on device")
            yield chunk


def test_entry_appears_only_complete(open_spool, spool_dir):
    spool = open_spool()
    spool.put(request(1))
    good = request(2)
    broken = Request(good.idempotency_key, _FailingChunks(list(good.chunks)), good.size)
    with pytest.raises(OSError):
        spool.put(broken)
    # No half entry is visible, none is counted, and the failed write leaves nothing behind.
    assert [p.name for p in entry_files(spool_dir)] == [spool.oldest().name]
    assert spool.stats()["spool_pending"] == 1
    assert not list(spool_dir.glob(".tmp-*"))
    assert drain_keys(spool) == ["key-0001"]


def test_entry_is_renamed_into_place_only_after_fsync(open_spool, monkeypatch):
    spool = open_spool()
    synced: list[int] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(descriptor: int) -> None:
        synced.append(descriptor)
        real_fsync(descriptor)

    def rename(source, target) -> None:
        assert synced, "renamed before the data was fsynced"
        assert Path(source).name.startswith(".tmp-") and Path(target).suffix == ".event"
        real_rename(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    assert spool.put(request(1))
    assert len(synced) == 2  # the file, then the directory holding the new name


# ---------------------------------------------------------------- damaged entries


def stored_entry(open_spool, number: int = 1) -> tuple[Spool, Path, bytes]:
    spool = open_spool()
    spool.put(request(number, body_bytes=40))
    path = spool.directory / spool.oldest().name
    return spool, path, path.read_bytes()


def test_every_truncation_is_detected(open_spool):
    spool, path, whole = stored_entry(open_spool)
    entry = spool.oldest()
    for length in range(len(whole)):
        path.write_bytes(whole[:length])
        with pytest.raises(CorruptEntry):
            spool.load(entry)


def test_every_single_bit_flip_is_detected(open_spool):
    # Header included: a flipped key or size must not be sent as if it were whole.
    spool, path, whole = stored_entry(open_spool)
    entry = spool.oldest()
    undetected = []
    for offset in range(len(whole)):
        for bit in range(8):
            damaged = bytearray(whole)
            damaged[offset] ^= 1 << bit
            path.write_bytes(bytes(damaged))
            try:
                spool.load(entry)
            except CorruptEntry:
                continue
            undetected.append((offset, bit, whole[max(0, offset - 8) : offset + 8]))
    assert not undetected, f"{len(undetected)} flips loaded as whole entries, e.g. {undetected[:3]}"


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00" * 300, b"FASTSEND-SPOOL", b"not a spool entry at all\n{}\n", os.urandom(2048)],
    ids=["empty", "zeros", "magic-only", "text", "random"],
)
def test_garbage_entry_is_quarantined_counted_and_logged(open_spool, spool_dir, content, caplog):
    spool = open_spool()
    spool.put(request(1))
    spool.close()
    (spool_dir / "00000000000000000001-000000.event").write_bytes(content)  # sorts first
    spool = open_spool()
    with caplog.at_level(logging.ERROR, logger="fastsend"):
        entry = spool.oldest()
        assert spool.load_or_quarantine(entry) is None  # never raises out
    assert (spool_dir / QUARANTINE_DIR / entry.name).read_bytes() == content
    assert spool.stats()["quarantined"] == 1
    assert any("quarantined" in record.getMessage() for record in caplog.records)
    assert drain_keys(spool) == ["key-0001"]  # never retried: the good entry is next, then nothing


def test_quarantined_entry_is_not_picked_up_again_after_reopening(open_spool, spool_dir):
    spool, path, whole = stored_entry(open_spool)
    path.write_bytes(whole[:-1])
    assert spool.load_or_quarantine(spool.oldest()) is None
    spool.close()
    reopened = open_spool()
    assert reopened.oldest() is None and reopened.stats()["spool_pending"] == 0
    assert len(list((spool_dir / QUARANTINE_DIR).iterdir())) == 1


def test_entry_evicted_while_being_read_is_not_also_quarantined(open_spool, spool_dir, caplog):
    spool = open_spool()
    spool.put(request(1))
    spool.max_bytes = spool.oldest().size  # room for exactly one
    being_read = spool.oldest()  # the drainer took it ...
    spool.put(request(2))  # ... and a give-up evicted it to make room
    with caplog.at_level(logging.ERROR, logger="fastsend"):
        assert spool.load_or_quarantine(being_read) is None
    assert (spool.stats()["spool_evicted"], spool.stats()["quarantined"]) == (1, 0)
    assert not (spool_dir / QUARANTINE_DIR).exists() or not list((spool_dir / QUARANTINE_DIR).iterdir())
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert drain_keys(spool) == ["key-0002"]


# ---------------------------------------------------------------- the lock


def test_second_spool_on_the_same_directory_is_refused_until_the_first_closes(open_spool, spool_dir):
    first = open_spool()
    first.put(request(1))
    with pytest.raises(SpoolLockedError, match=str(spool_dir)) as refused:
        Spool(spool_dir, 1 << 20)
    assert str(os.getpid()) in str(refused.value)
    assert first.stats()["spool_pending"] == 1  # the refused one took nothing
    first.close()
    second = open_spool()
    assert drain_keys(second) == ["key-0001"]


def test_writer_on_a_held_spool_directory_is_refused(open_spool, spool_dir, monkeypatch):
    for variable in SETTING_ENV_VARS.values():
        monkeypatch.delenv(variable, raising=False)
    open_spool()
    with pytest.raises(SpoolLockedError, match=str(spool_dir)):
        EventWriter("http://127.0.0.1:9", spool_dir=str(spool_dir))


# ---------------------------------------------------------------- the byte bound


def test_putting_past_max_bytes_evicts_the_oldest_first(open_spool, spool_dir, caplog):
    probe = open_spool(directory=spool_dir.parent / "probe")
    probe.put(request(0))
    size = probe.oldest().size
    spool = open_spool(max_bytes=3 * size + size // 2)  # room for three
    with caplog.at_level(logging.WARNING, logger="fastsend"):
        for number in range(7):
            assert spool.put(request(number))
            assert spool.stats()["spool_bytes"] <= spool.max_bytes
    assert spool.stats()["spool_evicted"] == 4
    assert sum("evicted" in record.getMessage() for record in caplog.records) == 4
    assert len(entry_files(spool_dir)) == 3
    assert drain_keys(spool) == ["key-0004", "key-0005", "key-0006"]


def test_event_larger_than_the_whole_spool_is_refused_without_evicting(open_spool, spool_dir):
    spool = open_spool(max_bytes=4096)
    assert spool.put(request(1))
    assert spool.put(request(2, body_bytes=5000)) is False
    assert spool.stats() == {
        "spool_pending": 1,
        "spool_bytes": spool.oldest().size,
        "spool_evicted": 0,
        "quarantined": 0,
    }
    assert len(entry_files(spool_dir)) == 1 and not list(spool_dir.glob(".tmp-*"))


def test_byte_count_is_right_after_reopening_a_full_spool(open_spool, spool_dir):
    spool = open_spool(max_bytes=2000)
    for number in range(30):
        spool.put(request(number))
    spool.close()
    reopened = open_spool(max_bytes=2000)
    on_disk = sum(p.stat().st_size for p in entry_files(spool_dir))
    assert reopened.stats()["spool_bytes"] == on_disk <= 2000
    reopened.put(request(99))
    assert sum(p.stat().st_size for p in entry_files(spool_dir)) <= 2000


# ---------------------------------------------------------------- secrets


def test_an_entry_holds_its_body_and_key_and_neither_url_nor_api_key(spool_dir):
    from support.scripted_server import unused_port

    down = f"http://127.0.0.1:{unused_port()}"
    with EventWriter(down, api_key=API_KEY, spool_dir=str(spool_dir), retries=0, request_timeout=0.3) as writer:
        assert writer.send(Event.custom(value="kept"), np.zeros((8, 8, 3), np.uint8)).spooled
    (path,) = entry_files(spool_dir)
    data = path.read_bytes()
    assert API_KEY.encode() not in data and down.encode() not in data and b"127.0.0.1" not in data
    header = orjson.loads(data.split(b"\n")[1])
    assert set(header) == {"idempotency_key", "size", "crc32"}


def previous_layout_entry(directory: Path, name: str, url: str, key: str, body: bytes) -> None:
    """An entry as the previous spool layout wrote it: URL and headers in its header, under their CRC."""
    import zlib

    headers = {"Content-Type": "application/json", "Idempotency-Key": key}
    crc = zlib.crc32(body, zlib.crc32(orjson.dumps([url, headers, len(body)])))
    header = orjson.dumps({"url": url, "headers": headers, "size": len(body), "crc32": crc})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(b"FASTSEND-SPOOL 2\n" + header + b"\n" + body)


def test_entries_of_the_previous_layout_are_read_with_their_key_and_without_their_url(open_spool, spool_dir):
    previous_layout_entry(spool_dir, "00000000000000000001.event", "http://elsewhere:1/v2/events", "old-1", b"{}")
    spool = open_spool()
    loaded = spool.load(spool.oldest())
    assert (loaded.idempotency_key, loaded.body()) == ("old-1", b"{}")
    assert not hasattr(loaded, "url")


@pytest.mark.parametrize("key", ["bad\r\nX-Evil: yes", "", "x" * 300])
def test_an_entry_whose_key_cannot_be_sent_is_refused_as_corrupt(open_spool, key):
    spool = open_spool()
    assert spool.put(Request.of(key, [b"{}"]))
    with pytest.raises(CorruptEntry, match="cannot be sent"):
        spool.load(spool.oldest())
    assert spool.load_or_quarantine(spool.oldest()) is None
    assert spool.stats()["quarantined"] == 1 and len(spool) == 0


# ---------------------------------------------------------------- in front of a writer


def test_writer_quarantines_a_damaged_entry_and_delivers_the_rest(open_spool, spool_dir, tmp_path, monkeypatch):
    for variable in SETTING_ENV_VARS.values():
        monkeypatch.delenv(variable, raising=False)
    with ReferenceService(tmp_path / "service") as service:
        spool = open_spool()
        body = real_body()  # the service validates what the drainer sends
        spool.put(Request.of("good-1", [body]))
        spool.put(Request.of("good-2", [body]))
        damaged = spool.directory / spool.oldest().name
        damaged.write_bytes(damaged.read_bytes()[:-3])
        spool.close()

        writer = EventWriter(service.url, spool_dir=str(spool_dir), backoff_base=0.02, backoff_max=0.1)
        try:
            assert wait_until(lambda: writer.stats()["spool_pending"] == 0 and writer.stats()["drained"] == 1, 10)
            stats = writer.stats()
        finally:
            writer.close(timeout=2)
        assert (stats["quarantined"], stats["drained"]) == (1, 1)
        assert [e["idempotency_key"] for e in service.list_events()] == ["good-2"]
        assert [p.name for p in (spool_dir / QUARANTINE_DIR).iterdir()] == [damaged.name]


def test_spool_stats_are_json_friendly(open_spool):
    spool = open_spool()
    spool.put(request(1))
    assert orjson.loads(orjson.dumps(spool.stats()))["spool_pending"] == 1


def test_a_spooled_result_says_so_and_is_not_an_ordinary_failure(tmp_path):
    from support.scripted_server import unused_port

    with EventWriter(
        f"http://127.0.0.1:{unused_port()}",
        spool_dir=str(tmp_path / "spool"),
        retries=0,
        deadline=2,
        request_timeout=0.3,
    ) as writer:
        result = writer.send(Event.custom(value="later"), np.zeros((8, 8, 3), np.uint8))
        assert result.error_status and result.spooled
        assert "spooled" in result.message
        assert writer.stats()["spool_pending"] == 1


def test_a_drain_refused_for_its_key_keeps_the_entries_for_a_writer_with_the_right_one(open_spool, spool_dir, tmp_path):
    with ReferenceService(tmp_path / "service", api_key="right") as service:
        spool = open_spool()
        for key in ("kept-1", "kept-2"):
            spool.put(Request.of(key, [real_body()]))
        spool.close()

        settings = {"spool_dir": str(spool_dir), "backoff_base": 0.02, "backoff_max": 0.1}
        wrong = EventWriter(service.url, api_key="wrong", **settings)
        try:
            time.sleep(0.5)  # several drain attempts, each answered 401
            stats = wrong.stats()
        finally:
            wrong.close(timeout=2)
        assert (stats["spool_pending"], stats["quarantined"], stats["drained"]) == (2, 0, 0)
        assert service.stored_count() == 0

        right = EventWriter(service.url, api_key="right", **settings)
        try:
            assert wait_until(lambda: right.stats()["drained"] == 2, 10), right.stats()
        finally:
            right.close(timeout=2)
        assert sorted(e["idempotency_key"] for e in service.list_events()) == ["kept-1", "kept-2"]
