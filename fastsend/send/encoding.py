"""Encoding: JPEG + base64 of an event's images, spliced into its finished request.

How an event's images are encoded is decided in one place, ``plan_of``:

- ``WHOLE``: one encoder takes the event (no image, one raw image, one image given as both,
  or images that arrived encoded);
- ``PAIR``: one encoder takes both frames of one size and format, the output's JPEG reusing
  the input's unchanged segments (``fastsend.imaging.pair``); when that would not pay, the
  event is split as ``HALVES``;
- ``HALVES``: two raw images on two encoders at once (always when an image has a JPEG quality
  of its own, as cloud uploads do); whichever finishes last splices the body.

A synchronous send encodes before it is queued, on the caller's thread (``encode_now``), with
a helper thread for the second image of ``HALVES`` and ``PAIR`` alike: the caller waits for one
encode, not two. libjpeg-turbo releases the GIL, so the threads run in parallel. Every body is
made by ``_encode_here`` (images on this thread, as the plan says) and ``_request`` (the splice).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor

import pybase64

from fastsend.imaging.jpeg import EncodedImage, ImageSource, JpegOptions, RawImage, release_frame, to_base64
from fastsend.imaging.pair import encode_pair, reuse_applies
from fastsend.results import Cause, Outcome
from fastsend.send.job import Job
from fastsend.send.ledger import Ledger
from fastsend.send.prepare import PreparedEvent
from fastsend.send.wire import Request, splice

__all__ = ["EncodeFinished", "Encoders", "Plan", "plan_of", "render_body"]

logger = logging.getLogger("fastsend")

# Called once per job with None (its request is built, or its caller withdrew it) or why it failed.
EncodeFinished = Callable[[Job, "Outcome | None"], None]
# Counts an encode's CPU seconds and its number of images (the ledger's ``count_encode``).
EncodeCounter = Callable[[float, int], None]

_OUTPUT, _INPUT = "output", "input"


class Plan(enum.Enum):
    """How an event's images are encoded (see the module's docstring)."""

    WHOLE = "whole"
    PAIR = "pair"
    HALVES = "halves"


def plan_of(prepared: PreparedEvent, options: JpegOptions) -> Plan:
    """The one place where an event's encoding plan is decided."""
    output, input = prepared.output, prepared.input
    if not isinstance(output, RawImage) or not isinstance(input, RawImage) or input is output:
        return Plan.WHOLE
    own_quality = output.quality is not None or input.quality is not None
    return Plan.PAIR if not own_quality and reuse_applies(output, input, options) else Plan.HALVES


def _encode_one(image: ImageSource, options: JpegOptions, count: EncodeCounter | None) -> bytes:
    """One image as base64 JPEG (an encoded one as it is, unless it asks for a quality), its CPU time counted."""
    if isinstance(image, EncodedImage) and image.quality is None:
        return image.base64
    started = time.thread_time()
    encoded = to_base64(image, options)
    if count is not None:
        count(time.thread_time() - started, 1)
    return encoded


def _encode_pair(
    prepared: PreparedEvent, options: JpegOptions, count: EncodeCounter | None
) -> tuple[bytes, bytes] | None:
    """Both frames as base64, the output reusing the input's segments; None when that would not pay."""
    assert isinstance(prepared.output, RawImage) and isinstance(prepared.input, RawImage)
    started = time.thread_time()
    try:
        pair = encode_pair(prepared.output, prepared.input, options)
    except Exception:  # reuse only saves time: the usual encoders have the last word
        logger.warning("JPEG segment reuse failed; encoding both images as usual", exc_info=True)
        return None
    if pair is None:
        return None
    if count is not None:
        count(time.thread_time() - started, 2)
    output, input = (pybase64.b64encode(jpeg) for jpeg in pair)
    return output, input


