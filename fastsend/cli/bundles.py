"""``fastsend bundles send DIR``: deliver the vision event bundles in a directory, at least once.

Bundles written by either bundle block (``fastsend/vision_event_bundle@v1`` or Roboflow's
``roboflow_core/vision_event_bundle@v1``) go to a v2 Event Ingestion Service (``--url``, the key from
``EVENT_INGESTION_API_KEY``) or to Roboflow's Vision Events API (``--cloud``: uploads, then the event).
Either key may come from a file instead (``--api-key-file``), which keeps it out of ``ps``.

The directory is the state, so a run killed at any point is resumed by running again:

- a bundle stays where it is until the service has acknowledged it; only then is it moved into
  ``DIR/sent/`` (or deleted, with ``--delete``);
- a bundle the service refuses (or that is not a readable bundle) is moved into ``DIR/refused/`` with
  ``<name>.reason.txt`` beside it;
- one that could not be delivered this time (service unreachable, busy, misconfigured) stays for the
  next run.

A bundle sent again after a crash (acknowledged, not yet moved) carries the same ``eventId``: it is
the v2 request's ``Idempotency-Key`` and the cloud event's ``eventId``, so the service stores it once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from fastsend.cli.parsing import bounded_int, read_key_file
from fastsend.config import INGESTION_API_KEY_ENV
from fastsend.events import Event, ValidationError
from fastsend.integrations.bundles import BUNDLE_SUFFIX, Bundle, BundleError, read_bundle
from fastsend.integrations.vision_events import prepare_cloud_event, prepare_local_event
from fastsend.results import Cause, Result
from fastsend.send.cloud import CloudEventWriter
from fastsend.send.prepare import PreparedEvent
from fastsend.send.retry import RETRYABLE_STATUSES
from fastsend.send.wire import ANNOTATION_KEYS
from fastsend.send.writer import EventWriter

__all__ = ["Tally", "add_bundles_command", "deliver_bundles", "prepare_bundle"]

SENT_DIR, REFUSED_DIR = "sent", "refused"
DEFAULT_API_URL = "https://api.roboflow.com"
CLOUD_KEY_ENV = "ROBOFLOW_API_KEY"
EXIT_OK, EXIT_REFUSED, EXIT_UNSENT = 0, 2, 1
# The status an answer ended with, as the transports word it ("HTTP 422: …", "Status: 422. …").
_STATUS = re.compile(r"\b(?:HTTP|Status:) (\d{3})\b")
# Statuses that say the sender is set up wrong (URL, key): the bundle is fine, it waits for the next run.
_SENDER_STATUSES = frozenset({401, 403, 404, 405, 407})


@dataclasses.dataclass
class Tally:
    """What became of a run's bundles."""

    total: int = 0
    sent: int = 0
    refused: int = 0
    unsent: int = 0

    @property
    def done(self) -> int:
        return self.sent + self.refused + self.unsent


def add_bundles_command(commands: Any) -> None:
    """Register ``fastsend bundles send`` on the CLI's subcommands."""
    bundles = commands.add_parser("bundles", help="deliver vision event bundles written by the bundle blocks")
    actions = bundles.add_subparsers(metavar="{send}", help="send: deliver every bundle in DIR")
    send = actions.add_parser("send", help="deliver every bundle in DIR; acknowledged ones are moved to DIR/sent")
    send.add_argument("directory", type=Path, metavar="DIR", help="the bundle blocks' target_directory")
    where = send.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--url", help=f"base URL of a v2 Event Ingestion Service (key: --api-key-file or {INGESTION_API_KEY_ENV})"
    )
    where.add_argument(
        "--cloud", action="store_true", help="Roboflow's Vision Events API (--api-url; key: --api-key-file)"
    )
    send.add_argument(
        "--api-url", default=os.environ.get("API_BASE_URL", DEFAULT_API_URL), help="default: API_BASE_URL"
    )
    keys = send.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key-file",
        metavar="PATH",
        type=Path,
        help=f"read the key from this file (surrounding whitespace dropped): the Roboflow API key with --cloud,"
        f" the service's with --url. Without it: {CLOUD_KEY_ENV}, or {INGESTION_API_KEY_ENV} with --url",
    )
    keys.add_argument(
        "--api-key", help=f"with --cloud: the key itself (visible in ps; prefer --api-key-file or {CLOUD_KEY_ENV})"
    )
    send.add_argument("--solution", help="the use case of every bundle (overrides the one written in it)")
    send.add_argument("--delete", action="store_true", help="delete acknowledged bundles instead of moving them")
    send.add_argument(
        "--in-flight", type=bounded_int(1, 1024), default=8, help="bundles read and sent at once, 1 to 1024 (default 8)"
    )
    send.set_defaults(command=_send_bundles)


def _send_bundles(args: argparse.Namespace) -> int:
    if not args.directory.is_dir():
        raise ValidationError("DIR", str(args.directory), "must be a directory")
    writer: EventWriter
    if args.cloud:
        key = args.api_key or read_key_file(args.api_key_file) or os.environ.get(CLOUD_KEY_ENV)
        if not key:
            raise ValidationError(
                "--api-key-file", None, f"is required with --cloud (or --api-key, or set {CLOUD_KEY_ENV})"
            )
        writer = CloudEventWriter(args.api_url, api_key=key, request_timeout=30, overflow="block")
    else:
        if args.api_key is not None:
            raise ValidationError(
                "--api-key", "***", f"is for --cloud only: give the service's key with --api-key-file or"
                f" {INGESTION_API_KEY_ENV}"
            )  # fmt: skip
        writer = EventWriter(args.url, api_key=read_key_file(args.api_key_file), overflow="block")
    with writer:
        tally = deliver_bundles(
            args.directory, writer, cloud=args.cloud, solution=args.solution, delete=args.delete,
            in_flight=args.in_flight, progress=_progress_printer(),
        )  # fmt: skip
    print(
        f"{tally.sent} sent, {tally.refused} refused (in {args.directory / REFUSED_DIR}), {tally.unsent} left to send"
    )
    if tally.unsent:
        return EXIT_UNSENT
    return EXIT_REFUSED if tally.refused else EXIT_OK


