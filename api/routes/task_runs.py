"""Reading one task run by its id (or any unique prefix of it): its record, history, traceback and logs.

A flow run's routes list its task runs; these answer ``prefect task-run inspect|logs``-style
questions about one of them, found by the id a log line, a history or ``flow-run inspect`` shows.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import func
from sqlmodel import col, select

from api.models import FlowRun, LogLine, StateEvent, TaskRun
from api.routes.deps import SessionDep, TaskRunId, no_task_run
from api.schemas import LogLinePublic, StateEventPublic, TaskRunDetail, TaskRunPublic
from orchestrator.runs.failures import failed_on_its_own

router = APIRouter(prefix="/task-runs", tags=["task runs"])


@router.get("/{task_run_id}", response_model=TaskRunDetail)
def read_task_run(
    session: SessionDep,
    task_run_id: TaskRunId,
    limit: Annotated[int, Query(ge=1, le=10_000, description="At most this many transitions, the latest.")] = 1000,
) -> TaskRunDetail:
    """One task run: its record, its state history (oldest first), and, when it failed on its own
    (not UpstreamFailed), the exception's class and the traceback of its last attempt."""
    row = session.get(TaskRun, task_run_id)
    if row is None:  # deleted between the id's lookup and here
        raise no_task_run(task_run_id)
    mine = col(StateEvent.run_id) == task_run_id  # served by the index on (run_id, seq)
    total = session.exec(select(func.count()).select_from(StateEvent).where(mine)).one()
    latest = session.exec(select(StateEvent).where(mine).order_by(col(StateEvent.seq).desc()).limit(limit)).all()
    name = session.exec(select(FlowRun.name).where(FlowRun.id == row.flow_run_id)).first()
    failed = failed_on_its_own(row.state)  # a traceback of an attempt a later one made good is history only
    return TaskRunDetail(
        **TaskRunPublic.of(row).model_dump(),
        flow_run_name=name or "",
        error_type=row.error_type if failed else "",
        traceback=row.traceback if failed else "",
        states=[StateEventPublic.of(e, row.label) for e in reversed(latest)],
        states_total=total,
    )


@router.get("/{task_run_id}/logs", response_model=list[LogLinePublic])
def list_task_run_logs(
    session: SessionDep,
    task_run_id: TaskRunId,
    after: Annotated[int, Query(ge=0, le=2**62, description="Only lines after this seq (to follow).")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[LogLinePublic]:
    """The task run's log lines (its traceback's among them when an attempt raised), oldest first."""
    row = session.get(TaskRun, task_run_id)
    if row is None:
        raise no_task_run(task_run_id)
    rows = session.exec(
        select(LogLine)  # its flow run's lines through the (flow_run_id, seq) index, then only its own
        .where(LogLine.flow_run_id == row.flow_run_id, LogLine.task_run_id == task_run_id, col(LogLine.seq) > after)
        .order_by(col(LogLine.seq))
        .limit(limit)
    ).all()
    return [LogLinePublic.of(r, row.label) for r in rows]
