"""Deleting flow runs with everything that hangs off them, for ``DELETE /api/flow-runs/{id}`` and retention.

A run goes with its whole tree: its subflow runs (those traced into its plan and the runs of
their own its nodes started, recursively, by ``parent_id``), their task runs, state history and
log lines, what Redis still holds of them (``store.removal``), and, when asked, the results
their task runs persisted (``persist_result=True``). Deleting a child alone would leave its
parent's graph pointing at nothing; deleting a parent and keeping its children would leave
runs whose parent is gone.

Only runs that cannot change any more are deleted: final ones, and root runs never sent to a
worker (Scheduled, Late, AwaitingConcurrencySlot with ``dispatched`` false), which nothing but the
dispatcher would touch. The database deletion is one transaction whose last statement deletes
the flow runs only where they are still final or unsent (atomic against the dispatcher's
claim); Redis is cleaned inside it, before the commit, so Redis away (503) changes nothing
in the database, and a deletion cut short is repeated safely.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, delete, or_
from sqlalchemy import select as sql_select  # typed for five columns (sqlmodel's select stops at four)
from sqlmodel import Session, col, select

from api.db import chunks
from api.models import FlowRun, LogLine, StateEvent, TaskRun
from orchestrator.data.results import forget_persisted
from orchestrator.runstate.store import RunStore
from orchestrator.states import StateType

FINAL = [s.value for s in StateType if s.is_final]
UNSENT = [StateType.SCHEDULED.value, StateType.LATE.value, StateType.AWAITING_CONCURRENCY_SLOT.value]


@dataclass(frozen=True)
class TreeRun:
    """One flow run of a tree to delete, with what decides whether it may go."""

    id: str
    state: str
    dispatched: bool
    parent_id: str | None
    root_id: str | None

    @property
    def unsent(self) -> bool:
        """Never sent to a worker: only the dispatcher would touch it, and the deletion is atomic against it."""
        return not self.dispatched and self.state in UNSENT

    @property
    def deletable(self) -> bool:
        return self.state in FINAL or self.unsent


@dataclass(frozen=True)
class Deletion:
    """What a deletion removed."""

    flow_runs: list[str]
    task_runs: int
    state_events: int
    log_lines: int
    redis_keys: int
    results: int | None  # None: persisted results were not asked for


class Changed(Exception):
    """A run of the tree left the final or unsent state while it was being deleted (sent, retried)."""


def run_tree(session: Session, run_ids: Sequence[str]) -> list[TreeRun]:
    """These runs and every run below them (subflows and runs of their own, by parent), parents first."""
    found: list[TreeRun] = []
    seen: set[str] = set()
    level = list(run_ids)
    first = True
    while level:
        column = col(FlowRun.id) if first else col(FlowRun.parent_id)
        rows = [
            TreeRun(*row)
            for part in chunks(level)
            for row in session.execute(
                sql_select(
                    col(FlowRun.id),
                    col(FlowRun.state),
                    col(FlowRun.dispatched),
                    col(FlowRun.parent_id),
                    col(FlowRun.root_id),
                ).where(column.in_(part))
            ).all()
        ]
        fresh = [r for r in rows if r.id not in seen]
        seen.update(r.id for r in fresh)
        found += fresh
        level, first = [r.id for r in fresh], False
    return found


def delete_tree(session: Session, store: RunStore, tree: Sequence[TreeRun], *, results: bool = False) -> Deletion:
    """Delete these runs (a tree from :func:`run_tree`, every run of it deletable) and all they hold.

    Raises :class:`Changed` (nothing deleted) when one of them was sent meanwhile, and Redis's own
    error (the API answers 503; nothing deleted from the database) when Redis is lost mid-way: the
    caller pings it first (``store.ping()``), so a Redis away is refused before anything starts.
    """
    ids = [r.id for r in tree]
    task_ids = [
        tid for part in chunks(ids) for tid in session.exec(select(TaskRun.id).where(_in(TaskRun.flow_run_id, part)))
    ]
    states = logs = flows = 0
    still = or_(col(FlowRun.state).in_(FINAL), col(FlowRun.dispatched).is_(False) & col(FlowRun.state).in_(UNSENT))
    for part in chunks(ids):
        states += _deleted(session, StateEvent, or_(_in(StateEvent.run_id, part), _in(StateEvent.flow_run_id, part)))
        logs += _deleted(session, LogLine, _in(LogLine.flow_run_id, part))
        _deleted(session, TaskRun, _in(TaskRun.flow_run_id, part))
        flows += _deleted(session, FlowRun, _in(FlowRun.id, part) & still)
    if flows != len(ids):
        session.rollback()
        raise Changed(f"{len(ids) - flows} of the runs were sent or retried meanwhile")
    try:
        redis_keys = store.removal.forget(ids, task_ids)
    except Exception:
        session.rollback()
        raise
    session.commit()
    removed = forget_persisted(task_ids) if results else None
    return Deletion(ids, len(task_ids), states, logs, redis_keys, removed)


def _in(column: object, values: Iterable[str]) -> ColumnElement[bool]:
    return col(column).in_(list(values))  # type: ignore[call-overload,no-any-return]


def _deleted(session: Session, table: type, where: ColumnElement[bool]) -> int:
    done = session.execute(delete(table).where(where))
    return int(done.rowcount)  # type: ignore[attr-defined]
