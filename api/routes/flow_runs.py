"""Reading flow runs (their task runs, history, graph, logs) and acting on them."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from pydantic import AfterValidator
from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from api.cancel import cancel_run
from api.db import get_engine
from api.deletion import Changed, delete_tree, run_tree
from api.diagnosis import Fleet, diagnose, slot_waits
from api.graph import graph_page
from api.models import Deployment, FlowRun, LogLine, StateEvent, TaskRun, in_run_tree
from api.paging import LIMIT_DEFAULT, LIMIT_MAX, PAGED, Limit, Offset, announce
from api.routes.deps import FlowRunId, MessagingDep, SessionDep, StoreDep, no_run, whole_run_id
from api.run_list import RunFilters, list_runs
from api.schemas import (
    Accepted,
    Diagnosis,
    FlowRunDeleted,
    FlowRunFailures,
    FlowRunPage,
    FlowRunPublic,
    FlowRunUpdate,
    Graph,
    LateCleanup,
    LateCleanupResult,
    LogLinePublic,
    StateEventPublic,
    TaskFailure,
    TaskRunPublic,
    TaskStatePublic,
    TaskStates,
    valid_start,
)
from api.services.late import cleanup_late
from orchestrator.runs.failures import OWN_FAILURES
from orchestrator.runs.lifecycle import retry_final_run
from orchestrator.runs.outcome import shown_result
from orchestrator.states import StateType

router = APIRouter(prefix="/flow-runs", tags=["flow runs"])

RunId = FlowRunId  # whole or any unique prefix: the routes below see the whole id


def get_run(session: Session, run_id: str) -> FlowRun:
    """The flow run or a 404 that says where to look."""
    row = session.get(FlowRun, run_id)
    if row is None:
        raise no_run(run_id)
    return row


def run_state(session: Session, run_id: str) -> tuple[StateType, str]:
    """The run's recorded state and message or a 404, without loading its row (and its plan)."""
    found = session.exec(select(FlowRun.state, FlowRun.state_message).where(FlowRun.id == run_id)).first()
    if found is None:
        raise no_run(run_id)
    return StateType(found[0]), found[1]


@router.get("", response_model=FlowRunPage)
def list_flow_runs(
    session: SessionDep,
    flow: Annotated[str | None, Query(max_length=200, description="Only runs of this flow.")] = None,
    state: Annotated[list[StateType] | None, Query(description="Only runs in these states.")] = None,
    name: Annotated[str | None, Query(max_length=500, description="Runs whose name contains this.")] = None,
    parent: Annotated[
        str | None, Query(max_length=64, description="Only subflow runs of this run (its id or a unique prefix).")
    ] = None,
    since: Annotated[
        datetime | None, Query(description="Created at or after this time."), AfterValidator(valid_start)
    ] = None,
    until: Annotated[
        datetime | None, Query(description="Created before this time."), AfterValidator(valid_start)
    ] = None,
    deployment: Annotated[
        str | None, Query(max_length=200, description="Only runs of this deployment (its name).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> FlowRunPage:
    """Flow runs, newest first, filtered and paginated (``total``: how many match in all)."""
    if parent:  # a prefix names its run; an id nothing starts lists no runs, as it always did
        parent = whole_run_id(session, parent) or parent
    filters = RunFilters(
        flow=flow,
        states=[s.value for s in state or ()],
        name=name,
        parent=parent,
        since=since,
        until=until,
        deployment_id=deployment_id_of(session, deployment) if deployment else None,
    )
    return run_page(session, filters, limit, offset)


def deployment_id_of(session: Session, name: str) -> str:
    """The id of the deployment with this name, or a 404 naming where the names are listed."""
    found = session.exec(select(Deployment.id).where(Deployment.name == name)).first()
    if found is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no deployment named {name!r}; GET /api/deployments lists them."
        )
    return found


def run_page(session: Session, filters: RunFilters, limit: int, offset: int) -> FlowRunPage:
    """One page of the run list, with each run's deployment by name: what ``GET /api/flow-runs``
    answers and what the web UI's list shows (one data path for both)."""
    rows, total = list_runs(session, filters, limit, offset)
    names = deployment_names(session, {r.deployment_id for r in rows if r.deployment_id})
    items = [FlowRunPublic.of(r, names.get(r.deployment_id or "")) for r in rows]
    return FlowRunPage(items=items, total=total, limit=limit, offset=offset)


def deployment_names(session: Session, ids: set[str]) -> dict[str, str]:
    """The name of each of these deployments (one query; a deleted deployment has none)."""
    if not ids:
        return {}
    found = session.exec(select(Deployment.id, Deployment.name).where(col(Deployment.id).in_(ids))).all()
    return dict(found)


@router.post("/late/cleanup", response_model=LateCleanupResult)
def cleanup_late_runs(
    session: SessionDep, store: StoreDep, messaging: MessagingDep, body: LateCleanup
) -> LateCleanupResult:
    """Clear a backlog of Late runs with a policy (newest_only, cancel_older_than, run_all), with filters.

    Name the runs (deployment, flow or queue), or say ``all_flows: true``: an empty body's
    policy never reaches every flow by accident. At most ``limit`` runs are cancelled per
    request; ``remaining`` says how many are left for the next one.
    """
    if body.policy == "cancel_older_than" and body.max_age_seconds is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "cancel_older_than needs max_age_seconds.")
    if not (body.deployment or body.flow or body.queue or body.all_flows):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "name the Late runs to clean up with deployment, flow or queue, or send all_flows: true to apply "
            "the policy to the Late runs of every flow.",
        )
    deployment_id = None
    if body.deployment:
        found = session.exec(select(Deployment).where(Deployment.name == body.deployment)).first()
        if found is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no deployment named {body.deployment!r}.")
        deployment_id = found.id
    done = cleanup_late(
        get_engine(),
        store,
        messaging,
        body.policy,
        max_age_seconds=body.max_age_seconds,
        deployment_id=deployment_id,
        flow=body.flow,
        queue=body.queue,
        limit=body.limit,
    )
    return LateCleanupResult.model_validate(done)


