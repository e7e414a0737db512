"""The ``fastsend`` command: ``serve``, ``send`` and ``demo``."""

from fastsend.cli.commands import main

__all__ = ["main"]
