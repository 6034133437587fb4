"""Deployments' schedules: the next start times of a cron or an interval, and the scheduler service.

The scheduler creates each deployment's runs ahead of time (Scheduled, with their
start time) so they can be seen, diagnosed and cancelled before they are due; the
dispatcher sends each when it is due. A unique (deployment, start time) key makes
the scheduler idempotent: two API processes never create a run twice.

A schedule is checked when the deployment is created: cron takes the 5 standard fields
(so it fires at most once a minute) and must fire within a few years, and an interval is
at least ``ORCHESTRATOR_SCHEDULE_MIN_INTERVAL_SECONDS``. A deployment that fails in the scheduler anyway (stored
before these checks) is logged once, not on every pass.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from api.models import Deployment, FlowRun
from api.schemas import interval_problem, min_interval_seconds
from api.submit import api_event, flow_run_row
from orchestrator.runs.create import FlowSpec, new_flow_run
from orchestrator.states import StateType

log = logging.getLogger("orchestrator.scheduler")

AHEAD_RUNS = 3  # runs kept scheduled ahead per deployment
AHEAD_SECONDS = 3600.0  # ... but never further ahead than this
CRON_HORIZON_YEARS = 5  # a cron that does not fire within this long never will, in practice (29 February does)
CRON_FIELDS = 5  # minute hour day-of-month month day-of-week: no seconds, no year

_reported: dict[str, str] = {}  # deployment id -> the scheduler error last logged for it


def check_schedule(cron: str | None, interval_seconds: float | None, timezone: str) -> str | None:
    """What is wrong with a schedule, or None when it is fine."""
    if cron and interval_seconds:
        return "give either cron or interval_seconds, not both"
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return f"timezone {timezone!r} is unknown; use an IANA name such as Europe/Paris or UTC"
    if cron:
        return cron_problem(cron, zone)
    return interval_problem(interval_seconds)


def cron_problem(cron: str, zone: ZoneInfo) -> str | None:
    """Why a cron expression cannot be a schedule: not cron, not 5 fields, or no start within a few years."""
    example = "e.g. '0 2 * * *': 02:00 every day"
    if not croniter.is_valid(cron):
        return f"cron {cron!r} is not a valid cron expression ({example})"
    fields = len(cron.split())
    if not cron.startswith("@") and fields != CRON_FIELDS:
        return (
            f"cron {cron!r} has {fields} fields; give the 5 fields minute hour day-of-month month day-of-week "
            f"({example}): a seconds field is not supported (a cron schedule fires at most once a minute; "
            f"interval_seconds goes down to {min_interval_seconds():g}), nor a year field"
        )
    now = datetime.now(zone)
    try:
        first = croniter(cron, now).get_next(datetime)
    except (CroniterError, ValueError, OverflowError):
        first = None
    if first is None or (first - now).days > CRON_HORIZON_YEARS * 366:
        return (
            f"cron {cron!r} never fires (no start within {CRON_HORIZON_YEARS} years, e.g. a 31 February); "
            f"check its day and month fields ({example})"
        )
    return None


def next_starts(deployment: Deployment, after: float, until: float, limit: int) -> list[float]:
    """Start times of the deployment's schedule in (after, until], at most ``limit``."""
    out: list[float] = []
    if deployment.interval_seconds:
        step = deployment.interval_seconds
        anchor = deployment.created
        k = int((after - anchor) // step) + 1
        start = anchor + k * step  # each from its k, never by adding up steps: the scheduler and a
        while start <= until and len(out) < limit:  # backfill must get the very same float (one key)
            out.append(start)
            k += 1
            start = anchor + k * step
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
    """A Scheduled run of ``deployment`` starting at ``start``, named by the deployment (a name that is kept).

    Its parameters were checked against the flow's schema when the deployment was made (when a
    worker had announced the flow); the worker that starts the run checks them again.
    """
    stamp = datetime.fromtimestamp(start, UTC).strftime("%Y%m%d-%H%M%S")
    run = new_flow_run(
        FlowSpec(deployment.flow_name),
        deployment.parameters | (parameters or {}),
        queue=deployment.queue,
        name=f"{deployment.name}-{stamp}",
        created=now,
        scheduled_start=start,
    ).record
    return FlowRun(**flow_run_row(run, state=StateType.SCHEDULED, dispatched=False) | {"deployment_id": deployment.id})


def schedule_runs(engine: Engine) -> int:
    """Create the coming runs of every active deployment; returns how many were created."""
    now = time.time()
    created = 0
    with Session(engine) as session:
        deployments = session.exec(select(Deployment).where(col(Deployment.paused).is_(False))).all()
        for deployment in deployments:
            if not (deployment.cron or deployment.interval_seconds):
                continue
            deployment_id, name = deployment.id, deployment.name
            try:
                created += _schedule_one(session, deployment, now)
            except Exception as exc:  # one broken deployment must not stop the others
                _report_once(deployment_id, name, exc)
                session.rollback()
            else:
                _reported.pop(deployment_id, None)
        session.commit()
    return created


def _report_once(deployment_id: str, name: str, exc: Exception) -> None:
    """Log a deployment's scheduler error with its traceback the first time, not on every pass (each second)."""
    text = f"{type(exc).__name__}: {exc}"
    if _reported.get(deployment_id) == text:
        log.debug("scheduler: deployment %s still cannot be scheduled: %s", name, text)
        return
    _reported[deployment_id] = text
    log.error(
        "scheduler: deployment %s cannot be scheduled (%s); it is skipped until it is deployed again "
        "with a schedule that works (logged once)",
        name,
        text,
        exc_info=exc,
    )


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
