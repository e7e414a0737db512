"""The service's command-line options, shared by ``fastsend serve`` and ``python -m fastsend.server``.

The API key may come from ``--api-key``, ``--api-key-file`` or the
``FASTSEND_SERVE_API_KEY`` environment variable, in that order; the last two
keep it out of the process's command line, which other users see (``ps``,
``/proc/<pid>/cmdline``). An empty key is refused: a service without a key
is one started without any of the three.

The limits on a body: ``--max-body-bytes`` (64 MiB), ``--max-image-pixels``
(50 000 000 an image may declare), ``--max-annotations`` (1,000 per list, as
Roboflow's bundle format), ``--max-points`` (1,000 per polygon, and
keypoints per detection) and ``--max-total-points`` (100,000 polygon points
and keypoints in all). The last three are checked on a body's bytes before
it is parsed, so a hostile body cannot make parsing cost more than some
50 MB beyond about three times its size.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from pathlib import Path

from fastsend.events import ValidationError
from fastsend.server.app import DEFAULT_BODY_BUDGET_BYTES, DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY_BYTES
from fastsend.server.connections import DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS
from fastsend.server.faults import Faults
from fastsend.server.service import DEFAULT_PORT, ServiceConfig
from fastsend.server.validation import (
    DEFAULT_MAX_ANNOTATIONS,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_POINTS,
    DEFAULT_MAX_TOTAL_POINTS,
)

__all__ = ["API_KEY_ENV", "DEFAULT_DATA_DIR", "add_service_arguments", "config_from_arguments"]

API_KEY_ENV = "FASTSEND_SERVE_API_KEY"
DEFAULT_DATA_DIR = "fastsend-data"
_EMPTY_KEY = "must not be empty: an empty key would let anyone in; leave the key out to run without one"


def add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """Add host, port, storage, auth, capacity, limit and fault-injection options to ``parser``."""
    _add_place_arguments(parser)
    _add_key_arguments(parser)
    parser.add_argument("--capacity", type=int, help="writes in progress before answering 529")
    _add_body_limit_arguments(parser.add_argument_group("limits on a request body"))
    _add_connection_limit_arguments(parser.add_argument_group("limits on a connection"))
    _add_fault_arguments(parser.add_argument_group("fault injection"))


def _add_place_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"port, 0 to 65535 (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    parser.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help=f"directory for the SQLite database and image files (default {DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests with this Host name (repeatable); bound to loopback, only loopback names"
        " are answered otherwise",
    )


def _add_key_arguments(parser: argparse.ArgumentParser) -> None:
    auth = parser.add_argument_group(
        "API key",
        f"Required as X-API-Key on /v2, the viewer's data and /metrics when set. Taken from --api-key, else"
        f" --api-key-file, else the {API_KEY_ENV} environment variable; the last two keep it out of the"
        " command line, which other users of the machine can read (ps). An empty key is refused: leave all"
        " three out to run without one.",
    )
    auth.add_argument("--api-key", help="the key itself (visible in ps; prefer the file or the variable)")
    auth.add_argument(
        "--api-key-file", metavar="PATH", help="read the key from this file (surrounding whitespace dropped)"
    )


def _add_body_limit_arguments(limits: argparse._ArgumentGroup) -> None:
    limits.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help=f"larger bodies get 413 (default {DEFAULT_MAX_BODY_BYTES})",
    )
    limits.add_argument(
        "--body-budget-bytes",
        type=int,
        default=DEFAULT_BODY_BUDGET_BYTES,
        help="bytes of bodies held at once across requests, counted as they arrive; past it 529"
        f" (default {DEFAULT_BODY_BUDGET_BYTES})",
    )
    limits.add_argument(
        "--max-image-pixels",
        type=int,
        default=DEFAULT_MAX_IMAGE_PIXELS,
        help=f"images declaring more pixels (width × height) get 422 (default {DEFAULT_MAX_IMAGE_PIXELS})",
    )
    limits.add_argument(
        "--max-annotations",
        type=int,
        default=DEFAULT_MAX_ANNOTATIONS,
        help="annotations one list (objectDetections, instanceSegmentations, keypoints, classifications) may"
        f" hold, else 422 (default {DEFAULT_MAX_ANNOTATIONS}, as Roboflow's bundle format)",
    )
    limits.add_argument(
        "--max-points",
        type=int,
        default=DEFAULT_MAX_POINTS,
        help=f"points one polygon, or keypoints one detection, may have, else 422 (default {DEFAULT_MAX_POINTS})",
    )
    limits.add_argument(
        "--max-total-points",
        type=int,
        default=DEFAULT_MAX_TOTAL_POINTS,
        help="polygon points and keypoints a body may hold in all, else 422; bounds what parsing its"
        f" annotations costs (default {DEFAULT_MAX_TOTAL_POINTS}: about 50 MB)",
    )


def _add_connection_limit_arguments(limits: argparse._ArgumentGroup) -> None:
    limits.add_argument(
        "--header-timeout",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT,
        help=f"seconds for a request's headers to arrive, else 408 and close (default {DEFAULT_HEADER_TIMEOUT:g})",
    )
    limits.add_argument(
        "--body-timeout",
        type=float,
        default=DEFAULT_BODY_TIMEOUT,
        help=f"seconds for a body to arrive after its headers, else 408 and close (default {DEFAULT_BODY_TIMEOUT:g})",
    )
    limits.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        help=f"seconds a connection may idle between requests (default {DEFAULT_IDLE_TIMEOUT:g})",
    )
    limits.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help=f"open connections beyond which new ones get 503 (default {DEFAULT_MAX_CONNECTIONS})",
    )


def _add_fault_arguments(faults: argparse._ArgumentGroup) -> None:
    faults.add_argument("--latency", type=float, default=0.0, help="seconds added to each write")
    faults.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered with --error-status")
    faults.add_argument("--error-status", type=int, default=503, help="status of injected errors (default 503)")
    faults.add_argument("--error-detail", default="injected fault", help="detail of injected errors")
    faults.add_argument("--drop-rate", type=float, default=0.0, help="share of connections dropped mid-request")
    faults.add_argument("--seed", type=int, help="seed for the fault draws")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} must be a port number from 0 to 65535")
    return port


def config_from_arguments(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """The ServiceConfig the options (and ``environ``, default ``os.environ``) describe.

    A bad value raises ``ValidationError`` naming the option.
    """
    api_key = _api_key(args, os.environ if environ is None else environ)
    try:
        faults = Faults(
            latency=args.latency,
            error_rate=args.error_rate,
            error_status=args.error_status,
            error_detail=args.error_detail,
            drop_rate=args.drop_rate,
            seed=args.seed,
        )
        return ServiceConfig(
            data_dir=args.data_dir,
            host=args.host,
            port=args.port,
            api_key=api_key,
            capacity=args.capacity,
            max_body_bytes=args.max_body_bytes,
            body_budget_bytes=args.body_budget_bytes,
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            idle_timeout=args.idle_timeout,
            max_connections=args.max_connections,
            max_image_pixels=args.max_image_pixels,
            max_annotations=args.max_annotations,
            max_points=args.max_points,
            max_total_points=args.max_total_points,
            allowed_hosts=tuple(args.allowed_host),
            faults=faults,
        )
    except ValueError as exc:
        # Faults and ServiceConfig say "<name> must …": name the option it came from.
        name, _, rule = str(exc).partition(" ")
        name = "allowed_host" if name == "allowed_hosts" else name  # the option is given once per name
        raise ValidationError(f"--{name.replace('_', '-')}", getattr(args, name, None), rule) from None


def _api_key(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    if args.api_key is not None and args.api_key_file is not None:
        raise ValidationError("--api-key-file", args.api_key_file, "cannot be given with --api-key: give one")
    if args.api_key is not None:
        if not args.api_key.strip():
            raise ValidationError("--api-key", args.api_key, _EMPTY_KEY)
        return str(args.api_key)
    if args.api_key_file is not None:
        try:
            key = Path(args.api_key_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ValidationError(
                "--api-key-file", args.api_key_file, f"must be a readable UTF-8 file ({exc})"
            ) from None
        if not key:
            raise ValidationError("--api-key-file", args.api_key_file, "must hold the key (the file is empty)")
        return key
    from_environment = environ.get(API_KEY_ENV)
    if from_environment is not None and not from_environment.strip():
        raise ValidationError(API_KEY_ENV, from_environment, _EMPTY_KEY + f" (unset {API_KEY_ENV})")
    return from_environment
