"""Which host names and addresses reach only this machine: one answer for every door.

The API refuses to listen beyond loopback without a key and, without one, answers only Host
headers naming this machine (DNS rebinding); Flower does the same without credentials. Both
ask :func:`is_loopback`, so the two doors never disagree about what "this machine" means.
"""

from __future__ import annotations

import ipaddress

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


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
