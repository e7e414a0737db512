"""``fastsend serve | send | demo | bundles``: the command line. This is the one place that prints."""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO, cast

from fastsend import __version__
from fastsend.cli.bundles import add_bundles_command
from fastsend.cli.demo import run_demo
from fastsend.events import SCHEMA_KEYWORDS, Event, ValidationError
from fastsend.imaging.jpeg import jpeg_backend
from fastsend.send.writer import EventWriter
from fastsend.server import ReferenceService, run
from fastsend.server.options import add_service_arguments, config_from_arguments

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `fastsend` alone: what it can do, rather than an error
        parser.print_help()
        return EXIT_OK
    level = logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # send and demo print what became of each event; the library's warnings would say it a second time.
        logging.getLogger("fastsend").setLevel(logging.ERROR)
        logging.getLogger("fastsend.server").setLevel(logging.WARNING)
    try:
        return cast(int, args.command(args))
    except ValidationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return EXIT_FAILED


_METADATA_HELP = (
    "custom metadata, repeatable: KEY=VALUE sends VALUE as a string (zip=007 stays '007'); "
    "KEY:=JSON sends a JSON number, true or false (line:=3, ratio:=0.5, ok:=true)"
)


def _flag(keyword: str) -> str:
    return "--" + keyword.replace("_", "-")


# Each schema field's option, once: --external-id serves four schemas.
_SCHEMA_OPTIONS = dict.fromkeys(keyword for keywords in SCHEMA_KEYWORDS.values() for keyword in keywords)


def _parser() -> argparse.ArgumentParser:
    description = "Send vision events to an Event Ingestion Service (v2)."
    parser = argparse.ArgumentParser(prog="fastsend", description=description)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    version = f"fastsend {__version__} (Python {platform.python_version()})"
    parser.add_argument("--version", action="version", version=version)
    commands = parser.add_subparsers(metavar="{serve,send,demo,bundles}")
    parser.set_defaults(command=None)

    serve = commands.add_parser("serve", help="run the reference Event Ingestion Service")
    add_service_arguments(serve)
    serve.set_defaults(command=_serve)

    send = commands.add_parser("send", help="send one event and print its event_id")
    send.add_argument("--url", help="service base URL (default: FASTSEND_URL or http://localhost:8001)")
    send.add_argument("--image", required=True, type=Path, help="output image file (JPEG or PNG), sent as is")
    send.add_argument("--input-image", type=Path, help="original frame file (JPEG or PNG)")
    send.add_argument("--label")
    send.add_argument("--schema", required=True, choices=list(SCHEMA_KEYWORDS))
    for keyword in _SCHEMA_OPTIONS:
        schemas = ", ".join(schema for schema, keywords in SCHEMA_KEYWORDS.items() if keyword in keywords)
        send.add_argument(_flag(keyword), type=int if keyword == "item_count" else str, help=f"for --schema {schemas}")
    send.add_argument("--solution")
    send.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE|KEY:=JSON", help=_METADATA_HELP)
    send.add_argument("--timeout", type=float, default=5.0, help="seconds per attempt")
    send.add_argument("--deadline", type=float, default=30.0, help="seconds in all, retries included")
    send.set_defaults(command=_send)

    demo = commands.add_parser("demo", help="stream a synthetic video as events (to an embedded service by default)")
    demo.add_argument("--url", help="send to this service instead of an embedded one")
    demo.add_argument("--frames", type=int, default=300)
    demo.add_argument("--width", type=int, default=1280)
    demo.add_argument("--height", type=int, default=720)
    demo.add_argument("--fps", type=float, default=0.0, help="frames per second (0: as fast as possible)")
    demo.add_argument(
        "--keep", action="store_true", help="keep the embedded service running to browse the events (Ctrl-C stops)"
    )
    demo.set_defaults(command=_demo)

    add_bundles_command(commands)
    return parser


# ---------------------------------------------------------------- serve


def _serve(args: argparse.Namespace) -> int:
    config = config_from_arguments(args)

    def announce(url: str) -> None:
        print(f"fastsend reference service on {url} (data in {config.data_dir}); Ctrl-C stops", flush=True)

    run(config, on_started=announce)
    return EXIT_OK


# ---------------------------------------------------------------- send


def _metadata_pair(pair: str) -> tuple[str, Any]:
    """``KEY=VALUE`` → a string; ``KEY:=JSON`` → the JSON value (HTTPie's convention)."""
    key, sep, value = pair.partition("=")
    if not sep:
        raise ValidationError("--metadata", pair, "must be KEY=VALUE (a string) or KEY:=JSON (a number, true or false)")
    if not key.endswith(":"):  # a metadata key has no ':' of its own, so ':=' is unambiguous
        return key, value
    try:
        return key[:-1], json.loads(value)
    except ValueError as exc:
        rule = f"must hold JSON after := (a number, true or false; {exc}); KEY=VALUE sends VALUE as a string"
        raise ValidationError("--metadata", pair, rule) from None


def _metadata(pairs: list[str]) -> dict[str, Any] | None:
    return dict(_metadata_pair(pair) for pair in pairs) if pairs else None


def _cli_event(args: argparse.Namespace) -> Event:
    """The event the options describe; an option the schema does not take is an error, not ignored."""
    schema_keywords = SCHEMA_KEYWORDS[args.schema]
    for keyword in _SCHEMA_OPTIONS:
        value = getattr(args, keyword)
        if value is not None and keyword not in schema_keywords:
            takes = ", ".join(_flag(name) for name in schema_keywords)
            raise ValidationError(_flag(keyword), value, f"is not a field of {args.schema} (it takes {takes})")
    fields = {keyword: getattr(args, keyword) for keyword in schema_keywords}
    try:
        build = getattr(Event, args.schema)
        return cast(Event, build(**fields, custom_metadata=_metadata(args.metadata), solution=args.solution))
    except ValidationError as error:
        if error.field in fields or error.field == "solution":
            raise error.renamed(_flag(error.field)) from None
        if error.field.startswith("custom_metadata"):
            raise error.renamed("--metadata") from None
        raise


