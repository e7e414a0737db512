"""The Workflows plugin's import path: ``WORKFLOWS_PLUGINS=fastsend.workflows`` (the blocks live in
:mod:`fastsend.integrations.workflows`)."""

from fastsend.integrations.workflows import BLOCK_TYPE, BLOCKS_SOURCE, flush, load_blocks

__all__ = ["BLOCKS_SOURCE", "BLOCK_TYPE", "flush", "load_blocks"]
