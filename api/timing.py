"""``Server-Timing: app;dur=<ms>`` on every response: how long the server took to answer.

A client's wall time mixes the network, its own HTTP stack and the server; this header
says what the server spent, from the request's arrival to the moment the response's
headers were sent (the whole body of a JSON answer is rendered by then). Browsers show
it in their developer tools, and ``benchmarks/db_scale.py`` reads it to time the list
routes on a large database. It says nothing a client could not time itself.
"""

from __future__ import annotations

import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

METRIC = "app"


class ServerTiming:
    """ASGI middleware: adds the ``Server-Timing`` header (milliseconds, to 0.1 ms) to HTTP responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()

        async def timed_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                spent = (time.perf_counter() - began) * 1000
                MutableHeaders(scope=message).append("Server-Timing", f"{METRIC};dur={spent:.1f}")
            await send(message)

        await self.app(scope, receive, timed_send)


def server_ms(header: str | None) -> float | None:
    """The ``app`` duration in a ``Server-Timing`` header value, in milliseconds (None if absent)."""
    for metric in (header or "").split(","):
        name, _, params = metric.strip().partition(";")
        if name == METRIC:
            for param in params.split(";"):
                key, _, value = param.strip().partition("=")
                if key == "dur":
                    return float(value)
    return None
