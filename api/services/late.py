"""Late runs: a run not started ``late_after_seconds`` after its start time becomes Late; late-run policies.

The transition is a conditional UPDATE (only from Scheduled or Pending), so a run a
worker starts meanwhile is never marked, and two API processes never mark one twice.
The reason, from the diagnosis, is recorded with it.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, String, func, literal, update
from sqlalchemy import select as sql_select  # typed for window columns (sqlmodel's select is not)
from sqlmodel import Session, col, select

from api.cancel import cancel_run
from api.diagnosis import Fleet, waiting_reasons
from api.models import Deployment, FlowRun, is_tree_root
from api.schemas import MAX_CANCELLED_PER_CLEANUP
from api.submit import api_event
from orchestrator.runstate.store import RunStore
from orchestrator.states import StateType
from orchestrator.transport.messaging import Messaging

NOT_STARTED = [StateType.SCHEDULED.value, StateType.PENDING.value]


def mark_late(engine: Engine, store: RunStore, late_after: float, limit: int = 500) -> int:
    """Mark overdue runs Late, each with why; returns how many were marked."""
    now = time.time()
    start = func.coalesce(FlowRun.scheduled_start, FlowRun.created)
    with Session(engine) as session:
        rows = session.exec(
            select(FlowRun)
            .where(col(FlowRun.state).in_(NOT_STARTED), is_tree_root(), start < now - late_after)
            .order_by(start)
            .limit(limit)
        ).all()
        if not rows:
            return 0
        fleet = Fleet.read(store, {r.queue or "default" for r in rows})
        paused = dict(
            session.exec(select(Deployment.id, Deployment.name).where(col(Deployment.paused).is_(True))).all()
        )
        marked = 0
        for row in rows:
            overdue = now - (row.scheduled_start or row.created)
            why = waiting_reasons(row, fleet, now, paused.get(row.deployment_id or ""))
            reason = f"not started {overdue:.0f}s after its start time: " + " ".join(why)
            done = session.execute(  # no session sync: its default matched every loaded row per UPDATE (n^2)
                update(FlowRun)
                .where(col(FlowRun.id) == row.id, col(FlowRun.state).in_(NOT_STARTED))
                .values(state=StateType.LATE.value, state_message=reason, updated=now)
                .execution_options(synchronize_session=False)
            )
            if done.rowcount == 1:  # type: ignore[attr-defined]
                session.add(api_event(row.id, StateType.LATE, reason, now, cause="services: late runs"))
                marked += 1
        session.commit()
        return marked


def cleanup_late(
    engine: Engine,
    store: RunStore,
    messaging: Messaging,
    policy: str,
    *,
    max_age_seconds: float | None = None,
    deployment_id: str | None = None,
    flow: str | None = None,
    queue: str | None = None,
    limit: int = MAX_CANCELLED_PER_CLEANUP,
) -> dict[str, Any]:
    """Apply a late-run policy to the Late runs that match the filters; say what it did.

    - ``run_all``: leave them; they run when their workers are back.
    - ``newest_only``: per deployment (or per flow, for runs of no deployment), keep the
      newest late run and cancel the others.
    - ``cancel_older_than``: cancel those whose start time is more than ``max_age_seconds`` ago.

    At most ``limit`` runs are cancelled per call, oldest first, so one request stays short
    however large the backlog; ``remaining`` says how many the policy would still cancel.
    The runs are chosen and counted in SQL, never loaded all at once.
    """
    now = time.time()
    start = func.coalesce(FlowRun.scheduled_start, FlowRun.created)
    matching = [col(FlowRun.state) == StateType.LATE.value, is_tree_root()]
    if deployment_id:
        matching.append(col(FlowRun.deployment_id) == deployment_id)
    if flow:
        matching.append(col(FlowRun.flow_name) == flow)
    if queue:
        matching.append(col(FlowRun.queue) == queue)
    with Session(engine) as session:
        late = int(session.exec(select(func.count()).select_from(FlowRun).where(*matching)).one())
        if policy == "newest_only":
            group = func.coalesce(col(FlowRun.deployment_id), literal("flow:", String) + col(FlowRun.flow_name))
            rank = func.row_number().over(partition_by=group, order_by=(start.desc(), col(FlowRun.id).desc()))
            ranked = (
                sql_select(col(FlowRun.id).label("id"), start.label("start"), rank.label("rank"))
                .where(*matching)
                .subquery()
            )
            doomed = select(ranked.c.id, ranked.c.start).where(ranked.c.rank > 1).subquery()
        elif policy == "cancel_older_than" and max_age_seconds is not None:
            older = start < now - max_age_seconds
            doomed = select(col(FlowRun.id).label("id"), start.label("start")).where(*matching, older).subquery()
        else:
            return {"policy": policy, "late": late, "cancelled": 0, "kept": late, "remaining": 0}
        total = int(session.exec(select(func.count()).select_from(doomed)).one())
        page = session.exec(select(doomed.c.id).order_by(doomed.c.start, doomed.c.id).limit(limit)).all()
        why = f"late-run cleanup ({policy})"
        cancelled = sum(1 for run_id in page if cancel_run(session, store, messaging, run_id, why) is not None)
    return {
        "policy": policy,
        "late": late,
        "cancelled": cancelled,
        "kept": late - cancelled,
        "remaining": max(total - len(page), 0),
    }


def apply_deployment_policies(engine: Engine, store: RunStore, messaging: Messaging) -> int:
    """Each deployment's own late-run policy, applied to its Late runs; returns how many were cancelled."""
    with Session(engine) as session:
        deployments = session.exec(select(Deployment).where(Deployment.late_policy != "run_all")).all()
    cancelled = 0
    for deployment in deployments:
        done = cleanup_late(
            engine,
            store,
            messaging,
            deployment.late_policy,
            max_age_seconds=deployment.late_max_age_seconds,
            deployment_id=deployment.id,
        )
        cancelled += done["cancelled"]
    return cancelled
