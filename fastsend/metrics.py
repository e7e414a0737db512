"""The Prometheus collector's import path: ``import fastsend.metrics`` (it lives in
:mod:`fastsend.integrations.metrics`; needs the ``metrics`` extra)."""

from fastsend.integrations.metrics import WriterCollector, register, start_http_server

__all__ = ["WriterCollector", "register", "start_http_server"]
