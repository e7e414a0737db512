"""How the service answers: JSON bodies, and the error a handler raises to answer with a status."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

__all__ = ["HttpError", "json_response"]


class HttpError(Exception):
    """Answer with ``status``, ``{"detail": detail}`` and ``headers``; ``close``: then close the connection."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None, close: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.close = close


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """``body`` as JSON."""
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)
