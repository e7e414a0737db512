"""The service's command-line options, shared by ``fastsend serve`` and ``python -m fastsend.server``."""

from __future__ import annotations

import argparse

from fastsend.events import ValidationError
from fastsend.server.app import DEFAULT_BODY_BUDGET_BYTES, DEFAULT_BODY_TIMEOUT, DEFAULT_MAX_BODY_BYTES
from fastsend.server.connections import DEFAULT_HEADER_TIMEOUT, DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS
from fastsend.server.faults import Faults
from fastsend.server.service import DEFAULT_PORT, ServiceConfig

__all__ = ["add_service_arguments", "config_from_arguments"]


def add_service_arguments(parser: argparse.ArgumentParser, *, default_data_dir: str | None = None) -> None:
    """Add host, port, storage, auth, capacity, limit and fault-injection options to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)"
    )
    parser.add_argument(
        "--data-dir",
        default=default_data_dir,
        required=default_data_dir is None,
        help="directory for the SQLite database and image files",
    )
    parser.add_argument("--api-key", help="require this X-API-Key on /v2 routes")
    parser.add_argument("--capacity", type=int, help="writes in progress before answering 529")
    limits = parser.add_argument_group("limits")
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
        help=f"bytes of bodies held at once across requests; past it 529 (default {DEFAULT_BODY_BUDGET_BYTES})",
    )
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
    faults = parser.add_argument_group("fault injection")
    faults.add_argument("--latency", type=float, default=0.0, help="seconds added to each write")
    faults.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered with --error-status")
    faults.add_argument("--error-status", type=int, default=503, help="status of injected errors (default 503)")
    faults.add_argument("--error-detail", default="injected fault", help="detail of injected errors")
    faults.add_argument("--drop-rate", type=float, default=0.0, help="share of connections dropped mid-request")
    faults.add_argument("--seed", type=int, help="seed for the fault draws")


def config_from_arguments(args: argparse.Namespace) -> ServiceConfig:
    """The ServiceConfig the options describe; a bad value raises ``ValidationError`` naming the option."""
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
            api_key=args.api_key,
            capacity=args.capacity,
            max_body_bytes=args.max_body_bytes,
            body_budget_bytes=args.body_budget_bytes,
            header_timeout=args.header_timeout,
            body_timeout=args.body_timeout,
            idle_timeout=args.idle_timeout,
            max_connections=args.max_connections,
            faults=faults,
        )
    except ValueError as exc:
        # Faults and ServiceConfig say "<name> must …": name the option it came from.
        name, _, rule = str(exc).partition(" ")
        raise ValidationError(f"--{name.replace('_', '-')}", getattr(args, name, None), rule) from None
