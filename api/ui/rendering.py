"""The UI's template environment, its page headers and the formatting the pages and the script share.

Autoescaping is on for every template (Jinja2's ``autoescape=True``, not only for ``.html``
names): a run named ``<script>alert(1)</script>`` is text on every page. The script
(``static/ui.js``) builds what it adds with ``textContent``, never ``innerHTML``, and the
pages send a Content-Security-Policy that allows scripts from this server only, so even a
slip in either would run nothing injected.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from api.root_path import prefix_of
from api.ui.csrf import csrf_token, keep_session
from orchestrator.config.settings import get_settings
from orchestrator.states import StateType

HERE = Path(__file__).parent
STATIC = HERE / "static"
STATIC_FILES = ("ui.js", "actions.js", "graph.js", "ui.css")  # the only files /ui/static serves (nothing else of it)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",  # pages show a run's data: not kept by the browser or a proxy
}
FINAL = sorted(s.value for s in StateType if s.is_final)

environment = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,  # a name missing from a page's context is an error, not blank text
)
templates = Jinja2Templates(env=environment)


def root_of(request: Request) -> str:
    """The path prefix every link and script URL starts with (``ORCHESTRATOR_API_ROOT_PATH``, or '')."""
    return prefix_of(request.scope)


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page from its template, with the root path, the state names, the CSRF token its actions send
    (:mod:`api.ui.csrf`; its session cookie set here when new) and the safety headers."""
    keyed = get_settings().api_key is not None  # a log-out button in the header
    context |= {"root": root_of(request), "states": [s.value for s in StateType], "final_states": FINAL, "keyed": keyed}
    context["csrf"] = csrf_token(request)
    page = templates.TemplateResponse(request, template, context, status_code=status_code, headers=PAGE_HEADERS)
    keep_session(request, page)
    return page


def shown_time(value: datetime | None) -> str:
    """A time as the UI shows it: UTC to the second (the script writes the same from the JSON)."""
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def shown_duration(started: datetime | None, ended: datetime | None, now: datetime) -> str:
    """How long a run took, or has run so far: '850 ms', '12.3 s', '4 min 05 s', '2 h 03 min'."""
    if started is None:
        return ""
    seconds = max(((ended or now) - started).total_seconds(), 0.0)
    if seconds < 1:
        return f"{round(seconds * 1000)} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def pretty(value: Any) -> str:
    """A JSON value indented for a <pre> (escaped by the template, as all text is)."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


environment.filters["time"] = shown_time
environment.filters["pretty"] = pretty
