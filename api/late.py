"""The late-runs service: a run not started ``late_after_seconds`` after its start time becomes Late.

The transition is a conditional UPDATE (only from Scheduled or Pending), so a run a
worker starts meanwhile is never marked, and two API processes never mark one twice.
The reason, from the diagnosis, is recorded with it.
"""

from __future__ import annotations

import time

from sqlalchemy import Engine, func, update
from sqlmodel import Session, col, select

from orchestrator.states import StateType
from orchestrator.store import RunStore

from .diagnosis import Fleet, waiting_reasons
from .models import Deployment, FlowRun
from .submit import api_event

NOT_STARTED = [StateType.SCHEDULED.value, StateType.PENDING.value]


def mark_late(engine: Engine, store: RunStore, late_after: float, limit: int = 500) -> int:
    """Mark overdue runs Late, each with why; returns how many were marked."""
    now = time.time()
    start = func.coalesce(FlowRun.scheduled_start, FlowRun.created)
    with Session(engine) as session:
        rows = session.exec(
            select(FlowRun)
            .where(col(FlowRun.state).in_(NOT_STARTED), col(FlowRun.parent_id).is_(None), start < now - late_after)
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
            done = session.execute(
                update(FlowRun)
                .where(col(FlowRun.id) == row.id, col(FlowRun.state).in_(NOT_STARTED))
                .values(state=StateType.LATE.value, state_message=reason, updated=now)
            )
            if done.rowcount == 1:  # type: ignore[attr-defined]
                session.add(api_event(row.id, StateType.LATE, reason, now, cause="services: late runs"))
                marked += 1
        session.commit()
        return marked
