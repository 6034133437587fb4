"""Deployments: a flow, its parameters, queue and schedule; pause, resume, run now, backfill, delete."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request, status
from sqlalchemy import func
from sqlmodel import Session, col, select

from api.cancel import cancel_run
from api.db import get_engine
from api.models import Deployment, FlowRun
from api.routes.deps import MessagingDep, SessionDep, StoreDep
from api.routes.flows import find_flow
from api.schemas import (
    BackfillResult,
    DeploymentBackfill,
    DeploymentCreate,
    DeploymentDeleted,
    DeploymentPublic,
    DeploymentRunCreate,
    FlowRunCreate,
    FlowRunPublic,
    when,
)
from api.services.backfill import BackfillProblem, backfill
from api.services.scheduling import check_schedule
from api.submit import check_parameters, check_structure, new_flow_run
from orchestrator.guards.limits import queue_problem, shown_parameters
from orchestrator.states import StateType

router = APIRouter(prefix="/deployments", tags=["deployments"])

DeploymentName = Annotated[str, Path(min_length=1, max_length=200, description="The deployment's name.")]


def public(session: Session, row: Deployment) -> DeploymentPublic:
    upcoming = session.exec(
        select(FlowRun.scheduled_start)
        .where(FlowRun.deployment_id == row.id, FlowRun.state == StateType.SCHEDULED.value)
        .order_by(col(FlowRun.scheduled_start))
        .limit(10)
    ).all()
    return DeploymentPublic(
        **row.model_dump(exclude={"created", "updated", "scheduled_until", "parameters"}),
        parameters=shown_parameters(row.parameters),  # a row stored too deep must not break the listing
        created=when(row.created),
        next_runs=[w for w in (when(s) for s in upcoming) if w is not None],
    )


def get_deployment(session: Session, name: str) -> Deployment:
    row = session.exec(select(Deployment).where(Deployment.name == name)).first()
    if row is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no deployment named {name!r}; GET /api/deployments lists them."
        )
    return row


@router.post("", response_model=DeploymentPublic, status_code=status.HTTP_201_CREATED)
def create_deployment(body: DeploymentCreate, session: SessionDep, store: StoreDep) -> DeploymentPublic:
    """Create a deployment, or replace the one with this name (its future Scheduled runs are re-planned)."""
    problem = check_schedule(body.cron, body.interval_seconds, body.timezone)
    if problem:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, problem)
    if (
        store.fleet.flow_description(body.flow_name) is not None
    ):  # parameters checked now when a worker told us the flow
        flow = find_flow(store, body.flow_name)
        check_parameters(flow, body.parameters)
        body.queue = body.queue or flow.get("queue")
    else:  # its schema is checked when it runs; what no flow takes is refused now
        check_structure(body.parameters)
    now = time.time()
    row = session.exec(select(Deployment).where(Deployment.name == body.name)).first()
    if row is None:
        row = Deployment(id=str(uuid.uuid4()), created=now, updated=now, **body.model_dump())
    else:
        for key, value in body.model_dump().items():
            setattr(row, key, value)
        row.updated, row.scheduled_until = now, None
        for old in session.exec(
            select(FlowRun).where(FlowRun.deployment_id == row.id, FlowRun.state == StateType.SCHEDULED.value)
        ).all():
            if not old.dispatched:
                session.delete(old)  # planned under the old schedule; the scheduler plans again
    session.add(row)
    session.commit()
    session.refresh(row)
    return public(session, row)


@router.get("", response_model=list[DeploymentPublic])
def list_deployments(session: SessionDep) -> list[DeploymentPublic]:
    """Every deployment with its next scheduled runs."""
    return [public(session, row) for row in session.exec(select(Deployment).order_by(col(Deployment.name))).all()]


@router.get("/{name}", response_model=DeploymentPublic)
def read_deployment(session: SessionDep, name: DeploymentName) -> DeploymentPublic:
    return public(session, get_deployment(session, name))


def set_paused(session: Session, name: str, paused: bool) -> DeploymentPublic:
    row = get_deployment(session, name)
    row.paused, row.updated = paused, time.time()
    session.add(row)
    session.commit()
    session.refresh(row)
    return public(session, row)


@router.post("/{name}/pause", response_model=DeploymentPublic)
def pause_deployment(session: SessionDep, name: DeploymentName) -> DeploymentPublic:
    """Stop sending its runs (Scheduled ones stay, and say why they wait)."""
    return set_paused(session, name, True)


@router.post("/{name}/resume", response_model=DeploymentPublic)
def resume_deployment(session: SessionDep, name: DeploymentName) -> DeploymentPublic:
    """Send its runs again."""
    return set_paused(session, name, False)


@router.post("/{name}/runs", response_model=FlowRunPublic, status_code=status.HTTP_201_CREATED)
async def run_deployment(
    request: Request, body: DeploymentRunCreate, store: StoreDep, name: DeploymentName
) -> FlowRunPublic:
    """Run the deployment now, its parameters overridden by the body's."""
    with Session(get_engine()) as session:
        deployment = get_deployment(session, name)
    flow = find_flow(store, deployment.flow_name)
    if deployment.queue and (problem := queue_problem(deployment.queue)):  # stored before queues were checked
        raise HTTPException(status.HTTP_409_CONFLICT, f"deployment {name!r}: {problem}; deploy it again with another.")
    run_id = None
    if body.idempotency_key is not None:  # the same key answers the run it made (a redelivered node)
        run_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"orchestrator:deployment-run:{name}:{body.idempotency_key}"))
        with Session(get_engine()) as session:
            existing = session.get(FlowRun, run_id)
        if existing is not None:
            return FlowRunPublic.of(existing)
    create = FlowRunCreate(parameters=deployment.parameters | body.parameters, queue=deployment.queue)
    row = new_flow_run(flow, create, run_id=run_id, parent=body.parent_flow_run_id) | {"deployment_id": deployment.id}
    if deployment.concurrency_limit is not None:  # the dispatcher sends it when a slot is free
        row |= {"state": StateType.SCHEDULED.value, "dispatched": False}
    return FlowRunPublic.of(FlowRun.model_construct(**await request.app.state.submitter.submit(row)))


