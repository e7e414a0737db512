"""``fastsend serve | send | demo | bundles``: the command line. This is the one place that prints."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import platform
import socket
import sqlite3
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO, cast

from fastsend import __version__
from fastsend.cli.bundles import add_bundles_command
from fastsend.cli.demo import run_demo
from fastsend.cli.parsing import (
    Parser,
    UsageError,
    base_url,
    bounded_int,
    nonnegative_number,
    parse,
    positive_seconds,
    read_key_file,
)
from fastsend.config import DEFAULT_REQUEST_TIMEOUT, DEFAULT_URL, INGESTION_API_KEY_ENV, warn_unknown_env
from fastsend.errors import FastsendError
from fastsend.events import (
    EVENT_SCHEMAS,
    SCHEMA_KEYWORDS,
    SOLUTION_MAX_CHARS,
    TEXT_MAX_CHARS,
    UINT64_MAX,
    Event,
    ValidationError,
)
from fastsend.imaging.jpeg import jpeg_backend
from fastsend.send.transport import KEY_HINT
from fastsend.send.writer import EventWriter
from fastsend.server import ReferenceService, run
from fastsend.server.options import add_service_arguments, config_from_arguments

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


class CommandFailed(FastsendError):
    """A command could not do its work for a reason outside its options' values (exit status 1)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fastsend`` with ``argv``: 0 done, 1 failed, 2 refused its usage. Each failure is one line on
    stderr naming the option and the cause; ``-v`` (anywhere) adds the traceback and INFO logs."""
    parser = _parser()
    try:
        args = parse(parser, argv)
    except UsageError as refused:
        print(f"error: {refused} ({refused.parser.prog} --help lists the options)", file=sys.stderr)
        return EXIT_INVALID
    if args.command is None:  # `fastsend` alone: what it can do, rather than an error
        parser.print_help()
        return EXIT_OK
    with _logs_shown(verbose=args.verbose):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    warn_unknown_env()  # serve too: a misspelt FASTSEND_SERVE_API_KEY would leave the service open
    try:
        return cast(int, args.command(args))
    except KeyboardInterrupt:
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - every failure is one line; -v shows where it came from
        if args.verbose:
            traceback.print_exc()
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_INVALID if isinstance(exc, ValidationError) else EXIT_FAILED


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, FastsendError):
        return str(exc)
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _NotReportedByResults(logging.Filter):
    """Leaves out the library's lines about events not delivered: the command prints each event's fate."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "fastsend_outcome", False)


@contextlib.contextmanager
def _logs_shown(*, verbose: bool) -> Iterator[None]:
    """WARNING and above on stderr (a misspelt FASTSEND_ variable, a service gone); INFO too with -v.

    The handler goes when the command ends, so ``main()`` called in a process leaves its logging as it was.
    """
    level = logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    if not verbose:
        handler.addFilter(_NotReportedByResults())
    root = logging.getLogger()
    kept_level = root.level
    root.addHandler(handler)
    root.setLevel(level)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(kept_level)


_METADATA_HELP = (
    "custom metadata, repeatable: KEY=VALUE sends VALUE as a string (zip=007 stays '007'); "
    "KEY:=JSON sends a JSON number, true or false (line:=3, ratio:=0.5, ok:=true)"
)


def _flag(keyword: str) -> str:
    return "--" + keyword.replace("_", "-")


# Each schema field's option, once: --external-id serves four schemas.
_SCHEMA_OPTIONS = dict.fromkeys(keyword for keywords in SCHEMA_KEYWORDS.values() for keyword in keywords)


