"""The UI's operations pages: deployments (``/ui/deployments``) and workers (``/ui/workers``).

Both read through the API's own route functions (``api.routes.deployments``, ``workers``,
``concurrency_limits``, ``flow_runs``): no second data path. The deployments page's actions
(pause, resume, run now, late-run cleanup) are forms posted to ``/ui/deployments/...``, checked
for the page's CSRF token (:mod:`api.ui.csrf`), which call the same functions as the JSON
routes and send the browser back to the page with what happened (or what was refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import func
from sqlmodel import col, select

from api.diagnosis import Fleet
from api.models import FlowRun
from api.routes.concurrency_limits import list_limits
from api.routes.deployments import DeploymentName, deployment_runs, list_deployments, run_deployment, set_paused
from api.routes.deps import MessagingDep, SessionDep, StoreDep
from api.routes.flow_runs import cleanup_late_runs
from api.routes.workers import list_workers
from api.schemas import DeploymentPublic, DeploymentRunCreate, FlowRunPublic, LateCleanup
from api.security import require_api_key, require_ui_key
from api.ui.csrf import MAX_FORM_BYTES, check_csrf
from api.ui.rendering import render, root_of, shown_time
from orchestrator.states import StateType

router = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(require_api_key)])
# the forms: the key or the UI's cookie, and in both cases the page's CSRF token (as api.ui.actions)
actions = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(require_ui_key), Depends(check_csrf)])

LAST_RUNS = 5
LATE_POLICIES = ("newest_only", "cancel_older_than", "run_all")


@dataclass
class DeploymentRow:
    """One deployment as the page shows it: its record, its last runs and its Late backlog."""

    deployment: DeploymentPublic
    schedule: str
    last_runs: list[FlowRunPublic]
    late: int


def schedule_of(d: DeploymentPublic) -> str:
    """The schedule in words: 'cron 0 * * * * (UTC)', 'every 300 s', or 'none (runs on demand)'."""
    if d.cron:
        return f"cron {d.cron} ({d.timezone})"
    if d.interval_seconds:
        return f"every {d.interval_seconds:g} s"
    return "none (runs on demand)"


def back(request: Request, **said: str) -> RedirectResponse:
    """To the deployments page, with what the action did or why it was refused (shown as text)."""
    query = f"?{urlencode(said)}" if said else ""
    return RedirectResponse(f"{root_of(request)}/ui/deployments{query}", status_code=status.HTTP_303_SEE_OTHER)


async def form_of(request: Request) -> dict[str, str]:
    """An action form's fields (urlencoded; parsed here, as the login form is: no multipart parser)."""
    body = await request.body()
    return {k: v[0] for k, v in parse_qs(body[:MAX_FORM_BYTES].decode("utf-8", "replace")).items()}


@router.get("/deployments", response_class=HTMLResponse)
def deployments_page(
    request: Request,
    session: SessionDep,
    done: Annotated[str, Query(max_length=500)] = "",
    problem: Annotated[str, Query(max_length=500)] = "",
) -> HTMLResponse:
    """Every deployment: schedule, next and last runs, late-run policy and backlog, and the actions."""
    late_counts = dict(
        session.exec(
            select(FlowRun.deployment_id, func.count())
            .where(col(FlowRun.state) == StateType.LATE.value, col(FlowRun.deployment_id).is_not(None))
            .group_by(col(FlowRun.deployment_id))
        ).all()
    )
    rows = [
        DeploymentRow(d, schedule_of(d), deployment_runs(session, d.name, LAST_RUNS), int(late_counts.get(d.id, 0)))
        for d in list_deployments(session)
    ]
    late_total = session.exec(
        select(func.count()).select_from(FlowRun).where(col(FlowRun.state) == StateType.LATE.value)
    ).one()
    return render(  # with the CSRF token its forms send (and its session cookie, when new)
        request,
        "deployments.html",
        rows=rows,
        late_total=int(late_total),
        policies=LATE_POLICIES,
        done=done,
        problem=problem,
    )


