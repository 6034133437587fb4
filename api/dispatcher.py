"""The periodic services: send Scheduled flow runs when their start time comes, mark late ones.

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
from orchestrator.settings import get_settings
from orchestrator.states import StateType
from orchestrator.store import RunStore

from .crashes import detect_crashes
from .late import apply_deployment_policies, mark_late
from .models import Deployment, FlowRun
from .scheduling import schedule_runs
from .submit import dispatch, sender_app

log = logging.getLogger("orchestrator.dispatcher")


def dispatch_due(engine: Engine, limit: int = 200) -> int:
    """Send the runs whose start time has come; returns how many were sent."""
    now = time.time()
    sent = 0
    paused = select(Deployment.id).where(col(Deployment.paused).is_(True))
    with Session(engine) as session:
        due = session.exec(
            select(FlowRun.id)
            .where(col(FlowRun.state).in_([StateType.SCHEDULED.value, StateType.LATE.value]))
            .where(col(FlowRun.dispatched).is_(False))
            .where(col(FlowRun.scheduled_start) <= now)
            .where(col(FlowRun.deployment_id).is_(None) | col(FlowRun.deployment_id).not_in(paused))
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


def run_services(engine: Engine, store: RunStore, stop: threading.Event, interval: float = 1.0) -> None:
    """The periodic services, once a second until ``stop``: send due runs, mark overdue ones Late.

    A failing pass is logged, never fatal.
    """
    late_after = get_settings().late_after_seconds
    while not stop.is_set():
        for service in (
            lambda: schedule_runs(engine),
            lambda: dispatch_due(engine),
            lambda: mark_late(engine, store, late_after),
            lambda: apply_deployment_policies(engine, store, sender_app()),
            lambda: detect_crashes(store, sender_app()),
        ):
            try:
                service()
            except Exception:
                log.exception("services pass failed")
        stop.wait(interval)
