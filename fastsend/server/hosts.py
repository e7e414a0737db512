"""Which ``Host`` names the service answers, against DNS rebinding.

A page on any site can make a browser send requests to ``127.0.0.1`` by
pointing a name it controls there (DNS rebinding); the request then carries
that name in ``Host``. A service bound to a loopback address therefore answers
only requests whose ``Host`` is a loopback name — ``localhost``, a name under
``.localhost``, a loopback address (``127.0.0.1``, ``[::1]``) — or one of the
names it was given (``--allowed-host``). Bound to another address it answers
any ``Host``, unless names were given: then only those and the loopback names.
A request without ``Host`` (HTTP/1.0) is answered: browsers always send one.

``Host`` is read strictly (RFC 9110 §7.2 with RFC 3986's ``host [":" port]``):
a name of letters, digits, ``-``, ``_`` and ``.``, an IPv4 address, or an
IPv6 address in brackets, then at most a port of up to five digits. Anything
else (``[::1]evil.com``, ``127.0.0.1:80:80``, an unbracketed ``::1``, a
space) is no name at all, and is refused wherever names are checked.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

__all__ = ["HostPolicy", "is_loopback_name"]


def is_loopback_name(name: str) -> bool:
    """Whether ``name`` (a host name or address, without port or brackets) always means this machine."""
    name = name.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


# host [":" port]: a bracketed IPv6 address, or a name (an IPv4 address is one too); the port is digits.
_HOST = re.compile(r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<name>[A-Za-z0-9._-]+))(?::[0-9]{0,5})?")


def _host_name(header: str) -> str | None:
    """The name in a ``Host`` header, without its port (``[::1]:8001`` → ``::1``); ``None`` when malformed."""
    found = _HOST.fullmatch(header.strip(" \t"))
    if found is None:
        return None
    if found["ipv6"] is not None:
        try:
            return str(ipaddress.IPv6Address(found["ipv6"]))
        except ValueError:
            return None
    return found["name"].lower().rstrip(".")


class HostPolicy:
    """The ``Host`` names a service bound to ``bind_host`` answers; ``allowed`` adds names (not patterns;
    a port given with one is ignored)."""

    def __init__(self, bind_host: str, allowed: Iterable[str] = ()) -> None:
        names = {name: _host_name(name) for name in allowed}  # "gw.lan:8001" means gw.lan
        for given, name in names.items():
            if not name:
                raise ValueError(
                    f"allowed_hosts must be host names (NAME, an address or [IPv6], then :PORT or not), not {given!r}"
                )
        self.allowed = frozenset(name for name in names.values() if name)
        self.enforced = bool(self.allowed) or is_loopback_name(bind_host)

    def admits(self, host_header: str | None) -> bool:
        """Whether a request with this ``Host`` header (``None``: none) is answered."""
        if not self.enforced or host_header is None:
            return True
        name = _host_name(host_header)
        return name is not None and (name in self.allowed or is_loopback_name(name))

    def refusal(self, host_header: str) -> str:
        """The ``detail`` of the 421 a refused request gets."""
        if _host_name(host_header) is None:
            return f"Host {host_header[:100]!r} is not a host name: the header must be host[:port]"
        names = "loopback names (localhost, 127.0.0.1, [::1])"
        if self.allowed:
            names += f" and {', '.join(sorted(self.allowed))}"
        return (
            f"Host {host_header[:100]!r} is not served here: this service answers only {names};"
            " start it with --allowed-host NAME to add one"
        )
