"""Safe defaults at the door: who may talk to the API, the API key check and the size limit.

Outermost first (``api.app.install_doors`` installs them in this order):

1. :class:`HostCheck`: an API without ``ORCHESTRATOR_API_KEY`` (it listens on loopback only)
   answers only requests whose Host header is a loopback name, so a web page cannot reach it
   through a DNS name its site controls (DNS rebinding), and refuses a state-changing request a
   browser sent from another site (its ``Origin``). ``ORCHESTRATOR_API_ALLOWED_HOSTS`` adds names
   (a proxy's, a container's), also with a key.
2. :class:`RefuseNulInUrl`: 400 for a NUL in the URL.
3. :class:`ApiKeyGate`: with ``ORCHESTRATOR_API_KEY`` set, every request but the health probe and
   the OpenAPI documents (which hold no data) needs ``Authorization: Bearer <key>``, checked from
   the headers before anything reads the body: a client without the key makes the server parse
   nothing. A browser has the web UI's cookie instead (:func:`ui_token`, set by ``/ui/login``),
   which opens reads only (GET, HEAD): a page of another site cannot make the browser send it
   (SameSite=Strict), and no ``/api`` write accepts it, so it cannot carry a forged action either.
   The web UI's own actions (``POST /ui/...``: cancel, retry, rename, start a run) take the cookie,
   and each also needs the page's CSRF token (:mod:`api.ui.csrf`), which no other site can read.
4. :class:`BodySizeLimit`: bodies larger than ``ORCHESTRATOR_API_MAX_BODY_BYTES`` are refused with
   413 before they are read in full.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Collection, Iterable
from functools import lru_cache
from http.cookies import CookieError, SimpleCookie
from typing import Any

from fastapi import HTTPException, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.root_path import prefix_of
from orchestrator.config.settings import get_settings
from orchestrator.guards.hosts import LOOPBACK_NAMES, SAFE_METHODS, host_name, is_loopback, same_origin

bearer = HTTPBearer(auto_error=False, description="The API key (ORCHESTRATOR_API_KEY), when the server has one.")
MISSING_KEY = "missing or wrong API key: send 'Authorization: Bearer <ORCHESTRATOR_API_KEY>'."
UI_COOKIE = "orchestrator_ui"  # the web UI's proof of the key (api.ui.login sets it)
UI_PREFIX = "/ui"  # the web UI's pages: without the key they send the browser to the login form
UI_LOGIN = "/ui/login"


def ui_token(expected: SecretStr) -> str:
    """The UI cookie's value for this key: an HMAC of a fixed text under the key, so the cookie
    proves the key without holding it (a browser's cookie store never sees the key itself), and
    changing the key logs every browser out."""
    return hmac.new(expected.get_secret_value().encode(), b"orchestrator-ui-session", hashlib.sha256).hexdigest()


def cookie_value(cookie_header: str | None, name: str) -> str | None:
    """The value of cookie ``name`` in a ``Cookie`` header, or None (also for a header that does not parse)."""
    if not cookie_header:
        return None
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie_header)
    except CookieError:
        return None
    found = jar.get(name)
    return found.value if found is not None else None


def is_ui_path(path: str) -> bool:
    """Whether a route path (without the root path) is one of the web UI's (``/ui``, ``/ui/...``)."""
    return path == UI_PREFIX or path.startswith(UI_PREFIX + "/")


def cookie_matches(cookie_header: str | None, method: str, expected: SecretStr, ui_write: bool = False) -> bool:
    """Whether a request carries the UI's cookie for this key and only reads (GET, HEAD): the cookie
    opens the pages and the JSON routes their script reads, never an ``/api`` write (see the module's
    docstring). ``ui_write``: a write to a ``/ui`` route, which checks the page's CSRF token itself."""
    if method.upper() not in {"GET", "HEAD"} and not ui_write:
        return False
    given = cookie_value(cookie_header, UI_COOKIE)
    return given is not None and secrets.compare_digest(given.encode(), ui_token(expected).encode())


def key_matches(authorization: str | None, expected: SecretStr) -> bool:
    """Whether an ``Authorization`` header value is ``Bearer <expected>`` (compared in constant time)."""
    if not authorization:
        return False
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return secrets.compare_digest(token.strip().encode(), expected.get_secret_value().encode())


def may_use_the_api(authorization: str | None) -> bool:
    """Whether a request with this ``Authorization`` header gets past the key check: the right key,
    or a server without one (which :class:`HostCheck` keeps to loopback names and the allowed hosts)."""
    expected = get_settings().api_key
    return expected is None or key_matches(authorization, expected)


async def require_api_key(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)
) -> None:
    """The key check as a route dependency: it puts the Bearer scheme into the OpenAPI document.

    :class:`ApiKeyGate` enforces the same check earlier (before the body is read); this one
    stays as a second lock for a route mounted without the middleware. It is ``async`` although
    it never waits: FastAPI runs a plain ``def`` dependency in its thread pool, a hand-off to
    another thread and back on every request for a check that takes microseconds.
    """
    _check_key(request, credentials, ui_write=False)


