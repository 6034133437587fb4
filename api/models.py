"""The database tables (SQLModel): flow runs, task runs, their state history and logs.

Times are seconds since the epoch (floats): the same stamps the workers write, with
no time zone ambiguity between SQLite and PostgreSQL; the HTTP layer shows them as
ISO 8601 UTC. Every event-sourced row carries the id of the stream event it came
from, unique, so an event delivered twice is applied once.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Column, ColumnElement, Index, Text, or_
from sqlalchemy.orm import configure_mappers
from sqlmodel import Field, SQLModel, col


class Deployment(SQLModel, table=True):
    """A flow with its parameters, queue and schedule: the scheduler creates its runs ahead of time."""

    __tablename__ = "deployment"

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(unique=True, max_length=200)
    flow_name: str = Field(max_length=200)
    queue: str | None = Field(default=None, max_length=200)
    parameters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    cron: str | None = Field(default=None, max_length=200)
    interval_seconds: float | None = None
    timezone: str = Field(default="UTC", max_length=64)
    paused: bool = False
    late_policy: str = Field(default="run_all", max_length=32)
    late_max_age_seconds: float | None = None
    concurrency_limit: int | None = None  # flow runs of this deployment that may be under way at once
    retention_days: float | None = None  # its finished runs are deleted this long after they end (docs/retention.md)
    created: float
    updated: float
    scheduled_until: float | None = None  # start time of the last run the scheduler created


class ConcurrencyLimit(SQLModel, table=True):
    """How many task runs carrying ``tag`` may run at once across the fleet (mirrored to Redis)."""

    __tablename__ = "concurrency_limit"

    tag: str = Field(primary_key=True, max_length=200)
    slots: int
    created: float
    updated: float


class FlowRun(SQLModel, table=True):
    """One run of a flow (a subflow run has a parent); its current state and record."""

    __tablename__ = "flow_run"
    __table_args__ = (
        Index("ix_flow_run_state_scheduled", "state", "scheduled_start"),
        Index("ux_flow_run_deployment_start", "deployment_id", "scheduled_start", unique=True),
    )

    id: str = Field(primary_key=True, max_length=64)
    flow_name: str = Field(default="", max_length=200)  # indexed with created (below)
    name: str = Field(default="", index=True, max_length=500)
    renamed: bool = False  # renamed by request or by rename_flow_run(): later records do not rename it back
    state: str = Field(default="Pending", max_length=32)  # indexed with created (below)
    state_message: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    parent_id: str | None = Field(default=None, index=True, max_length=64)
    root_id: str | None = Field(default=None, max_length=64)
    queue: str = Field(default="", max_length=200)
    parameters: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    mode: str = Field(default="", max_length=16)
    attempt: int = 1
    created: float  # indexed newest first (below)
    scheduled_start: float | None = None
    dispatched: bool = True
    started: float | None = None
    ended: float | None = None
    updated: float = 0.0
    result_refs: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    plan: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    deployment_id: str | None = Field(default=None, max_length=64)


# The run list's order (newest first, ties by id), alone and after its two common filters: a page
# walks one of these and stops after `limit` entries (api/run_list.py; migrations 0005, 0009). The first
# also holds the name, so that a search in names reads this index, not every row.
Index("ix_flow_run_created_id", col(FlowRun.created).desc(), col(FlowRun.id), col(FlowRun.name))
Index("ix_flow_run_state_created", col(FlowRun.state), col(FlowRun.created).desc(), col(FlowRun.id))
Index("ix_flow_run_flow_created", col(FlowRun.flow_name), col(FlowRun.created).desc(), col(FlowRun.id))
Index("ix_flow_run_deployment_created", col(FlowRun.deployment_id), col(FlowRun.created).desc(), col(FlowRun.id))
Index("ix_flow_run_ended", col(FlowRun.ended))  # retention walks finished runs oldest end first


class TaskRun(SQLModel, table=True):
    """One task run (one attempt counter per run; retries keep the same row)."""

    __tablename__ = "task_run"

    id: str = Field(primary_key=True, max_length=100)
    flow_run_id: str = Field(default="", index=True, max_length=64)
    # the root of a subflow's task runs (/task-runs of a root finds them by it); "" when it is flow_run_id
    root_id: str = Field(default="", index=True, max_length=64)
    task_name: str = Field(default="", max_length=300)
    label: str = Field(default="", max_length=300)
    state: str = Field(default="Pending", max_length=32)
    state_message: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    worker: str = Field(default="", max_length=300)
    attempts: int = 0
    created: float = 0.0
    started: float | None = None
    ended: float | None = None
    updated: float = 0.0
    cached: bool = False  # completed from the task cache: its function did not run
    cache_key: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    # what its last failed attempt raised (class as module:qualname) and where: /failures shows them
    error_type: str = Field(default="", max_length=300)
    traceback: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))


class StateEvent(SQLModel, table=True):
    """One transition of a flow run or task run, as it was reported, in stream order.

    ``applied`` is False for an event the state machine refused (a late or duplicate
    report): it is kept so the history is honest, but it changed nothing.
    """

    __tablename__ = "state_event"
    __table_args__ = (Index("ix_state_event_run", "run_id", "seq"),)

    seq: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, max_length=64)
    kind: str = Field(max_length=16)  # flow_run | task_run
    run_id: str = Field(max_length=100)
    flow_run_id: str = Field(default="", index=True, max_length=64)
    state: str = Field(max_length=32)
    ts: float
    recorded: float
    message: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    cause: str = Field(default="", max_length=300)
    applied: bool = True


class LogLine(SQLModel, table=True):
    """One log record of a flow or task run: the run logger's, a task module's own logger's, an extra
    logger's (ORCHESTRATOR_EXTRA_LOGGERS), a warning, or a failed attempt's traceback."""

    __tablename__ = "log_line"
    __table_args__ = (Index("ix_log_line_flow_run", "flow_run_id", "seq"),)

    seq: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(unique=True, max_length=64)
    flow_run_id: str = Field(max_length=64)
    task_run_id: str | None = Field(default=None, max_length=100)
    level: str = Field(default="INFO", max_length=16)
    logger: str = Field(default="", max_length=200)  # the logger that wrote it ('' in rows before migration 0007)
    message: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    ts: float


def in_run_tree(run_id: str) -> ColumnElement[bool]:
    """Rows of the task runs of a flow run, and of its whole tree when it is a root (its subflows'
    task runs carry its id as their root): served by the indexes on flow_run_id and root_id."""
    return or_(col(TaskRun.flow_run_id) == run_id, col(TaskRun.root_id) == run_id)


def is_tree_root() -> ColumnElement[bool]:
    """Rows of flow runs that are the root of their run tree: no parent, or a run of its own a
    parent's plan node started (it has a parent, and is its own root). Subflows traced into their
    parent's tree are not: their parent's tree decides, stops and times them."""
    return or_(col(FlowRun.parent_id).is_(None), col(FlowRun.root_id) == col(FlowRun.id))


# Set up the ORM's attributes now, not at the first ORM query: a row built with ``model_construct``
# (what the submit routes answer from) reads them, and no ORM statement may have run before it
# (the submitter writes with Core inserts).
configure_mappers()
