"""The ``fastsend`` command: ``serve``, ``send`` and ``demo``."""

from fastsend.cli.main import main

__all__ = ["main"]
