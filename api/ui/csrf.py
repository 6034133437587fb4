"""The web UI's CSRF tokens: every action (a ``POST /ui/...``) must carry one, or it is refused with 403.

Why a token even with SameSite=Strict cookies and the API's Origin check: a browser sends a
site's cookies to every port of the same host (another port of 127.0.0.1 is the same *site*),
and without ``ORCHESTRATOR_API_KEY`` there is no cookie to check at all, so a page served by
any other local program could post to the API from a developer's browser. What such a page
cannot do is read this server's pages (another origin), and so it cannot read the token.

The pattern is a signed double-submit: a random session id lives in an HttpOnly,
SameSite=Strict cookie (``orchestrator_csrf``, set by the first page that renders a token),
and the token is an HMAC of that id under a server secret. The page puts the token in its
forms and its script's ``X-CSRF-Token`` header; :func:`check_csrf` recomputes it from the
cookie. A page on another port can set a cookie for this host, but cannot sign one.

The secret: with ``ORCHESTRATOR_API_KEY``, an HMAC under the key (stable across restarts and
across several API processes; changing the key voids every token); without one, random for
each API process (a page opened before a restart asks to be reloaded).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from functools import lru_cache
from typing import Annotated
from urllib.parse import parse_qs

from fastapi import Header, HTTPException, Request, status
from fastapi.responses import Response

from api.root_path import prefix_of
from api.security import cookie_value
from orchestrator.config.settings import get_settings

CSRF_COOKIE = "orchestrator_csrf"  # the session id the token is bound to
CSRF_FIELD = "csrf"  # the form field a plain <form method="post"> sends it in
CSRF_HEADER = "X-CSRF-Token"  # the header the script's fetch() sends it in
MAX_FORM_BYTES = 65_536  # a form body read to find the field (the API's body limit applies before)
REFUSED = (
    "refused: this web UI action carries no valid CSRF token (the page's own forms and script send one), "
    "so it may come from another site's page; nothing was done. Reload the UI page and try again "
    "(a token is void after the API restarts without ORCHESTRATOR_API_KEY, or after the key changes)."
)


@lru_cache(maxsize=1)
def _process_secret() -> bytes:
    """The secret of an API without a key: random, for this process's life."""
    return secrets.token_bytes(32)


def _secret() -> bytes:
    key = get_settings().api_key
    if key is None:
        return _process_secret()
    return hmac.new(key.get_secret_value().encode(), b"orchestrator-ui-csrf", hashlib.sha256).digest()


def _sign(session_id: str) -> str:
    return hmac.new(_secret(), session_id.encode(), hashlib.sha256).hexdigest()


def _session_id(request: Request) -> str:
    """The browser's session id: its cookie, or a new one the response will set (:func:`keep_session`)."""
    given = cookie_value(request.headers.get("cookie"), CSRF_COOKIE)
    if given and len(given) <= 128:
        return given
    new: str | None = getattr(request.state, "csrf_new_session", None)
    if new is None:
        new = secrets.token_urlsafe(24)
        request.state.csrf_new_session = new
    return new


def csrf_token(request: Request) -> str:
    """The token a page rendered for this request puts in its forms and script (its session's HMAC)."""
    return _sign(_session_id(request))


def keep_session(request: Request, response: Response) -> None:
    """Set the session cookie on a page's response when :func:`csrf_token` made a new session for it."""
    new = getattr(request.state, "csrf_new_session", None)
    if new is None:
        return
    response.set_cookie(
        CSRF_COOKIE,
        new,
        path=prefix_of(request.scope) + "/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


async def _form_field(request: Request) -> str | None:
    """The ``csrf`` field of a urlencoded form body (parsed here: no multipart parser needed)."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        return None
    body = await request.body()  # Starlette keeps it: the route reads the same bytes
    values = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace")).get(CSRF_FIELD)
    return values[0] if values else None


async def check_csrf(
    request: Request, x_csrf_token: Annotated[str | None, Header(alias=CSRF_HEADER, include_in_schema=False)] = None
) -> None:
    """Route dependency of every web UI action: 403 unless the request carries its session's token,
    in the ``X-CSRF-Token`` header or a ``csrf`` form field, whatever else it carries (the key too)."""
    given = x_csrf_token or await _form_field(request)
    session = cookie_value(request.headers.get("cookie"), CSRF_COOKIE)
    if not given or not session or not hmac.compare_digest(given.encode(), _sign(session).encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, REFUSED)
