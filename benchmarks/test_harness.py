"""Checks of the benchmark harness itself: the receiver, the frames, the reference sender.

They run with ``--benchmark-disable`` (the smoke run) and are skipped by
``--benchmark-only``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import aiohttp
import cv2
import numpy as np
import pytest
import requests

import fastsend
from benchmarks.frames import SIZES, event_inputs, make_detections, make_frame
from benchmarks.receiver import receiver_stats, running_receiver
from benchmarks.reference_sender import ReferenceSender, reference_detections_to_wire
from fastsend.send.encoding import render_body


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_receiver_answers_201_with_increasing_ids_over_keep_alive(receiver_url):
    before = receiver_stats(receiver_url)
    with requests.Session() as session:
        ids = [int(session.post(f"{receiver_url}/v2/events", data=b"x" * 300_000).json()["id"]) for _ in range(3)]
    assert ids == sorted(ids) and len(set(ids)) == 3
    after = receiver_stats(receiver_url)
    assert after["requests"] - before["requests"] == 3
    assert after["body_bytes"] - before["body_bytes"] == 900_000


def test_receiver_reads_chunked_bodies_and_pipelined_requests_split_anywhere(receiver_url):
    before = receiver_stats(receiver_url)
    requests_bytes = (
        b"POST /v2/events HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"POST /v2/events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", _port(receiver_url)), timeout=5) as conn:
        for i in range(len(requests_bytes)):
            conn.sendall(requests_bytes[i : i + 1])
        received = b""
        while received.count(b"HTTP/1.1 201") < 2:
            chunk = conn.recv(4096)
            assert chunk, received
            received += chunk
    after = receiver_stats(receiver_url)
    assert after["requests"] - before["requests"] == 2
    assert after["body_bytes"] - before["body_bytes"] == 13


def test_receiver_works_with_aiohttp_and_rejects_other_paths(receiver_url):
    async def go() -> list[int]:
        async with aiohttp.ClientSession() as session:
            statuses = []
            for path in ("/v2/events", "/v2/events", "/elsewhere"):
                async with session.post(receiver_url + path, data=b"{}" * 100_000) as response:
                    await response.read()
                    statuses.append(response.status)
            return statuses

    assert asyncio.run(go()) == [201, 201, 404]


def test_receiver_can_answer_529_with_retry_after():
    with running_receiver(529, retry_after=1) as url:
        response = requests.post(f"{url}/v2/events", json={"a": 1}, timeout=5)
        assert response.status_code == 529
        assert response.headers["Retry-After"] == "1"
        assert "detail" in response.json()
        assert receiver_stats(url)["requests"] == 1


def test_frames_are_deterministic_and_jpeg_realistic():
    assert np.array_equal(make_frame(640, 480, seed=3), make_frame(640, 480, seed=3))
    assert not np.array_equal(make_frame(640, 480, seed=3), make_frame(640, 480, seed=4))
    for name, (width, height) in SIZES.items():
        inputs = event_inputs(width, height)
        assert inputs.input_frame.shape == (height, width, 3) and inputs.input_frame.dtype == np.uint8
        assert not np.array_equal(inputs.input_frame, inputs.output_frame)
        size = len(cv2.imencode(".jpg", inputs.input_frame, [cv2.IMWRITE_JPEG_QUALITY, 95])[1])
        # Between a flat picture and noise: ~0.2–0.4 bytes per pixel at q95.
        assert 0.1 < size / (width * height) < 0.6, (name, size)
        assert len(inputs.detections) == 10
        assert list(inputs.detections.data["class_name"])


def test_reference_annotations_match_fastsend():
    detections = make_detections(50)
    ours = fastsend.object_detections_to_wire(detections)
    theirs = reference_detections_to_wire(detections)
    assert [d["class"] for d in ours] == [d["class"] for d in theirs]
    for a, b in zip(ours, theirs, strict=True):
        for key in ("x", "y", "width", "height", "confidence"):
            assert a[key] == pytest.approx(b[key], rel=1e-6)


def test_reference_body_has_the_shape_fastsend_sends(receiver_url):
    inputs = event_inputs(640, 480)
    sender = ReferenceSender(receiver_url)
    theirs = json.loads(json.dumps(sender.build(inputs.output_frame, inputs.input_frame, inputs.detections)))
    event = fastsend.Event.quality_check(result="fail")
    prepared = fastsend.prepare_event(
        event, inputs.output_frame, input_image=inputs.input_frame, object_detections=inputs.detections
    )
    ours = json.loads(b"".join(render_body(prepared, fastsend.JpegOptions())))
    assert theirs.keys() == ours.keys()
    assert theirs["images"][0].keys() == ours["images"][0].keys()
    assert theirs["event_data"] == ours["event_data"] and theirs["displayImagePosition"] == 0
    # Same encoder family and settings: the image sizes agree within a few percent.
    for key in ("base64Image", "inputBase64Image"):
        assert abs(len(theirs["images"][0][key]) / len(ours["images"][0][key]) - 1) < 0.05


def test_reference_sender_sync_and_fire_and_forget(receiver_url):
    inputs = event_inputs(640, 480)
    args = (inputs.output_frame, inputs.input_frame, inputs.detections)
    with ReferenceSender(receiver_url) as sender:
        assert int(sender.send(*args)) > 0
        futures = [sender.submit(*args) for _ in range(3)]
        sender.drain(timeout=10)
        assert all(int(f.result()) > 0 for f in futures)
    with running_receiver(529) as url, ReferenceSender(url) as failing:
        with pytest.raises(RuntimeError, match="529"):
            failing.send(*args)
        failing.submit(*args)
        with pytest.raises(RuntimeError, match="529"):
            failing.drain(timeout=10)


def test_cpu_meter_attributes_a_threads_cpu_to_its_role():
    from benchmarks.cpu import CpuMeter, thread_role

    assert thread_role("fastsend-encode-1") == "fastsend encoders"
    assert thread_role("enterprise-sink_0") == "enterprise pool"
    assert thread_role("Thread-7") == "other"

    def burn_on_an_encoder_thread(events: int) -> None:
        def spin() -> None:
            end = time.thread_time() + 0.05 * events
            while time.thread_time() < end:
                pass

        worker = threading.Thread(target=spin, name="fastsend-encode-9")
        worker.start()
        worker.join(timeout=10)

    meter = CpuMeter()
    meter.measure(burn_on_an_encoder_thread, 2)
    report = meter.report()
    assert report.events == 2 and report.encode_ms is None
    # The thread ended before the second reading: its CPU is the process's, not attributed to a live thread.
    assert report.process_ms >= 45
    assert report.by_role_ms["unattributed"] >= 45


def test_cpu_meter_takes_the_encode_and_snapshot_cpu_from_a_writers_stats():
    from benchmarks.cpu import CpuMeter

    stats = iter(
        [
            {"encode_ms_per_image": 2.0, "images_encoded": 10, "snapshot_ms_per_image": 1.0, "images_snapshotted": 10},
            {"encode_ms_per_image": 2.0, "images_encoded": 14, "snapshot_ms_per_image": 1.0, "images_snapshotted": 14},
        ]
    )
    meter = CpuMeter(lambda: next(stats))
    meter.measure(lambda events: None, 2)
    report = meter.report()
    assert report.encode_ms == pytest.approx(4.0) and report.snapshot_ms == pytest.approx(2.0)
    assert report.around_encoder_ms == pytest.approx(report.process_ms - 4.0)