NOT_STARTED = [
    StateType.SCHEDULED.value,
    StateType.LATE.value,
    StateType.AWAITING_CONCURRENCY_SLOT.value,
    StateType.PENDING.value,
]


@router.get("/{name}/runs", response_model=list[FlowRunPublic])
def deployment_runs(
    session: SessionDep,
    name: DeploymentName,
    limit: Annotated[int, Query(ge=1, le=200, description="How many, latest start time first.")] = 10,
) -> list[FlowRunPublic]:
    """Its runs past the Scheduled stage (sent, held, late, under way, finished), latest start time first.

    Its Scheduled runs are the deployment's ``next_runs``."""
    deployment = get_deployment(session, name)
    start = func.coalesce(FlowRun.scheduled_start, FlowRun.created)
    rows = session.exec(
        select(FlowRun)
        .where(FlowRun.deployment_id == deployment.id, FlowRun.state != StateType.SCHEDULED.value)
        .order_by(start.desc())
        .limit(limit)
    ).all()
    return [FlowRunPublic.of(r) for r in rows]


@router.post("/{name}/backfill", response_model=BackfillResult, status_code=status.HTTP_201_CREATED)
def backfill_deployment(session: SessionDep, name: DeploymentName, body: DeploymentBackfill) -> BackfillResult:
    """Create the runs its schedule would have made in [start, end) (a past range), at their start times.

    Idempotent: a start time that has a run already (an earlier backfill, the scheduler) gets no
    other. The deployment's late-run policy decides which of them run (newest_only: the newest
    only); the dispatcher sends them oldest first within its concurrency limit. 409 for a
    deployment without a schedule, 422 for a range that is not in the past or holds too many.
    """
    deployment = get_deployment(session, name)
    try:
        done = backfill(session, deployment, body.start.timestamp(), body.end.timestamp())
    except BackfillProblem as exc:
        code = status.HTTP_409_CONFLICT if exc.conflict else status.HTTP_422_UNPROCESSABLE_CONTENT
        raise HTTPException(code, f"cannot backfill deployment {name!r}: {exc}") from exc
    return BackfillResult(
        deployment=name,
        start=body.start,
        end=body.end,
        start_times=len(done.starts),
        created=done.created,
        existing=done.existing,
        skipped_by_policy=done.skipped,
        late_policy=deployment.late_policy,
        concurrency_limit=deployment.concurrency_limit,
        paused=deployment.paused,
    )


@router.delete("/{name}", response_model=DeploymentDeleted)
def delete_deployment(
    session: SessionDep, store: StoreDep, messaging: MessagingDep, name: DeploymentName
) -> DeploymentDeleted:
    """Delete the deployment: its runs not started yet (Scheduled, Late, AwaitingConcurrencySlot,
    Pending) are cancelled; its runs under way finish, and finished ones are kept with their history."""
    deployment = get_deployment(session, name)
    store.ping()  # Redis away: 503 before anything changes (cancelling a sent run needs it)
    deployment_id = deployment.id
    session.delete(deployment)  # first: the scheduler makes no more of its runs
    session.commit()
    waiting = session.exec(
        select(FlowRun.id).where(FlowRun.deployment_id == deployment_id, col(FlowRun.state).in_(NOT_STARTED))
    ).all()
    why = f"its deployment {name!r} was deleted"
    cancelled = [run_id for run_id in waiting if cancel_run(session, store, messaging, run_id, why) is not None]
    kept = session.exec(select(func.count()).select_from(FlowRun).where(FlowRun.deployment_id == deployment_id)).one()
    return DeploymentDeleted(name=name, cancelled=cancelled, kept=int(kept) - len(cancelled))
