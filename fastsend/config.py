"""Settings: every knob once, with its environment variable, default and rule; and the service's base URL rule.

Precedence: argument > ``FASTSEND_*`` environment variable > default. A bad value
raises ``ValidationError`` at construction naming the argument or variable, the
value and what is accepted.
"""

from __future__ import annotations

import difflib
import functools
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from typing import Any

from yarl import URL

from fastsend.events import ValidationError

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "DEFAULT_URL",
    "EVENTS_PATH",
    "INGESTION_API_KEY_ENV",
    "KNOWN_ENV_VARS",
    "OVERFLOW_POLICIES",
    "SETTING_ENV_VARS",
    "SUBSAMPLINGS",
    "Settings",
    "check_base_url",
    "events_url_of",
    "warn_unknown_env",
]

logger = logging.getLogger("fastsend")

OVERFLOW_POLICIES = ("drop_oldest", "drop_newest", "block", "raise", "spill")
LOOPS = ("auto", "uvloop", "asyncio")
SUBSAMPLINGS = ("444", "422", "420", "440", "411")
#: Where a writer, a block and the command line send when given no URL: the reference service's default.
DEFAULT_URL = "http://localhost:8001"
#: Seconds for one attempt, end to end: the writers' default and the Event Writer block's.
DEFAULT_REQUEST_TIMEOUT = 5.0
MiB = 1024 * 1024


class _Rejected(Exception):
    pass


def _number(kind: type, *, low: float, optional: bool = False) -> Callable[[Any], Any]:
    def parse(raw: Any) -> Any:
        if optional and (raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "off"))):
            return None
        if isinstance(raw, bool):
            raise _Rejected
        try:
            value = kind(raw.strip()) if isinstance(raw, str) else kind(raw)
        except (TypeError, ValueError, OverflowError):
            raise _Rejected from None
        if kind is int and isinstance(raw, float) and raw != value:
            raise _Rejected
        if not low <= value < float("inf"):  # NaN fails too
            raise _Rejected
        return value

    parse.accepted = (  # type: ignore[attr-defined]
        f"{'an integer' if kind is int else 'a number'} ≥ {low:g}" + (" or none" if optional else "")
    )
    return parse


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in options:
            raise _Rejected
        return value

    parse.accepted = "one of " + ", ".join(options)  # type: ignore[attr-defined]
    return parse


def _optional_text(raw: Any) -> str | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, (str, os.PathLike)):
        raise _Rejected
    return os.fspath(raw)


_optional_text.accepted = "a string"  # type: ignore[attr-defined]


def _header_text(raw: Any) -> str | None:
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str) or not all(" " <= character <= "~" for character in raw):
        raise _Rejected  # a line break would end the header and start another
    return raw


_header_text.accepted = "printable ASCII text (it is sent as an HTTP header)"  # type: ignore[attr-defined]


class _RejectedBecause(_Rejected):
    def __init__(self, rule: str) -> None:
        super().__init__(rule)
        self.rule = rule


def _url(raw: Any) -> str:
    if not isinstance(raw, str):
        raise _Rejected
    try:
        return check_base_url(raw)
    except ValueError as exc:
        raise _RejectedBecause(str(exc)) from None


_url.accepted = (  # type: ignore[attr-defined]
    "an http:// or https:// base URL with a host, a valid port, and no credentials, query or fragment"
)


