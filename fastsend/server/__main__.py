"""``python -m fastsend.server``: run the reference service in the foreground.

Prints one line ``listening on <url>`` to stdout once the port is open, so a
parent process started with ``--port 0`` can learn the URL.
"""

from __future__ import annotations

import argparse
import logging
import sys

from fastsend.events import ValidationError
from fastsend.server.options import add_service_arguments, config_from_arguments
from fastsend.server.service import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fastsend.server", description=__doc__.splitlines()[0])
    add_service_arguments(parser)
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_arguments(args)
    except ValidationError as exc:
        sys.exit(f"error: {exc}")
    run(config, on_started=lambda url: print(f"listening on {url}", flush=True))


if __name__ == "__main__":
    main()
