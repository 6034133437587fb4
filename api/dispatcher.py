"""Sends Scheduled flow runs to the fleet when their start time comes.

Each due run is claimed with a conditional UPDATE (``dispatched`` false → true),
so two API processes never send the same run twice; a send that fails (Redis
away) releases the claim and the run is tried again on the next pass.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from orchestrator.errors import ConnectionProblem
from orchestrator.states import StateType

from .models import FlowRun
from .submit import dispatch

log = logging.getLogger("orchestrator.dispatcher")


def dispatch_due(engine: Engine, limit: int = 200) -> int:
    """Send the runs whose start time has come; returns how many were sent."""
    now = time.time()
    sent = 0
    with Session(engine) as session:
        due = session.exec(
            select(FlowRun.id)
            .where(col(FlowRun.state).in_([StateType.SCHEDULED.value, StateType.LATE.value]))
            .where(col(FlowRun.dispatched).is_(False))
            .where(col(FlowRun.scheduled_start) <= now)
            .order_by(col(FlowRun.scheduled_start))
            .limit(limit)
        ).all()
        for run_id in due:
            claimed = session.execute(
                update(FlowRun)
                .where(col(FlowRun.id) == run_id, col(FlowRun.dispatched).is_(False))
                .values(dispatched=True)
            )
            session.commit()
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                continue  # another API process took it
            row = session.get(FlowRun, run_id)
            if row is None:
                continue
            try:
                dispatch(row)
                sent += 1
            except ConnectionProblem as exc:
                log.warning("dispatcher: %s; flow run %s will be sent on a later pass", exc, run_id)
                session.execute(update(FlowRun).where(col(FlowRun.id) == run_id).values(dispatched=False))
                session.commit()
                break
    return sent


def run_dispatcher(engine: Engine, stop: threading.Event, interval: float = 1.0) -> None:
    """Loop until ``stop``: a failing pass is logged, never fatal."""
    while not stop.is_set():
        try:
            dispatch_due(engine)
        except Exception:
            log.exception("dispatcher pass failed")
        stop.wait(interval)
