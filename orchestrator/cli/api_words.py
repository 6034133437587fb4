"""An API error in the CLI's words: what was wrong and the command that shows more, not an HTTP route.

The API's own messages point HTTP clients to routes (``GET /api/flow-runs lists them``); a CLI user
typed a command and should read one back (``orchestrator flow-run ls lists them``), without the
``GET /flow-runs/zzzz: 404:`` the request was. The API's messages stay as they are: this only
rewrites them where the CLI prints them. A server error (5xx) keeps the request it answered, which
is what a bug report needs.
"""

from __future__ import annotations

import re

from orchestrator.errors import ApiError

# (the API's pointer to a route, the command that shows the same)
_POINTERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"GET /api/flow-runs/([^/\s]+)/failures shows what failed"),
        r"orchestrator flow-run inspect \1 shows what failed",
    ),
    (re.compile(r"GET /api/flow-runs lists them"), "orchestrator flow-run ls lists them"),
    (re.compile(r"GET /api/deployments lists them"), "orchestrator deployment ls lists them"),
    (re.compile(r"GET /api/concurrency-limits lists them"), "orchestrator concurrency-limit ls lists them"),
    (re.compile(r"GET /api/flows lists the known ones"), "orchestrator flow ls lists the known ones"),
)


def cli_words(exc: ApiError) -> str:
    """The error line's text for ``exc``: a refusal (4xx) as the API explained it, routes named as
    commands; anything else as the request and status it was."""
    if not exc.detail or not 400 <= exc.status < 500:
        return str(exc)
    text = exc.detail
    for pointer, command in _POINTERS:
        text = pointer.sub(command, text)
    return text
