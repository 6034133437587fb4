"""Safe defaults at the door: the API key check and the request size limit.

With ``ORCHESTRATOR_API_KEY`` set, every route needs ``Authorization: Bearer <key>``
except the health probe and the OpenAPI documents (which hold no data). Bodies
larger than ``ORCHESTRATOR_API_MAX_BODY_BYTES`` are refused with 413 before they
are read in full.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from fastapi import HTTPException, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.settings import get_settings

bearer = HTTPBearer(auto_error=False, description="The API key (ORCHESTRATOR_API_KEY), when the server has one.")


def require_api_key(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> None:
    """Refuse a request without the right key when the server has one."""
    expected = get_settings().api_key
    if not expected:
        return
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(
            status_code=status.HTTP_401_UNAUTHORIZED,
            detail="missing or wrong API key: send 'Authorization: Bearer <ORCHESTRATOR_API_KEY>'.",
            headers={"WWW-Authenticate": "Bearer"},
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
        body = json.dumps({"detail": detail}).encode()
        start: dict[str, Any] = {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
        await send(start)
        await send({"type": "http.response.body", "body": body})


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
            body = json.dumps({"detail": "the URL contains a NUL character (%00); remove it."}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send)
