"""Cancelling a flow run, whichever stage it is in: not sent yet, sent, or unknown to Redis.

Used by ``POST /api/flow-runs/{id}/cancel`` and by the late-run cleanup.
"""

from __future__ import annotations

import time

from sqlalchemy import update
from sqlmodel import Session, col

from api.models import FlowRun
from api.submit import api_event
from orchestrator.runs.lifecycle import stop_flow_run
from orchestrator.runstate.store import RunStore
from orchestrator.states import StateType
from orchestrator.transport.messaging import Messaging


def cancel_run(session: Session, store: RunStore, messaging: Messaging, run_id: str, why: str) -> str | None:
    """Cancel one run; returns what was done, or None if it had ended meanwhile.

    A run never sent is cancelled in the database, atomically against the dispatcher.
    A sent run is stopped through Redis (its start message, when a worker gets it, finds
    the run final and does nothing), and the recorder writes the result. A sent run Redis
    no longer knows is ended in the database only.
    """
    if cancel_unsent(session, run_id, why):
        return "cancelled before it was sent."
    if store.flow_runs.state(run_id) is None:
        end_unknown_run(session, run_id, why)
        return "cancelled; Redis had no record of the run."
    if not stop_flow_run(store, messaging, run_id, StateType.CANCELLED, why):
        return None
    return "the run is being cancelled; its states will show Cancelled."


def cancel_unsent(session: Session, run_id: str, why: str) -> bool:
    """Cancel a run the dispatcher has not sent yet, atomically against the dispatcher's claim."""
    now = time.time()
    done = session.execute(
        update(FlowRun)
        .where(col(FlowRun.id) == run_id, col(FlowRun.dispatched).is_(False))
        .values(state=StateType.CANCELLED.value, state_message=why, ended=now, updated=now, dispatched=True)
    )
    if done.rowcount != 1:  # type: ignore[attr-defined]
        session.rollback()
        return False
    session.add(api_event(run_id, StateType.CANCELLED, f"{why} (before it was sent)", now))
    session.commit()
    return True


def end_unknown_run(session: Session, run_id: str, why: str) -> None:
    """A sent run Redis no longer knows (expired, Redis wiped): end its record here."""
    now = time.time()
    message = f"{why}; Redis had no record of it"
    session.execute(
        update(FlowRun)
        .where(col(FlowRun.id) == run_id)
        .values(state=StateType.CANCELLED.value, state_message=message, ended=now, updated=now)
    )
    session.add(api_event(run_id, StateType.CANCELLED, message, now))
    session.commit()
