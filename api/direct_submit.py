"""``POST /api/flows/{name}/runs`` in its plain form, answered without FastAPI's routing and dependency solving.

Creating runs is the API's hot path (``benchmarks/api_bench.py``: thousands a second over
HTTP). For each one, FastAPI's route matching (through the included routers) and its
dependency solving (the key check, the store, the path and body parameters, each level
parsing the query string, headers and cookies again) cost the event loop about half of the
CPU the request takes in the app, more than the route's own work. :class:`DirectSubmit` sits
where the router is called, inside the doors (``api.security``) and inside the exception
handlers, and answers the plain request with the route's own code (:func:`created_run`):

- ``POST`` to ``/api/flows/{name}/runs``, ``name`` 1 to ``MAX_FLOW_NAME`` characters, no ``/``;
- ``Content-Type: application/json`` exactly, a body that is a JSON object ``FlowRunCreate`` takes;
- a server without an API key, or the key as a Bearer token (``require_api_key`` would pass it).

Anything else goes to the router unchanged, with the body already read handed on, so FastAPI
answers it as before (its 422 for a body it refuses, the 401, 404 for another path). An error the
route's code raises (404 for an unknown flow, 422 for parameters, 503 when Redis is away) reaches
the app's exception handlers exactly as the route's does. The answer is the route's: status 201,
the ``FlowRunPublic`` serialised as FastAPI serialises a ``response_model``, the same headers
(``tests/test_direct_submit.py`` compares both paths).
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.routes.flows import MAX_FLOW_NAME, created_run
from api.schemas import FlowRunCreate, FlowRunPublic
from api.security import header, may_use_the_api, route_path
from orchestrator.runstate.store import get_store

PREFIX = "/api/flows/"
SUFFIX = "/runs"
JSON = "application/json"
_PUBLIC = TypeAdapter(FlowRunPublic)  # what FastAPI's response field dumps with (by alias, nothing left out)


class DirectSubmit:
    """ASGI app in front of the router: the plain run creation answered here, the rest by ``app``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = plain_flow_name(scope)
        if name is None:
            await self.app(scope, receive, send)
            return
        seen: list[Message] = []
        body = plain_body(await read_body(receive, seen))
        if body is None:
            await self.app(scope, replayed(seen, receive), send)
            return
        public = await created_run(scope["app"], get_store(), name, body)
        await Response(_PUBLIC.dump_json(public, by_alias=True), status_code=201, media_type=JSON)(scope, receive, send)


def plain_flow_name(scope: Scope) -> str | None:
    """The flow's name when ``scope`` is a run creation this module answers (see the module's docstring)."""
    if scope["type"] != "http" or scope.get("method") != "POST":
        return None
    path = route_path(scope)
    if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
        return None
    name = path[len(PREFIX) : -len(SUFFIX)]
    if not name or len(name) > MAX_FLOW_NAME or "/" in name:
        return None
    if header(scope, b"content-type") != JSON or not may_use_the_api(header(scope, b"authorization")):
        return None
    return name


async def read_body(receive: Receive, seen: list[Message]) -> bytes | None:
    """The whole body (None if the client went away first); every message received is kept in ``seen``."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        seen.append(message)
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def plain_body(body: bytes | None) -> FlowRunCreate | None:
    """The request's body as the route takes it, or None when FastAPI should word the refusal."""
    if not body:
        return None
    try:  # whatever fails here (bad JSON, JSON nested beyond the parser's recursion) FastAPI answers
        data = json.loads(body)
        return FlowRunCreate.model_validate(data) if type(data) is dict else None
    except Exception:
        return None


def replayed(seen: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives the messages already read again, in order, then the client's own."""
    pending = list(seen)

    async def again() -> Message:
        if pending:
            return pending.pop(0)
        message: Any = await receive()
        return message  # type: ignore[no-any-return]

    return again
