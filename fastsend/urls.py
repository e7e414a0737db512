"""Base URLs of the service: what is accepted, and the one normal form requests go to."""

from __future__ import annotations

import functools

from yarl import URL

__all__ = ["EVENTS_PATH", "check_base_url", "events_url_of"]

EVENTS_PATH = "/v2/events"


def check_base_url(raw: str) -> str:
    """``raw`` as a normalized base URL (path percent-encoded, trailing slashes stripped).

    Raises ``ValueError`` saying what is wrong: not http(s), no host, a bad port,
    credentials, a query string or a fragment.
    """
    return _normalized(raw.strip())


# A block checks its URL on every call (~15 µs of parsing); a process talks to a few services.
@functools.lru_cache(maxsize=256)
def _normalized(text: str) -> str:
    try:
        url = URL(text)
        port = url.port
    except (ValueError, TypeError) as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if url.scheme not in ("http", "https"):
        raise ValueError("must start with http:// or https://")
    if not url.host:
        raise ValueError("has no host")
    if port is not None and not 0 < port < 65536:
        raise ValueError("has a port outside 1-65535")
    if url.user is not None or url.password is not None:
        raise ValueError("must not carry credentials (user:password@); use api_key for the service's key")
    if url.raw_query_string or "?" in text:
        raise ValueError("must not have a query string (?...): give the service's base URL")
    if url.raw_fragment or "#" in text:
        raise ValueError("must not have a fragment (#...)")
    return str(url).rstrip("/")


def events_url_of(base_url: str) -> str:
    """The events endpoint under ``base_url`` (already checked)."""
    return base_url.rstrip("/") + EVENTS_PATH