@router.get("/{run_id}", response_model=FlowRunPublic)
def read_flow_run(session: SessionDep, run_id: RunId) -> FlowRunPublic:
    """One flow run: state, parameters, timestamps, result reference, parent run, deployment."""
    row = get_run(session, run_id)
    names = deployment_names(session, {row.deployment_id} if row.deployment_id else set())
    return FlowRunPublic.of(row, names.get(row.deployment_id or ""))


@router.patch("/{run_id}", response_model=FlowRunPublic)
def rename_flow_run(session: SessionDep, store: StoreDep, run_id: RunId, body: FlowRunUpdate) -> FlowRunPublic:
    """Rename a flow run (also while it runs)."""
    row = get_run(session, run_id)
    store.ping()
    store.flow_runs.rename(run_id, body.name, cause="api")  # the recorder applies it, in order with the run's events
    shown = FlowRunPublic.of(row)
    shown.name = body.name
    return shown


@router.get("/{run_id}/task-runs", response_model=list[TaskRunPublic], responses=PAGED)
def list_task_runs(
    session: SessionDep, response: Response, run_id: RunId, limit: Limit = LIMIT_DEFAULT, offset: Offset = 0
) -> list[TaskRunPublic]:
    """The run's task runs (for a top-level run: its subflows' too), by start time, one page at a time.

    At most ``limit`` from ``offset``; X-Total-Count says how many there are, and X-Next-Offset
    (and a ``Link: rel="next"``) where the next page starts, when one follows. Pages of a run
    still running can shift as task runs start (their start time changes their place).
    """
    in_tree = in_run_tree(run_id)
    total = session.exec(select(func.count()).select_from(TaskRun).where(in_tree)).one()
    rows = session.exec(
        select(TaskRun)
        .where(in_tree)
        .order_by(col(TaskRun.started), col(TaskRun.created), col(TaskRun.label), col(TaskRun.id))
        .offset(offset)
        .limit(limit)
    ).all()
    announce(response, total, offset, limit, len(rows))
    return [TaskRunPublic.of(r) for r in rows]


@router.get("/{run_id}/states", response_model=list[StateEventPublic], responses=PAGED)
def list_states(
    session: SessionDep,
    response: Response,
    run_id: RunId,
    tasks: Annotated[bool, Query(description="Include the transitions of its task runs.")] = True,
    limit: Limit = LIMIT_DEFAULT,
    offset: Offset = 0,
) -> list[StateEventPublic]:
    """Every transition of the run (and its task runs) in the order it happened, with time, message and cause.

    One page at a time: at most ``limit`` from ``offset``, with the X-Total-Count, X-Next-Offset
    and Link headers of /task-runs. New transitions only ever add to the end.
    """
    condition = col(StateEvent.run_id) == run_id
    if tasks:
        condition = or_(condition, col(StateEvent.flow_run_id) == run_id)
    total = session.exec(select(func.count()).select_from(StateEvent).where(condition)).one()
    rows = session.exec(
        select(StateEvent).where(condition).order_by(col(StateEvent.seq)).offset(offset).limit(limit)
    ).all()
    announce(response, total, offset, limit, len(rows), tasks=tasks)
    names = labels_of(session, rows)
    return [StateEventPublic.of(r, names.get(r.run_id, "")) for r in rows]


