"""Credentials never leave the process in text: every URL shown to a person goes through here.

A Redis, broker or database URL may carry a user and a password
(``redis://:secret@host:6379/0``). Health answers, 503 bodies, banners, CLI and SDK errors
and logs show :func:`masked_url` of it (``redis://:**@host:6379/0``), which keeps what helps
to find the server (scheme, host, port, path) and hides what would let someone else in.
:func:`mask_urls_in` does the same for a free text, such as an exception message that quotes
a URL.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit, urlunsplit

MASK = "**"

# scheme://[user][:password]@ : the credentials part of any URL inside a text.
_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/@'\"<>]*)@")
# Query parameters that carry secrets in some drivers (password=..., ?auth=..., a redis+sentinel://
# URL's sentinel_password=...).
_SECRET_QUERY = re.compile(
    r"(?i)(?P<key>[?&](?:(?:sentinel_)?password|passwd|pwd|auth|token|secret|api_key)=)(?P<value>[^&\s'\"]*)"
)


def _mask_userinfo(userinfo: str) -> str:
    """``user:password`` -> ``user:**``; ``:password`` -> ``:**``; a lone ``token`` -> ``**``."""
    if ":" in userinfo:
        user, _ = userinfo.split(":", 1)
        return f"{user}:{MASK}"
    return MASK if userinfo else userinfo


def masked_url(url: str | None) -> str:
    """``url`` with any password (or lone token) replaced by ``**``; safe to print or return."""
    if not url:
        return url or ""
    try:
        parts: SplitResult = urlsplit(url)
    except ValueError:
        return mask_urls_in(url)
    if "@" not in parts.netloc:
        return _SECRET_QUERY.sub(lambda m: m.group("key") + MASK, url)
    userinfo, host = parts.netloc.rsplit("@", 1)
    netloc = f"{_mask_userinfo(userinfo)}@{host}"
    query = _SECRET_QUERY.sub(lambda m: m.group("key") + MASK, "?" + parts.query)[1:] if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_urls_in(text: str) -> str:
    """``text`` with the credentials of every URL in it masked (for exception messages)."""
    masked = _CREDENTIALS.sub(lambda m: m.group("scheme") + _mask_userinfo(m.group("userinfo")) + "@", text)
    return _SECRET_QUERY.sub(lambda m: m.group("key") + MASK, masked)