def _parser() -> Parser:
    description = "Send vision events to an Event Ingestion Service (v2)."
    parser = Parser(prog="fastsend", description=description)
    _add_verbose(parser, False)
    version = f"fastsend {__version__} (Python {platform.python_version()})"
    parser.add_argument("--version", action="version", version=version)
    commands = parser.add_subparsers(metavar="{serve,send,demo,bundles}")
    parser.set_defaults(command=None)

    serve = commands.add_parser("serve", help="run the reference Event Ingestion Service")
    add_service_arguments(serve)
    serve.set_defaults(command=_serve)
    _add_send_parser(commands.add_parser("send", help="send one event and print its event_id"))
    demo = commands.add_parser("demo", help="stream a synthetic video as events (to an embedded service by default)")
    _add_demo_arguments(demo)
    add_bundles_command(commands)
    for command in commands.choices.values():
        _add_verbose(command, argparse.SUPPRESS)  # -v after the command too; SUPPRESS keeps one given before
        command.set_defaults(parser=command)
    return parser


def _add_verbose(parser: argparse.ArgumentParser, default: Any) -> None:
    if "-v" not in cast(Parser, parser).option_strings():
        help_text = "log at INFO level and show the traceback of a failure"
        parser.add_argument("-v", "--verbose", action="store_true", default=default, help=help_text)


def _add_send_parser(send: argparse.ArgumentParser) -> None:
    send.add_argument("--url", type=base_url, help=f"service base URL (default: FASTSEND_URL or {DEFAULT_URL})")
    send.add_argument(
        "--api-key-file",
        metavar="PATH",
        type=Path,
        help=f"read the service's API key from this file (surrounding whitespace dropped); without it the key is"
        f" taken from the {INGESTION_API_KEY_ENV} environment variable. Never on the command line: other users"
        " of the machine can read it (ps)",
    )
    send.add_argument("--image", required=True, type=Path, help="output image file (JPEG or PNG), sent as is")
    send.add_argument("--input-image", type=Path, help="original frame file (JPEG or PNG), sent as is")
    send.add_argument("--label", help=f"the output image's label: text, at most {TEXT_MAX_CHARS} characters")
    send.add_argument("--schema", required=True, choices=list(SCHEMA_KEYWORDS), help="the event's schema")
    for keyword in _SCHEMA_OPTIONS:
        schemas = [schema for schema, keywords in SCHEMA_KEYWORDS.items() if keyword in keywords]
        rule = EVENT_SCHEMAS[schemas[0]][SCHEMA_KEYWORDS[schemas[0]][keyword]]
        choices = getattr(rule, "choices", None)
        send.add_argument(
            _flag(keyword),
            type=int if keyword == "item_count" else str,
            choices=choices,
            help=f"{_accepted(rule)} (for --schema {', '.join(schemas)})",
        )
    send.add_argument("--solution", help=f"the use case's id: text, at most {SOLUTION_MAX_CHARS} characters")
    send.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE|KEY:=JSON", help=_METADATA_HELP)
    send.add_argument(
        "--timeout",
        type=positive_seconds,
        default=DEFAULT_REQUEST_TIMEOUT,
        help=f"seconds per attempt, above 0 (default {DEFAULT_REQUEST_TIMEOUT:g})",
    )
    send.add_argument(
        "--deadline", type=positive_seconds, default=30.0, help="seconds in all, retries included, above 0 (default 30)"
    )
    send.set_defaults(command=_send)


def _accepted(rule: Any) -> str:
    """What a schema field accepts, in words, from its rule in ``EVENT_SCHEMAS``."""
    choices = getattr(rule, "choices", None)
    if choices is not None:
        return "one of " + ", ".join(choices)
    max_chars = getattr(rule, "max_chars", None)
    if max_chars is None:
        return f"an integer from 0 to {UINT64_MAX}"
    pattern = getattr(rule, "pattern", None)
    return f"text, at most {max_chars} characters" + (f", matching {pattern}" if pattern else "")


def _add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--url", type=base_url, help="send to this service instead of an embedded one")
    demo.add_argument(
        "--frames", type=bounded_int(1, 1_000_000), default=300, help="events to send, 1 to 1000000 (default 300)"
    )
    demo.add_argument(
        "--width", type=bounded_int(32, 8192), default=1280, help="frame width in pixels, 32 to 8192 (default 1280)"
    )
    demo.add_argument(
        "--height", type=bounded_int(32, 8192), default=720, help="frame height in pixels, 32 to 8192 (default 720)"
    )
    demo.add_argument(
        "--fps", type=nonnegative_number, default=0.0, help="frames per second, ≥ 0 (default 0: as fast as possible)"
    )
    demo.add_argument(
        "--keep",
        action="store_true",
        help="then keep the embedded service running to browse the events in its viewer, until Ctrl-C",
    )
    demo.set_defaults(command=_demo)