async def require_ui_key(request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
    """The key check of the web UI's actions (``POST /ui/...``): the key, or the UI's cookie for any
    method. Only for routes that also depend on :func:`api.ui.csrf.check_csrf`: the cookie goes with
    every request the browser makes to this server, a forged one included; the token does not.
    ``async`` for the reason :func:`require_api_key` is."""
    _check_key(request, credentials, ui_write=True)


def _check_key(request: Request, credentials: HTTPAuthorizationCredentials | None, ui_write: bool) -> None:
    """401 unless the server has no key, the request carries the UI's cookie (reads, or a UI write
    when ``ui_write``: :func:`cookie_matches`), or it carries the key as a Bearer token."""
    expected = get_settings().api_key
    if expected is None:
        return
    if cookie_matches(request.headers.get("cookie"), request.method, expected, ui_write=ui_write):
        return
    if credentials is None or not key_matches(f"Bearer {credentials.credentials}", expected):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED, detail=MISSING_KEY, headers={"WWW-Authenticate": "Bearer"}
        )


async def answer(send: Send, status_code: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Send a whole JSON ``{"detail": ...}`` response from a middleware (the app never runs)."""
    body = json.dumps({"detail": detail}).encode()
    start: dict[str, Any] = {
        "type": "http.response.start",
        "status": status_code,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *headers,
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of a request header (``name`` in lower case), or None."""
    for key, value in scope.get("headers") or []:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def route_path(scope: Scope) -> str:
    """The path the routes see: without the root path when the proxy did not strip it."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and path.startswith(root + "/"):
        return path[len(root) :]
    return path


class ApiKeyGate:
    """ASGI middleware: 401 for a request without the key, from its headers alone.

    FastAPI reads and parses a route's body before it runs the route's dependencies, so a key
    check done as a dependency let a client without the key make the server read and parse up
    to the body limit (and learn from a 422 what the route expects). This answers before the
    body is received: it never calls ``receive``. The key comes as a Bearer header, or, for a
    read or a web UI action (which checks its CSRF token next), as the web UI's cookie; a web UI
    page asked for without either is sent to the login form (303) instead of answered with a JSON 401.
    """

    def __init__(self, app: ASGIApp, key: SecretStr | None, open_paths: Collection[str]) -> None:
        self.app = app
        self.key = key
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or self.key is None
            or route_path(scope) in self.open_paths
            or key_matches(header(scope, b"authorization"), self.key)
            or cookie_matches(
                header(scope, b"cookie"), str(scope.get("method", "GET")), self.key, is_ui_path(route_path(scope))
            )
        ):
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if is_ui_path(path):
            login = prefix_of(scope) + UI_LOGIN
            await answer(send, 303, "the web UI needs the API key: log in first.", [(b"location", login.encode())])
            return
        await answer(send, 401, MISSING_KEY, [(b"www-authenticate", b"Bearer")])


def _allows(pattern: str, name: str) -> bool:
    """``*`` allows any name, ``.example.com`` it and its subdomains, anything else itself."""
    pattern = host_name(pattern) if not pattern.startswith((".", "*")) else pattern.lower()
    if pattern == "*":
        return True
    if pattern.startswith("."):
        return name == pattern[1:] or name.endswith(pattern)
    return name == pattern


class HostCheck:
    """ASGI middleware: refuse a Host this API does not answer to, and cross-site writes without a key.

    Without a key (``keyless``), anyone who can reach the port may use the API; the server only
    listens on loopback for that reason. A web page can still get there: through a DNS name of
    its own that it makes resolve to 127.0.0.1 (its requests then carry that name as Host), or
    with a plain cross-site form POST (no body needed to pause a deployment) that carries the
    page's ``Origin``. So, without a key, a Host must be a loopback name or one of ``allowed``
    (400 otherwise), and a state-changing request with an ``Origin`` must come from this very
    origin (403 otherwise; scripts and the CLI send no Origin). With a key, a page cannot send
    it (a browser adds no Authorization header by itself), so only ``allowed``, when given,
    limits the Host (behind a proxy, its public name).
    """

    def __init__(self, app: ASGIApp, allowed: Collection[str], keyless: bool) -> None:
        self.app = app
        self.allowed = tuple(allowed)
        self.keyless = keyless
        self.check_host = (keyless or bool(self.allowed)) and "*" not in self.allowed
        # every request asks about the same few names (parsing an address costs ~10 µs): remembered,
        # a bounded few, as the header is the client's to choose
        self.answers_to = lru_cache(maxsize=64)(self.answers_to)  # type: ignore[method-assign]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # no websocket routes: Starlette closes those itself
            await self.app(scope, receive, send)
            return
        host = header(scope, b"host") or ""
        if self.check_host and not self.answers_to(host_name(host)):
            await answer(send, 400, self.foreign_host(host))
            return
        origin = header(scope, b"origin")
        method = str(scope.get("method", "GET")).upper()
        if self.keyless and origin is not None and method not in SAFE_METHODS and not same_origin(origin, host):
            await answer(send, 403, cross_site(method, origin))
            return
        await self.app(scope, receive, send)

    def answers_to(self, name: str) -> bool:
        return bool(name) and (is_loopback(name) or any(_allows(p, name) for p in self.allowed))

    def foreign_host(self, host: str) -> str:
        names = ", ".join([*LOOPBACK_NAMES, *self.allowed])
        shown = host[:200] if host else "(none)"
        why = (
            "without ORCHESTRATOR_API_KEY it answers only to names no other site can own, so that a web page "
            "cannot reach it through a DNS name of its own that points here (DNS rebinding)"
            if self.keyless
            else "ORCHESTRATOR_API_ALLOWED_HOSTS limits the names it answers to"
        )
        return (
            f"refused: this API does not answer to the host name {shown!r} (the request's Host header), only to "
            f"{names}; {why}. Nothing was done. If that name is yours (a proxy's, a container's), add it to "
            "ORCHESTRATOR_API_ALLOWED_HOSTS (comma-separated names; '.example.com' allows its subdomains) where "
            "the API server runs, and restart it."
        )


def cross_site(method: str, origin: str) -> str:
    return (
        f"refused: a {method} sent by a web page of {origin[:200]!r}, another site, to this API, which has no "
        "ORCHESTRATOR_API_KEY and so cannot tell a page you opened from you; nothing was done. Scripts and the "
        "CLI send no Origin and are not affected, nor is the API's own page (/docs). With ORCHESTRATOR_API_KEY "
        "set, every request needs the key instead and this check is off."
    )


class BodySizeLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, by header or as it streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        seen = 0
        too_big = False

        async def counting_receive() -> Message:
            nonlocal seen, too_big
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    too_big = True
                    raise _TooLarge
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if too_big:  # the app answers a body it could not read in full (FastAPI: a 400): say 413 instead
                if not started:
                    started = True
                    await self._refuse(send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)
        except Exception:
            if too_big and not started:
                await self._refuse(send)
            else:
                raise

    async def _refuse(self, send: Send) -> None:
        detail = (
            f"request body larger than {self.limit} bytes, this server's limit (ORCHESTRATOR_API_MAX_BODY_BYTES); "
            "the request was refused and nothing was done. Send less (pass large data by reference, e.g. a path "
            "or URL), or raise the limit: set ORCHESTRATOR_API_MAX_BODY_BYTES=<bytes> where the API server runs "
            "and restart it."
        )
        await answer(send, 413, detail)


class _TooLarge(Exception):
    pass


class RefuseNulInUrl:
    """ASGI middleware: 400 for a NUL character in the path or query (no database stores one)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (
            "\x00" in scope.get("path", "")
            or b"%00" in scope.get("query_string", b"")
            or b"\x00" in scope.get("query_string", b"")
        ):
            await answer(send, 400, "the URL contains a NUL character (%00); remove it.")
            return
        await self.app(scope, receive, send)
