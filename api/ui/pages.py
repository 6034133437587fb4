"""The UI's pages: the run list (``/ui``) and one run (``/ui/runs/{id}``), and the script and style.

Both pages are rendered here from the same queries as the JSON routes (``run_page`` of
``GET /api/flow-runs``, ``get_run`` of ``GET /api/flow-runs/{id}``); the script then keeps
them live by reading those JSON routes every few seconds. The API key is checked before a
page runs (``api.security.ApiKeyGate`` sends a browser without it to ``/ui/login``), and the
router's dependency checks it again, as every ``/api`` route does.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from sqlmodel import col, select

from api.models import Deployment
from api.routes.deps import SessionDep, whole_run_id
from api.routes.flow_runs import deployment_id_of, deployment_names, get_run, run_page
from api.run_list import RunFilters
from api.schemas import FlowRunPublic
from api.security import require_api_key
from api.ui.rendering import STATIC, STATIC_FILES, render, root_of, shown_duration
from orchestrator.config.settings import get_settings
from orchestrator.states import StateType

PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(require_api_key)])
assets = APIRouter(prefix="/ui", include_in_schema=False)  # the script and style hold no data: open


@assets.get("/static/{name}")
async def static_file(name: str) -> FileResponse:
    """One of the UI's two files. A route, not a StaticFiles mount: a mount behind a proxy that
    strips the root path looks its files up under the wrong name (see api.docs_pages)."""
    if name not in STATIC_FILES:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no UI file {name!r}; there are {', '.join(STATIC_FILES)}.")
    kind = "text/javascript" if name.endswith(".js") else "text/css"
    return FileResponse(STATIC / name, media_type=kind, headers={"X-Content-Type-Options": "nosniff"})


def chosen_states(given: list[str]) -> list[str]:
    """The state filter's values (a form's empty choice means any), refusing a name that is no state."""
    chosen = [s for s in given if s]
    known = {s.value for s in StateType}
    unknown = [s for s in chosen if s not in known]
    if unknown:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"no state named {unknown[0]!r}; the states are {', '.join(sorted(known))}.",
        )
    return chosen


def utc_time(field: str, given: str) -> datetime | None:
    """A time filter of the list form (a datetime-local field: no zone, read as UTC), or None when empty."""
    if not given:
        return None
    try:
        value = datetime.fromisoformat(given)
    except ValueError:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"{field}={given!r} is not a time; give it as YYYY-MM-DDTHH:MM (UTC), e.g. 2026-01-31T08:00.",
        ) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@router.get("", response_class=HTMLResponse)
def run_list(
    request: Request,
    session: SessionDep,
    flow: Annotated[str, Query(max_length=200)] = "",
    state: Annotated[list[str] | None, Query()] = None,
    name: Annotated[str, Query(max_length=500)] = "",
    deployment: Annotated[str, Query(max_length=200)] = "",
    since: Annotated[str, Query(max_length=40)] = "",
    until: Annotated[str, Query(max_length=40)] = "",
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> HTMLResponse:
    """The flow runs, newest first, filtered and paged as ``GET /api/flow-runs`` does (the script refreshes it)."""
    states = chosen_states(state or [])
    after, before = utc_time("since", since), utc_time("until", until)
    filters = RunFilters(
        flow=flow or None,
        states=states,
        name=name or None,
        since=after,
        until=before,
        deployment_id=deployment_id_of(session, deployment) if deployment else None,
    )
    page = run_page(session, filters, limit, offset)
    now = datetime.now(UTC)
    query = {"flow": flow, "state": states, "name": name, "deployment": deployment, "since": since, "until": until}
    kept = {k: v for k, v in (query | {"limit": limit}).items() if v}
    zoned = {"since": after.isoformat() if after else "", "until": before.isoformat() if before else ""}
    api_kept = {k: v for k, v in (kept | zoned).items() if v}  # the API reads a zone-less time as local time

    def link(at: int) -> str:
        return f"{root_of(request)}/ui?{urlencode({**kept, 'offset': at}, doseq=True)}"

    return render(
        request,
        "runs.html",
        page=page,
        rows=[(run, shown_duration(run.started, run.ended, now)) for run in page.items],
        flow=flow,
        chosen=states,
        name=name,
        deployment=deployment,
        deployments=list(session.exec(select(Deployment.name).order_by(col(Deployment.name))).all()),
        since=since,
        until=until,
        limit=limit,
        offset=offset,
        api_query=urlencode({**api_kept, "offset": offset}, doseq=True),
        newer=link(max(offset - limit, 0)) if offset > 0 else None,
        older=link(offset + limit) if offset + limit < page.total else None,
    )


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def run_detail(request: Request, session: SessionDep, run_id: str) -> Response:
    """One run: its record here, its task runs, history, logs, result or failure and diagnosis from the script."""
    whole = whole_run_id(session, run_id[:64]) if len(run_id) <= 64 else None
    if whole is None:
        return render(request, "missing.html", status_code=404, run_id=run_id)
    if whole != run_id:  # a prefix: the page's address names the whole id, as the JSON it reads does
        return RedirectResponse(f"{root_of(request)}/ui/runs/{whole}", status_code=status.HTTP_303_SEE_OTHER)
    row = get_run(session, whole)
    names = deployment_names(session, {row.deployment_id} if row.deployment_id else set())
    run = FlowRunPublic.of(row, names.get(row.deployment_id or ""))
    duration = shown_duration(run.started, run.ended, datetime.now(UTC))
    flower = get_settings().flower_url or ""  # each task run links to its Celery task there
    return render(request, "run.html", run=run, duration=duration, flower=flower)