def task_labels(session: Session, task_ids: set[str]) -> dict[str, str]:
    """The label of each of these task runs that is recorded (one query): the ten children of a map
    differ only at the end of their ids, so histories and logs name them by label (square-0[2])."""
    if not task_ids:
        return {}
    found = session.exec(select(TaskRun.id, TaskRun.label).where(col(TaskRun.id).in_(task_ids))).all()
    return {task_id: label for task_id, label in found if label}


def labels_of(session: Session, events: Sequence[StateEvent]) -> dict[str, str]:
    """The label of each task run and the name of each flow run these events are about (two queries a page)."""
    run_ids = {e.run_id for e in events if e.kind != "task_run"}
    names = task_labels(session, {e.run_id for e in events if e.kind == "task_run"})
    if run_ids:
        found = session.exec(select(FlowRun.id, FlowRun.name).where(col(FlowRun.id).in_(run_ids))).all()
        names.update({run_id: name for run_id, name in found if name})
    return names


def task_states(session: Session, run_id: str, since: float, limit: int) -> list[tuple[str, str, float]]:
    """(id, state, updated) of the run tree's task runs recorded at or after ``since``, oldest change first:
    what ``/task-states`` answers and what the web UI's graph starts from (one query for both)."""
    rows = session.exec(
        select(TaskRun.id, TaskRun.state, TaskRun.updated)
        .where(in_run_tree(run_id), col(TaskRun.updated) >= since)
        .order_by(col(TaskRun.updated), col(TaskRun.id))
        .limit(limit)
    ).all()
    return [(i, state, updated) for i, state, updated in rows]


@router.get("/{run_id}/task-states", response_model=TaskStates)
def read_task_states(
    session: SessionDep,
    run_id: RunId,
    since: Annotated[
        float, Query(ge=0, le=1e11, description="Only task runs recorded at or after this time (epoch seconds).")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=LIMIT_MAX)] = LIMIT_MAX,
) -> TaskStates:
    """The states of the run tree's task runs that changed since ``since``: what a live view (the web UI's
    run graph) polls instead of the whole graph. Ask again with ``until``; an answer may repeat a task
    run whose change was recorded in the same instant (apply states, they are current ones)."""
    run_state(session, run_id)
    rows = task_states(session, run_id, since, limit + 1)
    items = [TaskStatePublic(id=i, state=state, updated=updated) for i, state, updated in rows[:limit]]
    until = max((item.updated for item in items), default=since)
    return TaskStates(flow_run_id=run_id, items=items, until=until, truncated=len(rows) > limit)


@router.get("/{run_id}/graph", response_model=Graph, responses=PAGED)
def read_graph(
    session: SessionDep, response: Response, run_id: RunId, limit: Limit = LIMIT_DEFAULT, offset: Offset = 0
) -> Graph:
    """The compiled task graph with each node's current state (a dynamic run: its task runs so far), by pages.

    At most ``limit`` nodes from ``offset``, in plan order; the body's ``total`` and ``next_offset``
    (null on the last page) and the X-Total-Count, X-Next-Offset and Link headers say what follows.
    Each node lists all its upstream ids (which may be on other pages: every edge appears once,
    on its downstream node). A page lists at most ``limit`` expanded task runs of runtime maps
    in all (``mapped``, in index order); ``mapped_total`` is how many a map has.
    """
    found = graph_page(session, run_id, limit, offset)
    if found is None:
        raise no_run(run_id)
    announce(response, found.total, offset, limit, len(found.nodes))
    return found


@router.get("/{run_id}/diagnosis", response_model=Diagnosis)
def read_diagnosis(session: SessionDep, store: StoreDep, run_id: RunId) -> Diagnosis:
    """Why the run is not running (or what it is doing): queues, live workers, its flow, its schedule."""
    row = get_run(session, run_id)
    in_tree = in_run_tree(run_id)
    counts = session.exec(select(TaskRun.state, func.count()).where(in_tree).group_by(col(TaskRun.state))).all()
    fleet = Fleet.read(store, {row.queue or "default"})
    deployment = session.get(Deployment, row.deployment_id) if row.deployment_id else None
    paused = deployment.name if deployment is not None and deployment.paused else None
    waiting = session.exec(
        select(TaskRun.id).where(in_tree).where(TaskRun.state == StateType.AWAITING_CONCURRENCY_SLOT.value).limit(100)
    ).all()
    states = {state: int(n) for state, n in counts}
    # the run tree's own count of task runs not final yet, planned ones that never reported included
    left = store.flow_runs.remaining(run_id) if not row.parent_id or row.root_id == row.id else None
    found = diagnose(
        row,
        fleet,
        states,
        paused_deployment=paused,
        waiting_for_slots=slot_waits(store, list(waiting)),
        not_final=left,
        body_status=store.flow_runs.field(run_id, "body_status"),  # dynamic bodies only
    )
    return Diagnosis.model_validate(found)