def _read(path: Path | None, flag: str) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValidationError(flag, str(path), f"must be a readable file ({exc.strerror})") from None


_SEND_OPTIONS = {"output_image": "--image", "input_image": "--input-image", "label": "--label"}


def _send(args: argparse.Namespace) -> int:
    event = _cli_event(args)
    image, input_image = _read(args.image, "--image"), _read(args.input_image, "--input-image")
    with EventWriter(args.url, request_timeout=args.timeout, deadline=args.deadline) as writer:
        try:
            result = writer.send(event, image, input_image=input_image, label=args.label)
        except ValidationError as error:  # named by the option typed, not the keyword of send()
            option = _SEND_OPTIONS.get(error.field)
            raise error if option is None else error.renamed(option) from None
    if result.error_status:
        print(f"error: {result.message}", file=sys.stderr)
        return EXIT_FAILED
    print(result.event_id)
    return EXIT_OK


# ---------------------------------------------------------------- demo


def _demo(args: argparse.Namespace) -> int:
    if args.url:
        if args.keep:
            raise ValidationError("--keep", True, "keeps the embedded service; it cannot be used with --url")
        code = _run_demo(args, args.url, verify=None)
        print(f"viewer        {args.url.rstrip('/')}/")
        return code
    with tempfile.TemporaryDirectory(prefix="fastsend-demo-") as data_dir, ReferenceService(data_dir) as service:
        print(f"embedded reference service on {service.url} (data in {data_dir})")
        code = _run_demo(args, service.url, verify=service.get_event)
        print(f"viewer        {service.url}/")
        if args.keep:
            print("keeping the service running to browse the events; Ctrl-C stops it", flush=True)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                print()
        return code


def _run_demo(args: argparse.Namespace, url: str, verify: Any) -> int:
    size = f"{args.width}×{args.height}"
    print(f"streaming {args.frames} frames of {size} (output + input image, JPEG via {jpeg_backend()})")
    # block: the demo shows throughput with every frame delivered; a live camera would rather drop_oldest.
    with EventWriter(url, overflow="block") as writer:
        progress = _progress(args.frames)
        summary = run_demo(
            writer, frames=args.frames, width=args.width, height=args.height, fps=args.fps, on_progress=progress
        )
    stats = summary.stats
    print(f"events        {summary.events} in {summary.seconds:.2f}s = {summary.events_per_second:.1f} events/s")
    counts = f"failed {stats['failed']}   dropped {stats['dropped']}   retries {stats['retried']}"
    print(f"acknowledged  {len(summary.acknowledged)}   {counts}")
    print(f"latency       submit→201 {_latencies(stats)}")
    print(f"bytes sent    {stats['bytes_sent'] / 1e6:.1f} MB   encode {stats['encode_ms_per_image']:.2f} ms/image")
    for message, count in summary.failures.items():
        print(f"  {count} × {message}")
    if verify is None:
        return EXIT_OK if not summary.failures else EXIT_FAILED
    missing = [event_id for event_id in summary.acknowledged if verify(event_id) is None]
    found = len(summary.acknowledged) - len(missing)
    print(f"verified      {found}/{len(summary.acknowledged)} acknowledged events are in the service's database")
    return EXIT_OK if not missing and not summary.failures else EXIT_FAILED


def _latencies(stats: dict[str, Any]) -> str:
    if not stats["sent"]:  # no acknowledgement, no latency: 0.0 ms would read as a measurement
        return "p50 —   p95 —   p99 —"
    return "   ".join(f"{name} {stats[f'latency_{name}_ms']:.1f} ms" for name in ("p50", "p95", "p99"))


def _progress(total: int, stream: TextIO | None = None) -> Callable[[int, int, float], None]:
    """A bar redrawn in place on a terminal; elsewhere (a pipe, a log file) a plain line at each quarter."""
    out = stream or sys.stdout
    return _progress_bar(total, out) if out.isatty() else _progress_lines(total, out)


def _progress_bar(total: int, out: TextIO, width: int = 30) -> Callable[[int, int, float], None]:
    last_drawn = 0.0
    finished = False

    def show(done: int, failed: int, elapsed: float) -> None:
        nonlocal last_drawn, finished
        now = time.perf_counter()
        if finished or (now - last_drawn < 0.1 and done < total):
            return
        last_drawn, finished = now, done >= total
        filled = int(width * done / total) if total else width
        rate = done / elapsed if elapsed else 0.0
        bar = f"[{'#' * filled}{'.' * (width - filled)}]"
        end = "\n" if finished else ""
        out.write(f"\r{bar} {done}/{total} events  {rate:6.1f}/s  failures {failed}{end}")
        out.flush()

    return show


def _progress_lines(total: int, out: TextIO, steps: int = 4) -> Callable[[int, int, float], None]:
    shown_step = 0

    def show(done: int, failed: int, elapsed: float) -> None:
        nonlocal shown_step
        step = steps * done // total if total else steps
        if step <= shown_step:
            return
        shown_step = step
        rate = done / elapsed if elapsed else 0.0
        out.write(f"progress      {done}/{total} events   {rate:.1f}/s   failures {failed}\n")
        out.flush()

    return show


if __name__ == "__main__":
    sys.exit(main())