def _encode_here(
    prepared: PreparedEvent, options: JpegOptions, count: EncodeCounter | None = None
) -> tuple[bytes | None, bytes | None]:
    """The event's images as base64 (None for none), all encoded on this thread as its plan says."""
    if prepared.output is None:
        return None, None
    if plan_of(prepared, options) is Plan.PAIR:
        pair = _encode_pair(prepared, options, count)
        if pair is not None:
            return pair
    output = _encode_one(prepared.output, options, count)
    if prepared.input is None:
        return output, None
    return output, output if prepared.input is prepared.output else _encode_one(prepared.input, options, count)


def _request(prepared: PreparedEvent, output: bytes | None, input: bytes | None) -> Request:
    """The finished request: the images spliced into the event's envelope."""
    return Request.of(prepared.idempotency_key, splice(prepared.envelope, output, input))


def render_body(prepared: PreparedEvent, options: JpegOptions) -> list[bytes]:
    """The body of ``prepared`` as chunks, its images encoded on this thread as they would be when queued."""
    return list(_request(prepared, *_encode_here(prepared, options)).chunks)


@dataclasses.dataclass(slots=True, eq=False)
class _Halves:
    """The two images of one event while two encoders work on them."""

    left: int = 2
    output: bytes | None = None
    input: bytes | None = None
    error: Outcome | None = None