@router.get(
    "/{run_id}/result",
    responses={
        404: {"description": "No such flow run."},
        409: {"description": "The run has not completed (still under way, or it failed): no result."},
        410: {"description": "The run completed, but its result has expired from Redis and was not persisted."},
    },
)
def read_result(session: SessionDep, store: StoreDep, run_id: RunId) -> Any:
    """The flow run's return value as JSON, once it has completed.

    Read from Redis, where results stay ``ORCHESTRATOR_RESULT_TTL_SECONDS`` (and from the result
    storage for tasks with ``persist_result=True``), and shown as plain JSON: a date as its ISO
    text, a tuple as a list, a dataclass as the object of its fields, a pickled value as "<pickled>".
    """
    recorded, recorded_message = run_state(session, run_id)
    shown = shown_result(store, run_id)
    if shown.state is None:  # Redis has no record: not sent yet, or expired
        if recorded is not StateType.COMPLETED:
            raise not_completed(run_id, recorded, recorded_message)
        raise HTTPException(
            status.HTTP_410_GONE,
            f"flow run {run_id} completed, but its record and result have expired from Redis (kept "
            "ORCHESTRATOR_RESULT_TTL_SECONDS after the run); declare its tasks with persist_result=True to keep "
            "results longer, or run it again.",
        )
    if shown.state is not StateType.COMPLETED:
        raise not_completed(run_id, shown.state, shown.message)
    if shown.expired:
        names = ", ".join(shown.expired[:5]) + (f" and {len(shown.expired) - 5} more" if len(shown.expired) > 5 else "")
        raise HTTPException(
            status.HTTP_410_GONE,
            f"flow run {run_id} completed, but the result of task run {names} has expired from Redis (kept "
            "ORCHESTRATOR_RESULT_TTL_SECONDS) and was not persisted; declare the task with persist_result=True "
            "to keep results in ORCHESTRATOR_RESULT_STORAGE, or run the flow again.",
        )
    return shown.value


def not_completed(run_id: str, state: StateType, message: str) -> HTTPException:
    """The 409 of /result for a run that has no result (yet), saying what it is doing or why it failed."""
    if not state.is_final:
        return HTTPException(
            status.HTTP_409_CONFLICT, f"flow run {run_id} is {state.value}: it has no result until it completes."
        )
    why = f": {message}" if message else ""
    return HTTPException(
        status.HTTP_409_CONFLICT,
        f"flow run {run_id} ended {state.value}{why}; it has no result (GET /api/flow-runs/{run_id}/failures "
        "shows what failed, with tracebacks).",
    )


@router.get("/{run_id}/failures", response_model=FlowRunFailures)
def read_failures(
    session: SessionDep,
    run_id: RunId,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many failures.")] = 100,
) -> FlowRunFailures:
    """Why the run failed: the task run that failed on its own first (its root cause), with what it raised
    and its traceback, then the other task runs that failed on their own, and how many did not run because
    of them (UpstreamFailed). A root run's tree includes its subflows' task runs."""
    state, message = run_state(session, run_id)
    in_tree = in_run_tree(run_id)
    own = col(TaskRun.state).in_([s.value for s in OWN_FAILURES])
    total = session.exec(select(func.count()).select_from(TaskRun).where(in_tree, own)).one()
    rows = session.exec(
        select(TaskRun)  # the order of orchestrator.runs.failures.cause_order: the earliest to end first
        .where(in_tree, own)
        .order_by(col(TaskRun.ended).is_(None), col(TaskRun.ended), col(TaskRun.label), col(TaskRun.id))
        .limit(limit)
    ).all()
    upstream = session.exec(
        select(func.count()).select_from(TaskRun).where(in_tree, col(TaskRun.state) == StateType.UPSTREAM_FAILED.value)
    ).one()
    failures = [TaskFailure.of(r) for r in rows]
    return FlowRunFailures(
        flow_run_id=run_id,
        state=state.value,
        state_message=message,
        root_cause=failures[0] if failures else None,
        failures=failures,
        total=total,
        upstream_failed=upstream,
    )


