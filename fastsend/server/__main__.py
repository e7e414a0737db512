"""``python -m fastsend.server``: run the reference service in the foreground.

Prints one line ``listening on <url>`` to stdout once the port is open, so a
parent process started with ``--port 0`` can learn the URL.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fastsend.server.app import DEFAULT_MAX_BODY_BYTES
from fastsend.server.faults import Faults
from fastsend.server.service import DEFAULT_PORT, run


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fastsend.server", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)"
    )
    parser.add_argument("--data-dir", required=True, help="directory for the database and image files")
    parser.add_argument("--api-key", default=None, help="require this X-API-Key on /v2 routes")
    parser.add_argument("--capacity", type=int, default=None, help="writes in progress before answering 529")
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES, help="larger bodies get 413")
    faults = parser.add_argument_group("fault injection")
    faults.add_argument("--latency", type=float, default=0.0, help="seconds added to each write")
    faults.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered with --error-status")
    faults.add_argument("--error-status", type=int, default=503, help="status of injected errors (default 503)")
    faults.add_argument("--error-detail", default="injected fault", help="detail of injected errors")
    faults.add_argument("--drop-rate", type=float, default=0.0, help="share of connections dropped mid-request")
    faults.add_argument("--seed", type=int, default=None, help="seed for the fault draws")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        faults = Faults(
            latency=args.latency,
            error_rate=args.error_rate,
            error_status=args.error_status,
            error_detail=args.error_detail,
            drop_rate=args.drop_rate,
            seed=args.seed,
        )
    except ValueError as exc:
        sys.exit(f"error: {exc}")
    run(
        host=args.host,
        port=args.port,
        data_dir=args.data_dir,
        api_key=args.api_key,
        capacity=args.capacity,
        faults=faults,
        max_body_bytes=args.max_body_bytes,
        on_started=lambda url: print(f"listening on {url}", flush=True),
    )


if __name__ == "__main__":
    main()
