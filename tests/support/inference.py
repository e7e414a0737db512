"""Helpers for the tests that run the real inference package (``pip install "fastsend[inference]"``).

``require_inference()`` makes inference stay off the network (offline mode, no
version check, no usage metrics) before the first import, and skips the calling
module when inference is not installed.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any

import pytest

__all__ = ["ENTERPRISE_PLUGIN", "INFERENCE_REASON", "OFFLINE_ENVIRONMENT", "require_inference"]

INFERENCE_REASON = 'needs the real inference package: pip install "fastsend[inference]"'
# The Event Writer block comes with inference's enterprise blocks; this is how inference loads them.
ENTERPRISE_PLUGIN = "inference.enterprise.workflows.enterprise_blocks.loader"

# Read by inference when it is first imported: decided once per process.
OFFLINE_ENVIRONMENT = {
    "OFFLINE_MODE": "True",
    "DISABLE_VERSION_CHECK": "True",
    "METRICS_ENABLED": "False",
    "OTEL_METRICS_ENABLED": "False",
    "OTEL_TRACING_ENABLED": "False",
    "ENABLE_PROMETHEUS": "False",
    "ENABLE_WORKFLOWS_PROFILING": "False",
}


def require_inference() -> Any:
    """The ``inference`` module, imported offline; skips the calling test module when it is missing."""
    if "inference" not in sys.modules:
        for name, value in OFFLINE_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
    with warnings.catch_warnings():  # inference's own deprecation notices at import are not this project's
        warnings.simplefilter("ignore")
        return pytest.importorskip("inference", reason=INFERENCE_REASON)