def _flag(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise _Rejected


_flag.accepted = "true or false (1/0, yes/no, on/off)"  # type: ignore[attr-defined]


def _existing_file(raw: Any) -> str | None:
    path = _optional_text(raw)
    if path is not None and not os.path.isfile(path):
        raise _Rejected
    return path


_existing_file.accepted = "the path of an existing file"  # type: ignore[attr-defined]


def _quality(raw: Any) -> int:
    value: int = _number(int, low=1)(raw)
    if value > 100:
        raise _Rejected
    return value


_quality.accepted = "an integer from 1 to 100"  # type: ignore[attr-defined]


def _knob(env: str, parse: Callable[[Any], Any], default: Any, doc: str, *, secret: bool = False) -> Any:
    return field(default=default, metadata={"env": env, "parse": parse, "doc": doc, "secret": secret})


_MASK = "***"


class _Hidden:
    """Stands for a secret in an error message: its length, never its text."""

    def __init__(self, raw: Any) -> None:
        self.length = len(raw) if isinstance(raw, str) else None

    def __repr__(self) -> str:
        return f"<hidden, {self.length} characters>" if self.length is not None else "<hidden>"


@dataclass(frozen=True)
class Settings:
    """All of a writer's knobs; build with ``Settings.resolve(**arguments)``."""

    url: str = _knob("FASTSEND_URL", _url, DEFAULT_URL, "base URL of the service")
    api_key: str | None = _knob(
        "EVENT_INGESTION_API_KEY", _header_text, None, "sent as X-API-Key when set and non-empty", secret=True
    )
    max_connections: int = _knob("FASTSEND_MAX_CONNECTIONS", _number(int, low=1), 8, "pooled keep-alive connections")
    max_in_flight: int = _knob(
        "FASTSEND_MAX_IN_FLIGHT", _number(int, low=1), 16, "events past the queue: encoding, sending or backing off"
    )
    queue_size: int = _knob("FASTSEND_QUEUE_SIZE", _number(int, low=1), 64, "events waiting to be encoded")
    queue_bytes: int = _knob(
        "FASTSEND_QUEUE_BYTES", _number(int, low=1), 512 * MiB, "bytes of frames waiting to be encoded"
    )
    overflow: str = _knob(
        "FASTSEND_OVERFLOW",
        _choice(OVERFLOW_POLICIES),
        "drop_oldest",
        "what a full queue does; spill when unset and a spool is set",
    )
    block_timeout: float = _knob(
        "FASTSEND_BLOCK_TIMEOUT", _number(float, low=0), 5.0, "seconds the block policy waits for room"
    )
    request_timeout: float = _knob(
        "FASTSEND_REQUEST_TIMEOUT",
        _number(float, low=0.001),
        DEFAULT_REQUEST_TIMEOUT,
        "seconds for one attempt, end to end",
    )
    connect_timeout: float = _knob(
        "FASTSEND_CONNECT_TIMEOUT", _number(float, low=0.001), 2.0, "seconds to open a connection"
    )
    ca_file: str | None = _knob(
        "FASTSEND_CA_FILE", _existing_file, None, "CA bundle (PEM) to verify the service's TLS certificate with"
    )
    tls_verify: bool = _knob(
        "FASTSEND_TLS_VERIFY", _flag, True, "verify the service's TLS certificate (turn off only for testing)"
    )
    retries: int = _knob("FASTSEND_RETRIES", _number(int, low=0), 4, "retries after the first attempt")
    backoff_base: float = _knob("FASTSEND_BACKOFF_BASE", _number(float, low=0), 0.2, "first backoff ceiling, seconds")
    backoff_max: float = _knob("FASTSEND_BACKOFF_MAX", _number(float, low=0), 5.0, "backoff ceiling, seconds")
    deadline: float = _knob(
        "FASTSEND_DEADLINE", _number(float, low=0.001), 30.0, "seconds from submit after which an event is given up"
    )
    jpeg_quality: int = _knob("FASTSEND_JPEG_QUALITY", _quality, 95, "JPEG quality")
    jpeg_subsampling: str = _knob("FASTSEND_JPEG_SUBSAMPLING", _choice(SUBSAMPLINGS), "420", "chroma subsampling")
    jpeg_max_side: int | None = _knob(
        "FASTSEND_JPEG_MAX_SIDE",
        _number(int, low=1, optional=True),
        None,
        "downscale frames whose longer side exceeds it",
    )
    encode_threads: int = _knob(
        "FASTSEND_ENCODE_THREADS", _number(int, low=1), max(2, os.cpu_count() or 2), "JPEG encoder threads"
    )
    loop: str = _knob("FASTSEND_LOOP", _choice(LOOPS), "auto", "event loop: uvloop when installed, or asyncio")
    exit_flush_timeout: float = _knob(
        "FASTSEND_EXIT_FLUSH_TIMEOUT", _number(float, low=0), 5.0, "seconds spent flushing at interpreter exit"
    )
    spool_dir: str | None = _knob(
        "FASTSEND_SPOOL_DIR", _optional_text, None, "durable outbox directory (off when unset)"
    )
    spool_max_bytes: int = _knob(
        "FASTSEND_SPOOL_MAX_BYTES", _number(int, low=1), 1024 * MiB, "bytes the spool may hold; oldest go first"
    )
    retry_after_max: float = _knob(
        "FASTSEND_RETRY_AFTER_MAX",
        _number(float, low=0),
        60.0,
        "longest wait a Retry-After answer can impose, seconds (the spool drain above all)",
    )
    handle_sigterm: bool = _knob(
        "FASTSEND_HANDLE_SIGTERM",
        _flag,
        True,
        "with a spool, SIGTERM (default disposition) exits like SystemExit so pending events reach the spool",
    )
    max_writers: int = _knob(
        "FASTSEND_MAX_WRITERS",
        _number(int, low=1),
        16,
        "writers EventWriterSink and the Workflows block keep (one per URL); the least recently used is closed",
    )

    @classmethod
    def resolve(cls, environ: Mapping[str, str] | None = None, **arguments: Any) -> Settings:
        """Settings from ``arguments`` (None means unset), then the environment, then defaults."""
        environ = os.environ if environ is None else environ
        unknown = sorted(set(arguments) - _FIELDS.keys())
        if unknown:
            close = difflib.get_close_matches(unknown[0], list(_FIELDS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the settings are {', '.join(_FIELDS)}"
            raise TypeError(f"unknown setting {unknown[0]!r}{hint}")
        values: dict[str, Any] = {}
        unset: set[str] = set()
        for spec in fields(cls):
            values[spec.name], given = _resolve_one(spec, arguments.get(spec.name), environ)
            if not given:
                unset.add(spec.name)
        if "overflow" in unset and values["spool_dir"]:  # with a spool nothing is dropped unless asked for
            values["overflow"] = "spill"
        settings = cls(**values)
        if settings.overflow == "spill" and settings.spool_dir is None:
            raise ValidationError("overflow", "spill", "needs a spool: set spool_dir or FASTSEND_SPOOL_DIR")
        return settings

    def __repr__(self) -> str:
        """Every setting, a secret one shown as ``'***'`` when set: a logged or printed Settings never leaks it."""
        shown = []
        for spec in fields(self):
            value = getattr(self, spec.name)
            shown.append(f"{spec.name}={_MASK if spec.metadata['secret'] and value else value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def one(cls, name: str, argument: Any = None, environ: Mapping[str, str] | None = None) -> Any:
        """One setting, resolved like ``resolve`` does (argument, then environment, then default)."""
        return _resolve_one(_FIELDS[name], argument, os.environ if environ is None else environ)[0]


def _resolve_one(spec: Field[Any], argument: Any, environ: Mapping[str, str]) -> tuple[Any, bool]:
    """The value of one setting, and whether it was given (else it is the default)."""
    env, parse = spec.metadata["env"], spec.metadata["parse"]
    if argument is not None:
        source, raw = spec.name, argument
    elif environ.get(env, "") != "":
        source, raw = env, environ[env]
    else:
        return spec.default, False
    try:
        return parse(raw), True
    except _Rejected as rejected:
        shown = _Hidden(raw) if spec.metadata["secret"] else raw
        rule = rejected.rule if isinstance(rejected, _RejectedBecause) else f"must be {parse.accepted}"
        raise ValidationError(source, shown, rule) from None


JPEG_BACKEND_ENV = "FASTSEND_JPEG_BACKEND"
JPEG_BACKENDS = ("auto", "turbojpeg", "simplejpeg")


def jpeg_backend_wanted(environ: Mapping[str, str] | None = None) -> str:
    """The process-wide JPEG backend asked for by ``FASTSEND_JPEG_BACKEND`` (default ``auto``)."""
    return _process_wide_choice(JPEG_BACKEND_ENV, JPEG_BACKENDS, environ)


JPEG_REUSE_ENV = "FASTSEND_JPEG_REUSE"
JPEG_REUSE_CHOICES = ("auto", "off")


def jpeg_reuse_wanted(environ: Mapping[str, str] | None = None) -> str:
    """Whether ``FASTSEND_JPEG_REUSE`` lets an output frame reuse its input's JPEG segments (default ``auto``)."""
    return _process_wide_choice(JPEG_REUSE_ENV, JPEG_REUSE_CHOICES, environ)


def _process_wide_choice(env: str, choices: tuple[str, ...], environ: Mapping[str, str] | None) -> str:
    """The value of ``env`` (the first of ``choices`` when unset); a value outside ``choices`` is refused by name."""
    raw = (os.environ if environ is None else environ).get(env, "")
    wanted = raw.strip().lower() or choices[0]
    if wanted not in choices:
        raise ValidationError(env, raw, "must be " + ", ".join(choices))
    return wanted


_FIELDS: dict[str, Field[Any]] = {spec.name: spec for spec in fields(Settings)}
SETTING_ENV_VARS: dict[str, str] = {spec.name: spec.metadata["env"] for spec in fields(Settings)}
# Every FASTSEND_* variable fastsend reads: the writer's settings, the JPEG backend and the reference service's.
INGESTION_API_KEY_ENV = SETTING_ENV_VARS["api_key"]
_SERVE_API_KEY_ENV = "FASTSEND_SERVE_API_KEY"
KNOWN_ENV_VARS = frozenset({*SETTING_ENV_VARS.values(), JPEG_BACKEND_ENV, JPEG_REUSE_ENV, _SERVE_API_KEY_ENV})
_ENV_PREFIX = "FASTSEND_"
_warned_unknown: set[str] = set()


def warn_unknown_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Log a warning, once per process and name, for each ``FASTSEND_*`` variable fastsend does not read.

    A misspelt variable is otherwise ignored without a word; the warning names the closest known one.
    Returns the names warned about now.
    """
    environ = os.environ if environ is None else environ
    unknown = sorted(name for name in environ if name.startswith(_ENV_PREFIX) and name not in KNOWN_ENV_VARS)
    fresh = [name for name in unknown if name not in _warned_unknown]
    for name in fresh:
        _warned_unknown.add(name)
        logger.warning("environment variable %s is not a fastsend setting and is ignored%s", name, _env_hint(name))
    return fresh


def _env_hint(name: str) -> str:
    if name.endswith("API_KEY") or name.endswith("APIKEY"):  # the writer's key has no FASTSEND_ name
        writer, service = INGESTION_API_KEY_ENV, _SERVE_API_KEY_ENV
        return f"; did you mean {writer} (the writer's key) or {service} (the reference service's)?"
    close = difflib.get_close_matches(name, sorted(KNOWN_ENV_VARS), n=3, cutoff=0.6)
    if close:
        return f"; did you mean {' or '.join(close)}?"
    return f"; fastsend reads {', '.join(sorted(KNOWN_ENV_VARS))}"


# Base URLs of the service: what is accepted, and the one normal form requests go to.
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
        raise ValueError(f"must be a valid URL ({exc})") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(f"must start with http:// or https:// (a base URL such as {DEFAULT_URL})")
    if not url.raw_host:
        raise ValueError("must name a host (http://HOST:PORT)")
    _check_host(url.raw_host)
    if port is not None and not 0 < port < 65536:
        raise ValueError("must have a port from 1 to 65535")
    if url.user is not None or url.password is not None:
        raise ValueError("must not carry credentials (user:password@); use api_key for the service's key")
    if url.raw_query_string or "?" in text:
        raise ValueError("must not have a query string (?...): give the service's base URL")
    if url.raw_fragment or "#" in text:
        raise ValueError("must not have a fragment (#...)")
    return str(url).rstrip("/")


_HOST_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _check_host(host: str) -> None:
    """A host name (IDNA-encoded already), an IPv4 or an IPv6 address: a space or a stray character is
    refused here rather than sent to DNS, attempt after attempt."""
    if ":" in host:
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"must name a valid host ({host!r} is not an IPv6 address)") from None
    elif not _HOST_NAME.fullmatch(host):
        raise ValueError(f"must name a valid host ({host!r} has characters a host name cannot have)")


def events_url_of(base_url: str) -> str:
    """The events endpoint under ``base_url`` (already checked)."""
    return base_url.rstrip("/") + EVENTS_PATH