def _progress_printer() -> Callable[[Tally, str], None]:
    live = sys.stderr.isatty()

    def show(tally: Tally, note: str) -> None:
        width = 30
        filled = width * tally.done // max(tally.total, 1)
        bar = "#" * filled + "." * (width - filled)
        line = f"[{bar}] {tally.done}/{tally.total} sent {tally.sent}, refused {tally.refused}"
        if note:
            print(("\r" if live else "") + f"{note}", file=sys.stderr)
        print(("\r" + line) if live else line, end="" if live else "\n", file=sys.stderr, flush=True)
        if live and tally.done == tally.total:
            print(file=sys.stderr)

    return show


def prepare_bundle(bundle: Bundle, *, cloud: bool, solution: str | None) -> PreparedEvent:
    """The event a bundle holds, ready for the writer; its ``eventId`` is the request's idempotency key."""
    payload = bundle.payload
    use_case = solution or payload.get("useCaseId")
    if cloud and not use_case:
        raise ValidationError("useCaseId", None, "is required by the cloud API: the bundle has none, pass --solution")
    event = Event(
        payload["eventType"],
        payload.get("eventData") or {},
        custom_metadata=payload.get("customMetadata") or None,
        solution=use_case,
        inference_timestamp=payload["timestamp"],
    )
    entry = payload["images"][0] if payload.get("images") else {}
    output, source = bundle.image(entry.get("file")), bundle.image(entry.get("inputFile"))
    annotations = {key: entry[key] for key in ANNOTATION_KEYS if key in entry}
    if cloud:
        return prepare_cloud_event(
            event, output_image=output, input_image=source, annotations=annotations, copy=False,
            event_id=bundle.event_id, reencode=False,
        )  # fmt: skip
    prepared = prepare_local_event(event, output_image=output, input_image=source, annotations=annotations, copy=False)
    return dataclasses.replace(prepared, idempotency_key=bundle.event_id)


def deliver_bundles(
    directory: Path,
    writer: EventWriter,
    *,
    cloud: bool,
    solution: str | None = None,
    delete: bool = False,
    in_flight: int = 8,
    progress: Callable[[Tally, str], None] = lambda tally, note: None,
) -> Tally:
    """Send every ``*.tar.gz`` of ``directory`` (oldest name first); each settled as the module says."""
    paths = sorted(p for p in directory.glob(f"*{BUNDLE_SUFFIX}") if not p.name.startswith(".") and p.is_file())
    tally = Tally(total=len(paths))
    window: deque[tuple[Path, Future[Result]]] = deque()
    for path in paths:
        try:
            prepared = prepare_bundle(read_bundle(path), cloud=cloud, solution=solution)
        except (BundleError, ValidationError, KeyError, OSError) as exc:
            if isinstance(exc, ValidationError) and exc.field == "useCaseId":
                tally.unsent += 1
                progress(tally, f"{path.name}: left to send: {exc}")
                continue
            _set_aside(path, f"not a deliverable bundle: {exc}")
            tally.refused += 1
            progress(tally, f"{path.name}: refused: {exc}")
            continue
        window.append((path, writer.submit_prepared(prepared)))
        while len(window) >= in_flight:
            _settle(*window.popleft(), tally, delete, progress)
    while window:
        _settle(*window.popleft(), tally, delete, progress)
    return tally


def _settle(
    path: Path, future: Future[Result], tally: Tally, delete: bool, progress: Callable[[Tally, str], None]
) -> None:
    result = future.result()
    if not result.error_status:
        _acknowledged(path, delete)
        tally.sent += 1
        progress(tally, "")
        return
    if _refused(result):
        _set_aside(path, result.message)
        tally.refused += 1
        progress(tally, f"{path.name}: refused: {result.message}")
        return
    tally.unsent += 1
    progress(tally, f"{path.name}: left to send: {result.message}")


def _refused(result: Result) -> bool:
    """Whether the service said no to this bundle itself (a 4xx other than the sender's own mistakes)."""
    if result.cause in (Cause.INVALID_EVENT, Cause.INVALID_REQUEST):
        return True
    found = _STATUS.search(result.message) if result.cause is Cause.HTTP_STATUS else None
    if found is None:
        return False
    status = int(found.group(1))
    return 400 <= status < 500 and status not in RETRYABLE_STATUSES and status not in _SENDER_STATUSES


def _acknowledged(path: Path, delete: bool) -> None:
    if delete:
        path.unlink()
    else:
        _move(path, path.parent / SENT_DIR)
    _fsync_directory(path.parent)


def _set_aside(path: Path, reason: str) -> None:
    target = path.parent / REFUSED_DIR
    _move(path, target)
    (target / f"{path.name}.reason.txt").write_text(reason + "\n", encoding="utf-8")
    _fsync_directory(path.parent)


def _move(path: Path, directory: Path) -> None:
    directory.mkdir(exist_ok=True)
    os.replace(path, directory / path.name)
    _fsync_directory(directory)


def _fsync_directory(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
