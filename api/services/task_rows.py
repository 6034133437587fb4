"""The recorder's task run rows: plain objects read and written with Core statements, not ORM objects.

A batch of events creates or changes thousands of task run rows. As SQLModel objects each new row
cost its constructor (validation, one instrumented ``__setattr__`` per column: ~40% of a task
Running batch's CPU under cProfile) and the unit of work's flush; a loaded one, building the ORM
instance and its change tracking (issue 18). Only the recorder writes task runs (the API's
routes read them; deletion and retention delete them), so it keeps them as :class:`TaskRow`:
rows it creates go in with one executemany INSERT, rows it loaded are written back with an
executemany UPDATE of the columns it changed (grouped by which), as the ORM's flush did. The
same rows result (tests/test_states.py checks the columns and defaults against the model).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from api.db import chunks
from api.models import TaskRun

TABLE = TaskRun.__table__  # type: ignore[attr-defined]  # SQLModel sets it on table models
COLUMNS: tuple[str, ...] = tuple(column.name for column in TABLE.columns)
KEY = "_row_id"  # the bind name of the primary key in the UPDATE (a column's own name is taken by SET)


@dataclass(eq=False)
class TaskRow:
    """One task_run row (the columns and defaults of :class:`api.models.TaskRun`), and what it held
    when loaded (``None``: the batch creates it)."""

    id: str
    flow_run_id: str = ""
    root_id: str = ""
    task_name: str = ""
    label: str = ""
    state: str = "Pending"
    state_message: str = ""
    worker: str = ""
    attempts: int = 0
    created: float = 0.0
    started: float | None = None
    ended: float | None = None
    updated: float = 0.0
    cached: bool = False
    cache_key: str = ""
    error_type: str = ""
    traceback: str = ""
    loaded: dict[str, Any] | None = field(default=None, repr=False)

    def values(self) -> dict[str, Any]:
        """The row's columns, NUL characters dropped from its text (PostgreSQL cannot store them)."""
        out = {}
        for name in COLUMNS:
            value = getattr(self, name)
            out[name] = value.replace("\x00", "") if isinstance(value, str) and "\x00" in value else value
        return out

    def changes(self) -> dict[str, Any]:
        """The columns whose value differs from what was loaded (all of them for a new row)."""
        now = self.values()
        if self.loaded is None:
            return now
        return {name: value for name, value in now.items() if value != self.loaded[name]}


def load(session: Session, ids: Iterable[str]) -> dict[str, TaskRow]:
    """The task run rows of ``ids`` that exist, by id (plain rows: one SELECT of ``IN (...)`` per chunk)."""
    found: dict[str, TaskRow] = {}
    for part in chunks(sorted(ids)):
        for row in session.execute(select(TABLE).where(TABLE.c.id.in_(part))).mappings():
            values = dict(row)
            found[values["id"]] = TaskRow(**values, loaded=values)
    return found


def write(session: Session, rows: Iterable[TaskRow]) -> None:
    """Insert the new rows and update the changed columns of the loaded ones, in the session's transaction."""
    new: list[dict[str, Any]] = []
    changed: dict[tuple[str, ...], list[dict[str, Any]]] = {}  # by the set of columns changed
    for row in rows:
        if row.loaded is None:
            new.append(row.values())
            continue
        changes = row.changes()
        if changes:
            changed.setdefault(tuple(sorted(changes)), []).append({KEY: row.id, **changes})
    if new:
        session.execute(insert(TABLE), new)
    for names, params in changed.items():
        statement = update(TABLE).where(TABLE.c.id == bindparam(KEY)).values({n: bindparam(n) for n in names})
        session.execute(statement, params)
