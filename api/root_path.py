"""``ORCHESTRATOR_API_ROOT_PATH`` handed to uvicorn as the server's root path.

FastAPI deprecated its own ``root_path=`` (it warned in every server log); the ASGI server sets
``scope["root_path"]`` now, as FastAPI recommends. Uvicorn then adds the prefix in front of every
request's path, for a proxy that strips it. A client that talks to the server directly with the
prefix (``/orchestrator/api/...``, the URL the start line prints) would then arrive with the prefix
twice; :class:`DirectPrefixServed` takes one off, so both ways keep working as they did.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send


def root_path_of(setting: str) -> str:
    """The prefix as uvicorn wants it: ``/orchestrator`` (leading slash, none at the end; '' for none)."""
    stripped = setting.strip().strip("/")
    return f"/{stripped}" if stripped else ""


def prefix_of(scope: Scope) -> str:
    """The prefix a request's links start with (its ``root_path`` without a trailing slash; '' for none):
    the docs pages, the web UI and the UI's login redirect all build their URLs on it."""
    return str(scope.get("root_path", "")).rstrip("/")


class DirectPrefixServed:
    """Serves ``{root}{root}/x`` (a direct request that carried the prefix, after uvicorn added it) as ``{root}/x``."""

    def __init__(self, app: ASGIApp, root: str) -> None:
        self.app = app
        self.root = root
        self.doubled = root + root

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.root and scope["type"] in ("http", "websocket"):
            path: str = scope.get("path", "")
            if path == self.doubled or path.startswith(self.doubled + "/"):
                scope = dict(scope, path=path[len(self.root) :])
                raw = scope.get("raw_path")
                if isinstance(raw, bytes) and raw.startswith(self.doubled.encode()):
                    scope["raw_path"] = raw[len(self.root) :]
        await self.app(scope, receive, send)
