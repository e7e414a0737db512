"""Encoding: JPEG + base64 of an event's images, spliced into its finished request.

Encoder threads take jobs that hold an in-flight slot. An event with two raw images
(output and input) is encoded on two encoders at once; whichever finishes last splices
the body. libjpeg-turbo releases the GIL, so the threads run in parallel. When the two
frames have one size and format, one encoder tries them as a pair first: the output's
JPEG then reuses the input's unchanged segments (``jpeg_pair``).
"""

from __future__ import annotations

import dataclasses
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

__all__ = ["EncodeFinished", "Encoders"]

logger = logging.getLogger("fastsend")

# Called once per job with None (its request is built, or its caller withdrew it) or why it failed.
EncodeFinished = Callable[[Job, "Outcome | None"], None]

_OUTPUT, _INPUT, _WHOLE, _PAIR = "output", "input", "whole", "pair"


def _two_raw_images(prepared: PreparedEvent) -> bool:
    return (
        isinstance(prepared.output, RawImage)
        and isinstance(prepared.input, RawImage)
        and prepared.input is not prepared.output
    )


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
        self._tasks: queue.SimpleQueue[tuple[Job, str, _Halves | None] | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._sync_pool: ThreadPoolExecutor | None = None
        self._stopped = False

    # ------------------------------------------------------------ background encoders

    def start(self, job: Job) -> None:
        """Encode ``job`` on the encoder threads, then report it to ``finished``."""
        prepared = job.prepared
        assert prepared is not None
        if _two_raw_images(prepared):
            assert isinstance(prepared.output, RawImage) and isinstance(prepared.input, RawImage)
            own_quality = prepared.output.quality is not None or prepared.input.quality is not None
            if not own_quality and reuse_applies(prepared.output, prepared.input, self._options):
                self._tasks.put((job, _PAIR, None))
            else:
                self._split(job)
        else:
            self._tasks.put((job, _WHOLE, None))

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
                if part == _PAIR:
                    self._encode_pair(job)
                elif halves is None:
                    self._finished(job, self._encode_whole(job))
                elif self._encode_half(job, part, halves):
                    self._finished(job, halves.error)
            except Exception as exc:  # a bug here must still settle the event, loudly
                logger.exception("unexpected error while encoding an event")
                self._finished(job, Outcome(Cause.INTERNAL_ERROR, f"internal error: {exc!r}"))

    def _encode_whole(self, job: Job) -> Outcome | None:
        prepared = job.prepared
        assert prepared is not None
        if job.ticket.settled:  # withdrawn while it waited
            job.release_frames()
            return None
        try:
            self.build_request(job)
        except Exception as exc:  # noqa: BLE001 - any encoder failure is the event's Result
            logger.warning("encoding failed: %s", exc)
            return Outcome(Cause.ENCODE_ERROR, f"encoding failed: {exc}")
        return None

    def _encode_pair(self, job: Job) -> None:
        """Both images on this thread, the output reusing the input's segments; two halves if that would not pay."""
        prepared = job.prepared
        assert prepared is not None and isinstance(prepared.output, RawImage) and isinstance(prepared.input, RawImage)
        if job.ticket.settled:  # withdrawn while it waited
            self._finished(job, self._encode_whole(job))
            return
        started = time.thread_time()
        try:
            pair = encode_pair(prepared.output, prepared.input, self._options)
        except Exception:  # reuse only saves time: the usual encoders have the last word
            logger.warning("JPEG segment reuse failed; encoding both images as usual", exc_info=True)
            pair = None
        if pair is None:
            self._split(job)
            return
        self._ledger.count_encode(time.thread_time() - started, images=2)
        output, input = (pybase64.b64encode(jpeg) for jpeg in pair)
        job.request = Request.of(prepared.idempotency_key, splice(prepared.envelope, output, input))
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
                encoded = self.encode_counted(source)
            except Exception as exc:  # noqa: BLE001 - any encoder failure is the event's Result
                error = exc
        release_frame(source)
        with self._lock:
            if error is not None and halves.error is None:
                logger.warning("encoding failed: %s", error)
                halves.error = Outcome(Cause.ENCODE_ERROR, f"encoding failed: {error}")
            if part == _OUTPUT:
                halves.output = encoded.base64 if encoded is not None else None
            else:
                halves.input = encoded.base64 if encoded is not None else None
            halves.left -= 1
            if halves.left:
                return False
        if halves.error is None and not job.ticket.settled:
            assert halves.output is not None
            job.request = Request.of(prepared.idempotency_key, splice(prepared.envelope, halves.output, halves.input))
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
            encoded = self._encode_here(prepared)
            chunks = splice(encoded.envelope, _b64_or_none(encoded.output), _b64_or_none(encoded.input))
            job.request = Request.of(prepared.idempotency_key, chunks)
        finally:
            job.release_frames()

    def encode_now(self, prepared: PreparedEvent) -> PreparedEvent:
        """``prepared`` with its raw images encoded before it is queued: the output on a helper
        thread while this thread does the input, so the caller's arrays need no snapshot."""
        helper = self._sync_encoder() if _two_raw_images(prepared) else None
        pending = None
        if helper is not None:
            assert prepared.output is not None
            try:
                pending = helper.submit(self.encode_counted, prepared.output)
            except RuntimeError:  # shut down by a close() meanwhile: encode both here
                pending = None
        try:
            if pending is None:
                return self._encode_here(prepared)
            try:
                assert prepared.input is not None
                encoded_input = self.encode_counted(prepared.input)
            except BaseException:
                futures.wait([pending])  # the helper must be done with the caller's frame before this returns
                raise
            return dataclasses.replace(prepared, output=pending.result(), input=encoded_input)
        finally:
            prepared.release_frames()

    def _encode_here(self, prepared: PreparedEvent) -> PreparedEvent:
        if prepared.output is None:  # an event without images: nothing to encode
            return prepared
        output = self.encode_counted(prepared.output)
        if prepared.input is None:
            return dataclasses.replace(prepared, output=output)
        source = output if prepared.input is prepared.output else self.encode_counted(prepared.input)
        return dataclasses.replace(prepared, output=output, input=source)

    def encode_counted(self, image: ImageSource) -> EncodedImage:
        """One image as base64 JPEG (already encoded ones as they are), its CPU time counted."""
        if isinstance(image, EncodedImage):
            return image
        started = time.thread_time()
        encoded = to_base64(image, self._options)
        self._ledger.count_encode(time.thread_time() - started)
        return EncodedImage(encoded)

    def _sync_encoder(self) -> ThreadPoolExecutor | None:
        with self._lock:
            if self._stopped:
                return None
            if self._sync_pool is None:
                self._sync_pool = ThreadPoolExecutor(self._threads, thread_name_prefix="fastsend-sync-encode")
            return self._sync_pool


def _b64_or_none(image: ImageSource | None) -> bytes | None:
    if image is None:
        return None
    assert isinstance(image, EncodedImage)
    return image.base64
