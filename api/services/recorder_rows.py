"""The recorder's flow run and task run rows: plain objects read and written with Core statements.

A batch of events creates or changes thousands of rows. As SQLModel objects each new row cost
its constructor (one instrumented ``__setattr__`` per column: ~40% of a task Running batch's
CPU under cProfile), each loaded one the ORM's instance and change tracking, and every batch
the unit of work's flush (issue 18). The recorder keeps them as plain dataclasses instead
(:class:`FlowRow`, :class:`TaskRow`): rows it creates go in with one executemany INSERT per
table, rows it loaded (a Core SELECT) are written back with an executemany UPDATE of the
columns it changed, grouped by which, as the ORM's flush did: a column the batch did not
change keeps whatever another writer (a cancel, the late marker) put there meanwhile. The
same rows result; tests/test_states.py checks the columns and defaults against the models.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.orm import Session

from api.db import chunks
from api.models import FlowRun, TaskRun

KEY = "_row_id"  # the bind name of the primary key in an UPDATE (a column's own name is taken by SET)


def table_of(model: type[Any]) -> Table:
    """A SQLModel table model's Table."""
    table: Table = model.__table__
    return table


def scrubbed(row: dict[str, Any]) -> dict[str, Any]:
    """A plain row without NUL characters in its text (PostgreSQL cannot store them; they carry nothing)."""
    return {k: v.replace("\x00", "") if isinstance(v, str) and "\x00" in v else v for k, v in row.items()}


class PlainRow:
    """What both kinds of row do: their column values, and which changed since they were loaded."""

    TABLE: ClassVar[Table]
    COLUMNS: ClassVar[tuple[str, ...]]
    id: str
    loaded: dict[str, Any] | None  # the row as read (None: the batch creates it)

    def values(self) -> dict[str, Any]:
        """The row's columns, NUL characters dropped from its text (:func:`scrubbed`)."""
        return scrubbed({name: getattr(self, name) for name in self.COLUMNS})

    def changes(self) -> dict[str, Any]:
        """The columns whose value differs from what was loaded (all of them for a new row)."""
        now = self.values()
        if self.loaded is None:
            return now
        loaded = self.loaded
        return {name: value for name, value in now.items() if value != loaded[name]}


@dataclass(eq=False, kw_only=True)
class FlowRow(PlainRow):
    """One flow_run row (the columns and defaults of :class:`api.models.FlowRun`)."""

    TABLE: ClassVar[Table] = table_of(FlowRun)
    COLUMNS: ClassVar[tuple[str, ...]] = tuple(c.name for c in TABLE.columns)

    id: str
    flow_name: str = ""
    name: str = ""
    renamed: bool = False
    state: str = "Pending"
    state_message: str = ""
    parent_id: str | None = None
    root_id: str | None = None
    queue: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    mode: str = ""
    attempt: int = 1
    created: float
    scheduled_start: float | None = None
    dispatched: bool = True
    started: float | None = None
    ended: float | None = None
    updated: float = 0.0
    result_refs: list[str] = field(default_factory=list)
    plan: dict[str, Any] | None = None
    deployment_id: str | None = None
    loaded: dict[str, Any] | None = field(default=None, repr=False)


@dataclass(eq=False, kw_only=True)
class TaskRow(PlainRow):
    """One task_run row (the columns and defaults of :class:`api.models.TaskRun`)."""

    TABLE: ClassVar[Table] = table_of(TaskRun)
    COLUMNS: ClassVar[tuple[str, ...]] = tuple(c.name for c in TABLE.columns)

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


Row = TypeVar("Row", FlowRow, TaskRow)


def load(session: Session, kind: type[Row], ids: Iterable[str]) -> dict[str, Row]:
    """The rows of ``ids`` that exist, by id (one SELECT of ``IN (...)`` per chunk)."""
    table = kind.TABLE
    found: dict[str, Row] = {}
    for part in chunks(sorted(ids)):
        for row in session.execute(select(table).where(table.c.id.in_(part))).mappings():
            values = dict(row)
            found[values["id"]] = kind(**values, loaded=values)
    return found


def write(session: Session, rows: Iterable[PlainRow]) -> None:
    """Insert the new rows and update the changed columns of the loaded ones, in the session's transaction
    (one executemany per table for the new rows, one per table and set of changed columns for the others)."""
    new: dict[Table, list[dict[str, Any]]] = {}
    changed: dict[tuple[Table, tuple[str, ...]], list[dict[str, Any]]] = {}
    for row in rows:
        if row.loaded is None:
            new.setdefault(row.TABLE, []).append(row.values())
            continue
        changes = row.changes()
        if changes:
            changed.setdefault((row.TABLE, tuple(sorted(changes))), []).append({KEY: row.id, **changes})
    for table, values in new.items():
        session.execute(insert(table), values)
    for (table, names), params in changed.items():
        statement = update(table).where(table.c.id == bindparam(KEY)).values({n: bindparam(n) for n in names})
        session.execute(statement, params)
