"""CSRF protection for the UI's actions (forms that change something): a token the page carries.

A page of another site can make the browser send a form to this server, with its cookie; it
cannot read this server's pages, so it cannot know the token they carry. The token is an
HMAC under the API key (the same in every API process), or under a secret of this process
when no key is set. :func:`csrf_token` puts it in a page; :func:`check_csrf`, a dependency of
every action route, refuses a request without it (a form field ``csrf`` or a header
``X-CSRF-Token``) with 403.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from urllib.parse import parse_qs

from fastapi import HTTPException, Request, Response, status

from orchestrator.config.settings import get_settings

PROCESS_SECRET = secrets.token_bytes(32)  # without a key: tokens of this process only
FORM_FIELD = "csrf"
HEADER = "X-CSRF-Token"
MAX_FORM_BYTES = 16_384  # an action's form: a token and a few fields


def _secret() -> bytes:
    key = get_settings().api_key
    return key.get_secret_value().encode() if key is not None else PROCESS_SECRET


def csrf_token(request: Request) -> str:
    """The token a page puts in its action forms (the request is the page's: kept for a per-session token)."""
    del request
    return hmac.new(_secret(), b"orchestrator-ui-csrf", hashlib.sha256).hexdigest()


def keep_session(request: Request, response: Response) -> None:
    """What a page's response must carry for its token to be checked: nothing here (the token is the
    same for every browser); kept so that pages call it, as a token bound to a session cookie needs."""
    del request, response


async def check_csrf(request: Request) -> None:
    """403 unless the request carries this server's token (form field ``csrf`` or header ``X-CSRF-Token``)."""
    given = request.headers.get(HEADER)
    if given is None and request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        body = await request.body()  # kept by Starlette: the route reads the same body after this
        given = parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace")).get(FORM_FIELD, [None])[0]
    if not given or not secrets.compare_digest(given.encode(), csrf_token(request).encode()):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "this action needs the page's CSRF token (form field 'csrf' or header X-CSRF-Token); "
            "reload the page and try again.",
        )
