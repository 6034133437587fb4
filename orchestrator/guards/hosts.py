"""Host names and origins, as the doors that face browsers read them: one answer for all.

The API refuses to listen beyond loopback without a key and, without one, answers only Host
headers naming this machine (DNS rebinding) and refuses writes another site's page sent
(its ``Origin``); Flower does the same. Both read the headers with these functions, so the
two doors never disagree about what "this machine" or "the same site" means.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # what a request may do without proving its site


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, without port; ``[::1]`` with its brackets too)
    reaches only this machine: ``localhost`` and its subdomains (RFC 6761: no other site can
    own them), 127.0.0.0/8 and ::1."""
    host = host.strip().strip("[]").lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(value: str) -> str:
    """The name in a Host header, lower case, without its port: ``[::1]:4200`` -> ``::1``;
    ``""`` for a value that is not ``name[:port]``."""
    value = value.strip().lower()
    if value.startswith("["):
        name, bracket, rest = value[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else rest
        return name if bracket and (not rest or (rest.startswith(":") and port.isdigit())) else ""
    name, colon, port = value.partition(":")
    if colon and not port.isdigit():
        return ""
    return name.rstrip(".")  # 'localhost.' is 'localhost'


def same_origin(origin: str, host: str) -> bool:
    """Whether an ``Origin`` (or ``Referer``) value names the site the request was sent to (its
    Host header, port included); ``null`` and anything not http(s) never do."""
    try:
        parts = urlsplit(origin.strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and parts.netloc.lower() == host.strip().lower()