# ---------------------------------------------------------------- serve


def _serve(args: argparse.Namespace) -> int:
    config = config_from_arguments(args)

    key = "API key required (X-API-Key)" if config.api_key else "no API key: every client that reaches it is answered"

    def announce(url: str) -> None:
        print(f"fastsend reference service on {url} (data in {config.data_dir}); {key}; Ctrl-C stops", flush=True)

    try:
        run(config, on_started=announce)
    except (OSError, sqlite3.Error) as exc:
        raise _serve_failure(args, exc) from exc
    return EXIT_OK


def _serve_failure(args: argparse.Namespace, exc: OSError | sqlite3.Error) -> CommandFailed:
    """Why the service could not start, named by the option to change."""
    if isinstance(exc, sqlite3.Error) or exc.filename is not None:  # the store's files and directories
        return CommandFailed(f"--data-dir: {args.data_dir!r} cannot hold the service's data ({_one_line(exc)})")
    where = f"{args.port} on {args.host}"
    if exc.errno == errno.EADDRINUSE:
        return CommandFailed(f"--port: {where} is in use by another process; choose another port, or 0 for a free one")
    if exc.errno == errno.EACCES:
        return CommandFailed(f"--port: {where} is not open to this user (ports below 1024 need privileges)")
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return CommandFailed(f"--host: {args.host!r} is not an address of this machine ({exc.strerror or exc})")
    return CommandFailed(f"the service could not start on {where}: {_one_line(exc)}")


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


# The keywords of EventWriter and send() that come from an option: their errors name the option typed.
_OPTIONS_OF_KEYWORDS = {
    "url": "--url",
    "api_key": "--api-key-file",
    "request_timeout": "--timeout",
    "deadline": "--deadline",
    "image": "--image",
    "input_image": "--input-image",
    "label": "--label",
}
_CLI_KEY_HINT = f"give the service's key with --api-key-file PATH or the {INGESTION_API_KEY_ENV} environment variable"


def _send(args: argparse.Namespace) -> int:
    event = _cli_event(args)
    image, input_image = _read(args.image, "--image"), _read(args.input_image, "--input-image")
    settings = {"api_key": read_key_file(args.api_key_file), "request_timeout": args.timeout, "deadline": args.deadline}
    try:
        with EventWriter(args.url, **settings) as writer:
            result = writer.send(event, image, input_image=input_image, label=args.label)
    except ValidationError as error:  # named by the option typed, not the library's keyword
        option = _OPTIONS_OF_KEYWORDS.get(error.field)
        raise error if option is None else error.renamed(option, keep_name=False) from None
    if result.error_status:
        print(f"error: {result.message.replace(KEY_HINT, _CLI_KEY_HINT)}", file=sys.stderr)
        return EXIT_FAILED
    print(result.event_id)
    return EXIT_OK


# ---------------------------------------------------------------- demo


def _demo(args: argparse.Namespace) -> int:
    if args.url:
        if args.keep:
            raise ValidationError("--keep", True, "keeps the embedded service; it cannot be used with --url")
        code = _run_demo(args, args.url, verify=None)
        print(f"viewer        {args.url}/")  # that service outlives the demo
        return code
    with tempfile.TemporaryDirectory(prefix="fastsend-demo-") as data_dir, ReferenceService(data_dir) as service:
        print(f"embedded reference service on {service.url} (data in {data_dir})")
        code = _run_demo(args, service.url, verify=service.get_event)
        if not args.keep:  # its viewer dies with it: no link to a page that is gone
            print("the embedded service stops now, with its data; run with --keep to browse the events in its viewer")
            return code
        print(f"viewer        {service.url}/   serving until Ctrl-C", flush=True)
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
