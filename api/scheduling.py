"""Deployments' schedules: the next start times of a cron or an interval, and the scheduler service.

The scheduler creates each deployment's runs ahead of time (Scheduled, with their
start time) so they can be seen, diagnosed and cancelled before they are due; the
dispatcher sends each when it is due. A unique (deployment, start time) key makes
the scheduler idempotent: two API processes never create a run twice.
"""

from __future__ import annotations

import logging
import time
import uuid
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from orchestrator.settings import get_settings
from orchestrator.states import StateType

from .models import Deployment, FlowRun
from .submit import api_event

log = logging.getLogger("orchestrator.scheduler")

AHEAD_RUNS = 3  # runs kept scheduled ahead per deployment
AHEAD_SECONDS = 3600.0  # ... but never further ahead than this


def check_schedule(cron: str | None, interval_seconds: float | None, timezone: str) -> str | None:
    """What is wrong with a schedule, or None when it is fine."""
    if cron and interval_seconds:
        return "give either cron or interval_seconds, not both"
    if cron and not croniter.is_valid(cron):
        return f"cron {cron!r} is not a valid cron expression (e.g. '0 2 * * *': 02:00 every day)"
    if interval_seconds is not None and interval_seconds <= 0:
        return "interval_seconds must be > 0"
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return f"timezone {timezone!r} is unknown; use an IANA name such as Europe/Paris or UTC"
    return None


def next_starts(deployment: Deployment, after: float, until: float, limit: int) -> list[float]:
    """Start times of the deployment's schedule in (after, until], at most ``limit``."""
    out: list[float] = []
    if deployment.interval_seconds:
        step = deployment.interval_seconds
        anchor = deployment.created
        k = int((after - anchor) // step) + 1
        start = anchor + k * step
        while start <= until and len(out) < limit:
            out.append(start)
            start += step
    elif deployment.cron:
        zone = ZoneInfo(deployment.timezone)
        times = croniter(deployment.cron, datetime.fromtimestamp(after, zone))
        while len(out) < limit:
            start = times.get_next(datetime).timestamp()
            if start > until:
                break
            out.append(start)
    return out


def run_row(deployment: Deployment, start: float, now: float, parameters: dict[str, Any] | None = None) -> FlowRun:
    """A Scheduled run of ``deployment`` starting at ``start``."""
    run_id = str(uuid.uuid4())
    stamp = datetime.fromtimestamp(start, UTC).strftime("%Y%m%d-%H%M%S")
    return FlowRun(
        id=run_id,
        flow_name=deployment.flow_name,
        name=f"{deployment.name}-{stamp}",
        renamed=True,  # the deployment's name for it is kept
        state=StateType.SCHEDULED.value,
        root_id=run_id,
        queue=deployment.queue or get_settings().default_queue,
        parameters=deployment.parameters | (parameters or {}),
        created=now,
        scheduled_start=start,
        dispatched=False,
        updated=now,
        deployment_id=deployment.id,
    )


def schedule_runs(engine: Engine) -> int:
    """Create the coming runs of every active deployment; returns how many were created."""
    now = time.time()
    created = 0
    with Session(engine) as session:
        deployments = session.exec(select(Deployment).where(col(Deployment.paused).is_(False))).all()
        for deployment in deployments:
            if not (deployment.cron or deployment.interval_seconds):
                continue
            try:
                created += _schedule_one(session, deployment, now)
            except Exception:  # one broken deployment must not stop the others
                log.exception("scheduler: deployment %s could not be scheduled", deployment.name)
                session.rollback()
        session.commit()
    return created


def _schedule_one(session: Session, deployment: Deployment, now: float) -> int:
    """Create the coming runs of one deployment (committed by the caller); returns how many."""
    ahead = session.exec(
        select(FlowRun.scheduled_start).where(
            FlowRun.deployment_id == deployment.id, col(FlowRun.scheduled_start) > now
        )
    ).all()
    want = AHEAD_RUNS - len(ahead)
    if want <= 0:
        return 0
    created = 0
    after = max([now, deployment.scheduled_until or 0.0, *[a for a in ahead if a is not None]])
    for start in next_starts(deployment, after, now + AHEAD_SECONDS, want):
        row = run_row(deployment, start, now)
        try:
            with session.begin_nested():
                session.add(row)
                session.add(api_event(row.id, StateType.SCHEDULED, "scheduled by its deployment", now, "scheduler"))
            created += 1
        except IntegrityError:
            pass  # another API process created it
        deployment.scheduled_until = start
    session.add(deployment)
    return created
