"""Backfill: the runs a deployment's schedule would have made in a past range, made now.

Each run is the row the scheduler makes (:func:`api.services.scheduling.run_row`: the same
name, the same start time), so the scheduler's unique key, (deployment, start time), makes a
backfill idempotent: a second backfill of the same range, or of a range the scheduler already
covered, creates nothing new.

The runs are created Scheduled at their (past) start times and not sent: the dispatcher sends
them like any due run, oldest first, holding them AwaitingConcurrencySlot while the
deployment's concurrency limit is full (``deployment_limits.py``), and not at all while the
deployment is paused or no worker consumes its queue (they go Late, as scheduled runs do).

Every backfilled run is late by definition, so the deployment's late-run policy is applied
when they are made, within the range (``late.py`` applies it to Late runs, but the dispatcher
would send a backfilled run before it is ever marked Late): ``run_all`` makes them all,
``newest_only`` only the newest start time of the range, ``cancel_older_than`` only those
whose start time is at most ``late_max_age_seconds`` old.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from api.models import Deployment, FlowRun
from api.services.scheduling import next_starts, run_row
from api.submit import api_event
from orchestrator.states import StateType

MAX_BACKFILL_RUNS = 1000  # start times one backfill may cover; a longer range is backfilled in parts
SAME_START = 0.001  # seconds: a run this close to a start time is that start time's run (rounding)
CAUSE = "backfill"


class BackfillProblem(ValueError):
    """Why a backfill cannot be made; the message says what to change. ``conflict``: the deployment's
    state is the problem (no schedule), not the range asked for."""

    def __init__(self, message: str, *, conflict: bool = False) -> None:
        super().__init__(message)
        self.conflict = conflict


@dataclass
class Backfill:
    """What one backfill did."""

    starts: list[float] = field(default_factory=list)  # the schedule's start times in [start, end)
    created: list[str] = field(default_factory=list)  # ids of the runs made now
    existing: int = 0  # start times that already had a run (an earlier backfill, the scheduler)
    skipped: int = 0  # start times the late-run policy leaves out


def schedule_starts(deployment: Deployment, start: float, end: float) -> list[float]:
    """The start times of the deployment's schedule in [start, end), refused when there are too many."""
    if not (deployment.cron or deployment.interval_seconds):
        raise BackfillProblem(
            f"deployment {deployment.name!r} has no schedule (no cron, no interval), so there are no runs it would "
            f"have made: run it now with 'orchestrator deployment run {deployment.name}', or deploy it again with "
            "--cron or --interval",
            conflict=True,
        )
    found = next_starts(deployment, start - SAME_START, end, MAX_BACKFILL_RUNS + 2)
    starts = [s for s in found if start <= s < end]
    if len(starts) > MAX_BACKFILL_RUNS:
        raise BackfillProblem(
            f"the range holds more than {MAX_BACKFILL_RUNS} start times of deployment {deployment.name!r}'s "
            "schedule; backfill a shorter range at a time"
        )
    return starts


def check_range(start: float, end: float, now: float) -> None:
    """A backfill covers a past range: start before end, end not after now."""
    if end <= start:
        raise BackfillProblem("the end must come after the start (the range is [start, end))")
    if end > now + 1:
        raise BackfillProblem(
            "the end is in the future: the scheduler makes the coming runs itself; give an end up to now"
        )


def kept_by_policy(deployment: Deployment, starts: list[float], now: float) -> list[float]:
    """The start times the deployment's late-run policy lets run (every backfilled run is late)."""
    if not starts:
        return []
    if deployment.late_policy == "newest_only":
        return [max(starts)]
    if deployment.late_policy == "cancel_older_than" and deployment.late_max_age_seconds is not None:
        return [s for s in starts if s >= now - deployment.late_max_age_seconds]
    return list(starts)


def backfill(session: Session, deployment: Deployment, start: float, end: float) -> Backfill:
    """Create the runs the deployment's schedule would have made in [start, end); commit them."""
    now = time.time()
    check_range(start, end, now)
    done = Backfill(starts=schedule_starts(deployment, start, end))
    kept = kept_by_policy(deployment, done.starts, now)
    done.skipped = len(done.starts) - len(kept)
    had = session.exec(
        select(FlowRun.scheduled_start).where(
            FlowRun.deployment_id == deployment.id,
            col(FlowRun.scheduled_start) >= start - 1,
            col(FlowRun.scheduled_start) < end + 1,
        )
    ).all()
    made = [s for s in had if s is not None]
    why = f"made by a backfill of {deployment.name!r}; its schedule's start time passed before the run existed"
    for due in kept:
        if any(abs(due - other) < SAME_START for other in made):
            done.existing += 1
            continue
        row = run_row(deployment, due, now)
        try:
            with session.begin_nested():
                session.add(row)
                session.add(api_event(row.id, StateType.SCHEDULED, why, now, CAUSE))
        except IntegrityError:
            done.existing += 1  # made meanwhile (another backfill, the scheduler)
            continue
        done.created.append(row.id)
    session.commit()
    return done