@actions.post("/deployments/{name}/pause")
def pause(request: Request, session: SessionDep, name: DeploymentName) -> Response:
    """Pause the deployment from the page (as ``POST /api/deployments/{name}/pause``)."""
    try:
        set_paused(session, name, True)
    except HTTPException as exc:
        return back(request, problem=str(exc.detail))
    return back(request, done=f"Deployment {name} paused: its runs are not sent until it is resumed.")


@actions.post("/deployments/{name}/resume")
def resume(request: Request, session: SessionDep, name: DeploymentName) -> Response:
    """Resume the deployment from the page (as ``POST /api/deployments/{name}/resume``)."""
    try:
        set_paused(session, name, False)
    except HTTPException as exc:
        return back(request, problem=str(exc.detail))
    return back(request, done=f"Deployment {name} resumed.")


@actions.post("/deployments/{name}/run")
async def run_now(request: Request, store: StoreDep, name: DeploymentName) -> Response:
    """Run the deployment now with its own parameters (as ``POST /api/deployments/{name}/runs``); to the new run."""
    try:
        run = await run_deployment(request, DeploymentRunCreate(), store, name)
    except HTTPException as exc:
        return back(request, problem=str(exc.detail))
    return RedirectResponse(f"{root_of(request)}/ui/runs/{run.id}", status_code=status.HTTP_303_SEE_OTHER)


@actions.post("/deployments/{name}/late-cleanup")
async def late_cleanup(
    request: Request, session: SessionDep, store: StoreDep, messaging: MessagingDep, name: DeploymentName
) -> Response:
    """Apply a late-run policy to the deployment's Late runs (as ``POST /api/flow-runs/late/cleanup``)."""
    form = await form_of(request)
    age = form.get("max_age_seconds", "").strip()
    try:
        body = LateCleanup.model_validate(
            {"policy": form.get("policy", ""), "deployment": name, "max_age_seconds": float(age) if age else None}
        )
        result = cleanup_late_runs(session, store, messaging, body)
    except ValueError as exc:  # a ValidationError is one: a policy or an age that is not one
        why = "; ".join(e["msg"] for e in exc.errors()) if isinstance(exc, ValidationError) else str(exc)
        return back(request, problem=f"late-run cleanup of {name}: {why}")
    except HTTPException as exc:
        return back(request, problem=str(exc.detail))
    left = f"; {result.remaining} left for the next cleanup" if result.remaining else ""
    return back(
        request,
        done=f"Late runs of {name} ({result.policy}): {result.cancelled} cancelled, {result.kept} kept{left}.",
    )


EPOCH_FIELDS = {"started", "heartbeat", "last_seen", "ts"}  # a worker record's times, in epoch seconds


def shown_extra(extra: dict[str, Any]) -> list[tuple[str, str]]:
    """A worker record's other fields as text, its times in UTC rather than epoch seconds."""
    out = []
    for key, value in sorted(extra.items()):
        if key in EPOCH_FIELDS and isinstance(value, int | float) and 0 < value < 1e11:
            out.append((key, shown_time(datetime.fromtimestamp(value, UTC)) + " UTC"))
        else:
            out.append((key, str(value)))
    return out


@router.get("/workers", response_class=HTMLResponse)
def workers_page(request: Request, session: SessionDep, store: StoreDep) -> HTMLResponse:
    """Live workers with their queues and flows, each queue's length, and the concurrency limits' holders."""
    workers = list_workers(store)
    queues = {q for w in workers for q in w.queues} | {"default"}
    fleet = Fleet.read(store, queues)
    consumers = {q: sorted(w.hostname for w in workers if q in w.queues) for q in sorted(queues)}
    return render(
        request,
        "workers.html",
        workers=[(w, shown_extra(w.extra)) for w in workers],
        queues=[(q, fleet.queue_lengths.get(q, 0), consumers[q]) for q in sorted(queues)],
        limits=list_limits(session, store),
        now=datetime.now(UTC),
    )