@router.get("/{run_id}/logs", response_model=list[LogLinePublic])
def list_logs(
    session: SessionDep,
    run_id: RunId,
    after: Annotated[int, Query(ge=0, le=2**62, description="Only lines after this seq (to follow).")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[LogLinePublic]:
    """Log lines of the run and its task runs, oldest first."""
    get_run(session, run_id)
    rows = session.exec(
        select(LogLine)
        .where(LogLine.flow_run_id == run_id, col(LogLine.seq) > after)
        .order_by(col(LogLine.seq))
        .limit(limit)
    ).all()
    labels = task_labels(session, {r.task_run_id for r in rows if r.task_run_id})
    return [LogLinePublic.of(r, labels.get(r.task_run_id or "", "")) for r in rows]


@router.post("/{run_id}/cancel", response_model=Accepted, status_code=status.HTTP_202_ACCEPTED)
def cancel_flow_run(session: SessionDep, store: StoreDep, messaging: MessagingDep, run_id: RunId) -> Accepted:
    """Cancel a run: queued task runs never start, running ones are terminated, the run ends Cancelled."""
    row = get_run(session, run_id)
    if StateType(row.state).is_final:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"flow run {run_id} already ended {row.state}; nothing to cancel."
        )
    if row.parent_id and row.root_id != row.id:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"flow run {run_id} is a subflow run; cancel its parent {row.parent_id}."
        )
    outcome = cancel_run(session, store, messaging, run_id, "cancelled by request")
    if outcome is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"flow run {run_id} ended meanwhile; nothing to cancel.")
    return Accepted(id=run_id, action="cancel", detail=outcome)


@router.post("/{run_id}/retry", response_model=Accepted, status_code=status.HTTP_202_ACCEPTED)
def retry_flow_run(session: SessionDep, store: StoreDep, messaging: MessagingDep, run_id: RunId) -> Accepted:
    """Run a failed (or cancelled, crashed, timed out) run again: only its task runs that did not complete."""
    row = get_run(session, run_id)
    attempt = retry_final_run(store, messaging, run_id)
    return Accepted(id=row.id, action="retry", detail=f"attempt {attempt} started.")


@router.delete(
    "/{run_id}",
    response_model=FlowRunDeleted,
    responses={
        404: {"description": "No such flow run."},
        409: {"description": "The run (or one of its subflow runs) is under way: cancel it first."},
        503: {"description": "Redis does not answer: nothing was deleted."},
    },
)
def delete_flow_run(
    request: Request,
    session: SessionDep,
    store: StoreDep,
    run_id: RunId,
    results: Annotated[
        bool, Query(description="Also remove the results its task runs persisted (persist_result=True).")
    ] = False,
) -> FlowRunDeleted:
    """Delete a finished run with its whole tree: subflow runs, task runs, state history, log lines and
    what Redis holds of them (and, with ``results=true``, their persisted results).

    A run under way is refused (409: cancel it first), except one never sent to a worker (Scheduled,
    Late, waiting for its deployment's slot), which is deleted at once. A subflow run traced into its
    parent's plan goes with its parent only. Redis away: 503, nothing deleted.
    """
    tree = run_tree(session, [run_id])
    if not tree:
        raise no_run(run_id)
    run = tree[0]
    if run.parent_id and run.root_id != run.id:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"flow run {run_id} is a subflow run traced into the plan of {run.parent_id}; it is deleted with its "
            f"parent (DELETE /api/flow-runs/{run.parent_id}).",
        )
    blocking = next((r for r in tree if not r.deletable), None)
    if blocking is not None:
        who = f"flow run {run_id} is" if blocking is run else f"its subflow run {blocking.id} is"
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"{who} {blocking.state}, not finished: cancel it first (orchestrator flow-run cancel {blocking.id}, "
            "or POST /api/flow-runs/{id}/cancel), then delete it once it has ended.",
        )
    store.ping()  # Redis away: 503 before anything changes
    try:
        done = delete_tree(session, store, tree, results=results)
    except Changed as exc:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"flow run {run_id} changed while it was being deleted ({exc}); nothing was deleted: look at it again.",
        ) from exc
    metrics = request.app.state.metrics
    metrics.runs_deleted.labels("request").inc(len(done.flow_runs))
    metrics.task_runs_deleted.labels("request").inc(done.task_runs)
    return FlowRunDeleted(
        id=run_id,
        flow_runs=done.flow_runs,
        task_runs=done.task_runs,
        state_events=done.state_events,
        log_lines=done.log_lines,
        redis_keys=done.redis_keys,
        results=done.results,
    )