class Encoders:
    """A pool of encoder threads, plus the caller-side encoding of synchronous sends."""

    def __init__(self, options: JpegOptions, threads: int, ledger: Ledger, finished: EncodeFinished) -> None:
        self._options = options
        self._threads = threads
        self._ledger = ledger
        self._finished = finished
        # (job, WHOLE or PAIR, None) or, for each image of HALVES, (job, which image, the two halves).
        self._tasks: queue.SimpleQueue[tuple[Job, Plan | str, _Halves | None] | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._sync_pool: ThreadPoolExecutor | None = None
        self._stopped = False

    def _count(self, seconds: float, images: int) -> None:
        self._ledger.count_encode(seconds, images=images)

    # ------------------------------------------------------------ background encoders

    def start(self, job: Job) -> None:
        """Encode ``job`` on the encoder threads, as its plan says, then report it to ``finished``."""
        assert job.prepared is not None
        plan = plan_of(job.prepared, self._options)
        if plan is Plan.HALVES:
            self._split(job)
        else:
            self._tasks.put((job, plan, None))

    def _split(self, job: Job) -> None:
        halves = _Halves()
        self._tasks.put((job, _OUTPUT, halves))
        self._tasks.put((job, _INPUT, halves))

    def start_workers(self) -> None:
        """Start the encoder threads (once; not after ``stop``)."""
        with self._lock:
            if self._workers or self._stopped:
                return
            for index in range(self._threads):
                worker = threading.Thread(target=self._work, name=f"fastsend-encode-{index}", daemon=True)
                worker.start()
                self._workers.append(worker)

    def _work(self) -> None:
        while (task := self._tasks.get()) is not None:
            job, part, halves = task
            try:
                if part is Plan.PAIR:
                    self._encode_as_pair(job)
                elif halves is None or isinstance(part, Plan):
                    self._finished(job, self._encode_whole(job))
                elif self._encode_half(job, part, halves):
                    self._finished(job, halves.error)
            except Exception as exc:  # a bug here must still settle the event, loudly
                logger.exception("unexpected error while encoding an event")
                self._finished(job, Outcome(Cause.INTERNAL_ERROR, f"internal error: {exc!r}"))

    def _encode_whole(self, job: Job) -> Outcome | None:
        if job.ticket.settled:  # withdrawn while it waited
            job.release_frames()
            return None
        try:
            self.build_request(job)
        except Exception as exc:  # noqa: BLE001 - any encoder failure is the event's Result
            logger.warning("encoding failed: %s", exc)
            return Outcome(Cause.ENCODE_ERROR, f"encoding failed: {exc}")
        return None

    def _encode_as_pair(self, job: Job) -> None:
        """Both images on this thread, the output reusing the input's segments; two halves if that would not pay."""
        prepared = job.prepared
        assert prepared is not None
        if job.ticket.settled:  # withdrawn while it waited
            self._finished(job, self._encode_whole(job))
            return
        pair = _encode_pair(prepared, self._options, self._count)
        if pair is None:
            self._split(job)
            return
        job.request = _request(prepared, *pair)
        job.release_frames()
        self._finished(job, None)

    def _encode_half(self, job: Job, part: str, halves: _Halves) -> bool:
        """Encode one of two images; True for the thread that finished the last one."""
        prepared = job.prepared
        assert prepared is not None
        source = prepared.output if part == _OUTPUT else prepared.input
        assert source is not None
        encoded = None
        error: Exception | None = None
        if not job.ticket.settled and halves.error is None:
            try:
                encoded = _encode_one(source, self._options, self._count)
            except Exception as exc:  # noqa: BLE001 - any encoder failure is the event's Result
                error = exc
        release_frame(source)
        with self._lock:
            if error is not None and halves.error is None:
                logger.warning("encoding failed: %s", error)
                halves.error = Outcome(Cause.ENCODE_ERROR, f"encoding failed: {error}")
            if part == _OUTPUT:
                halves.output = encoded
            else:
                halves.input = encoded
            halves.left -= 1
            if halves.left:
                return False
        if halves.error is None and not job.ticket.settled:
            assert halves.output is not None
            job.request = _request(prepared, halves.output, halves.input)
        job.prepared = None  # each half gave its own frame back
        return True

    def stop(self) -> None:
        """End the encoder threads once they have finished what they hold."""
        with self._lock:
            self._stopped = True
            workers, self._workers = self._workers, []
            sync_pool, self._sync_pool = self._sync_pool, None
        for _ in workers:
            self._tasks.put(None)
        for worker in workers:
            if worker is not threading.current_thread():  # close() from a Future's callback on an encoder
                worker.join(timeout=5)
        if sync_pool is not None:
            sync_pool.shutdown(wait=False)

    # ------------------------------------------------------------ on the calling thread

    def build_request(self, job: Job) -> None:
        """Encode ``job``'s images on this thread and set its request; frames are released either way."""
        prepared = job.prepared
        assert prepared is not None
        try:
            job.request = _request(prepared, *_encode_here(prepared, self._options, self._count))
        finally:
            job.release_frames()

    def encode_now(self, prepared: PreparedEvent) -> PreparedEvent:
        """``prepared`` with its raw images encoded before it is queued: the output on a helper
        thread while this thread does the input, so the caller's arrays need no snapshot."""
        two = plan_of(prepared, self._options) is not Plan.WHOLE
        helper = self._sync_encoder() if two else None
        pending = None
        if helper is not None and prepared.output is not None:
            try:
                pending = helper.submit(_encode_one, prepared.output, self._options, self._count)
            except RuntimeError:  # shut down by a close() meanwhile: encode both here
                pending = None
        try:
            if pending is None:
                output, input = _encode_here(prepared, self._options, self._count)
            else:
                assert prepared.input is not None
                try:
                    input = _encode_one(prepared.input, self._options, self._count)
                except BaseException:
                    futures.wait([pending])  # the helper must be done with the caller's frame before this returns
                    raise
                output = pending.result()
            if output is None:
                return prepared
            if input is None:
                return dataclasses.replace(prepared, output=EncodedImage(output))
            encoded_input = EncodedImage(input)
            same = prepared.input is prepared.output
            return dataclasses.replace(
                prepared, output=encoded_input if same else EncodedImage(output), input=encoded_input
            )
        finally:
            prepared.release_frames()

    def _sync_encoder(self) -> ThreadPoolExecutor | None:
        with self._lock:
            if self._stopped:
                return None
            if self._sync_pool is None:
                self._sync_pool = ThreadPoolExecutor(self._threads, thread_name_prefix="fastsend-sync-encode")
            return self._sync_pool
