"""What the HTTP API accepts and returns (pydantic models, separate from the tables).

Requests forbid unknown fields, so a typo gets a 422 naming it instead of being
ignored. Times are returned as ISO 8601 in UTC.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from api.models import FlowRun, LogLine, StateEvent, TaskRun
from orchestrator.authoring.naming import MAX_RUN_NAME, run_name_problem
from orchestrator.config.settings import get_settings
from orchestrator.guards import limits
from orchestrator.guards.limits import MAX_NESTING, MAX_QUEUE_LENGTH, queue_problem, shown_parameters

NAME_PATTERN = r"^[A-Za-z0-9_.:@\-]+$"
QUEUE_PATTERN = f"^{limits.QUEUE_PATTERN.pattern}$"  # the schema's view of orchestrator.guards.limits.queue_problem


def when(ts: float | None) -> datetime | None:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(ts, UTC) if ts else None


def no_nul(value: str | None) -> str | None:
    """Refuse NUL characters: databases cannot store them in text."""
    if value is not None and "\x00" in value:
        raise ValueError("must not contain NUL characters")
    return value


def valid_run_name(value: str | None) -> str | None:
    """A run name passes the one rule of :func:`~orchestrator.authoring.naming.run_name_problem`."""
    if value is not None and (problem := run_name_problem(value)):
        raise ValueError(problem)
    return value


def valid_queue(value: str | None) -> str | None:
    """A queue is a Redis key: no name that reaches another (:func:`~orchestrator.guards.limits.queue_problem`)."""
    if value is not None and (problem := queue_problem(value)):
        raise ValueError(problem)
    return value


def valid_start(value: datetime | None) -> datetime | None:
    """A start time that exists in UTC (year 9999 at -23:59 does not): refused here, not a 500 later."""
    if value is None:
        return value
    try:
        when(value.timestamp())
    except (ValueError, OverflowError, OSError):
        raise ValueError(
            f"{value.isoformat()} falls outside the years 1-9999 once converted to UTC; give a start time within them"
        ) from None
    return value


class FlowRunCreate(BaseModel):
    """Body of ``POST /api/flows/{name}/runs``."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = Field(
        default_factory=dict, description=f"Flow parameters by name (JSON values, at most {MAX_NESTING} levels deep)."
    )
    name: str | None = Field(
        default=None, min_length=1, max_length=MAX_RUN_NAME, description="Run name; default: the flow's flow_run_name."
    )
    queue: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_QUEUE_LENGTH,
        pattern=QUEUE_PATTERN,
        description="Queue; default: the flow's. Letters, digits, '.', '_', '-' (a queue is a Redis key).",
    )
    scheduled_start: datetime | None = Field(
        default=None, description="Start no earlier than this (ISO 8601); default: now."
    )

    _check_name = field_validator("name")(valid_run_name)
    _check_queue = field_validator("queue", mode="before")(valid_queue)
    _check_start = field_validator("scheduled_start")(valid_start)


class FlowRunUpdate(BaseModel):
    """Body of ``PATCH /api/flow-runs/{id}``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=MAX_RUN_NAME, description="The run's new name.")

    _check_name = field_validator("name")(valid_run_name)


class FlowRunPublic(BaseModel):
    """A flow run as the API shows it."""

    id: str
    flow_name: str
    name: str
    state: str
    state_message: str
    parent_id: str | None
    root_id: str | None
    queue: str
    parameters: dict[str, Any]
    mode: str
    attempt: int
    created: datetime | None
    scheduled_start: datetime | None
    started: datetime | None
    ended: datetime | None
    updated: datetime | None
    result_refs: list[str] = Field(description="Task runs whose results make up the flow's return value.")
    deployment_id: str | None = Field(default=None, description="The deployment that created the run, if one did.")
    deployment: str | None = Field(
        default=None, description="That deployment's name (in the run list and a single run; null elsewhere)."
    )

    @classmethod
    def of(cls, row: FlowRun, deployment: str | None = None) -> FlowRunPublic:
        return cls.shown(partial(getattr, row), deployment)

    @classmethod
    def of_row(cls, row: Mapping[str, Any], deployment: str | None = None) -> FlowRunPublic:
        """:meth:`of` for a run given as its row's column values (one just created): no ``FlowRun`` is
        built for it (``model_construct`` and its instrumented attributes cost ~10 µs a run created)."""
        return cls.shown(row.__getitem__, deployment)

    @classmethod
    def shown(cls, column: Callable[[str], Any], deployment: str | None = None) -> FlowRunPublic:
        """The run whose column values ``column(name)`` gives, as the API shows it."""
        return cls(
            id=column("id"),
            flow_name=column("flow_name"),
            name=column("name"),
            state=column("state"),
            state_message=column("state_message"),
            parent_id=column("parent_id"),
            root_id=column("root_id"),
            queue=column("queue"),
            parameters=shown_parameters(column("parameters")),
            mode=column("mode"),
            attempt=column("attempt"),
            created=when(column("created")),
            scheduled_start=when(column("scheduled_start")),
            started=when(column("started")),
            ended=when(column("ended")),
            updated=when(column("updated")),
            result_refs=column("result_refs") or [],
            deployment_id=column("deployment_id"),
            deployment=deployment,
        )


class FlowRunPage(BaseModel):
    """One page of flow runs, newest first."""

    items: list[FlowRunPublic]
    total: int
    limit: int
    offset: int


class TaskRunPublic(BaseModel):
    """A task run as the API shows it."""

    id: str
    flow_run_id: str
    task_name: str
    label: str
    state: str
    state_message: str
    worker: str
    attempts: int
    created: datetime | None
    started: datetime | None
    ended: datetime | None
    cached: bool = False  # its result came from the task cache: the function did not run
    cache_key: str = ""  # the key of a task with a cache policy ('' otherwise)

    @classmethod
    def of(cls, row: TaskRun) -> TaskRunPublic:
        return cls(
            id=row.id,
            flow_run_id=row.flow_run_id,
            task_name=row.task_name,
            label=row.label,
            state=row.state,
            state_message=row.state_message,
            worker=row.worker,
            attempts=row.attempts,
            created=when(row.created),
            started=when(row.started),
            ended=when(row.ended),
            cached=row.cached,
            cache_key=row.cache_key,
        )


class TaskFailure(BaseModel):
    """A task run that failed on its own (not UpstreamFailed): what it raised, and where."""

    task_run_id: str
    flow_run_id: str
    label: str
    task_name: str
    state: str
    message: str = Field(description="The exception's class and text, or why it ended (a crash, a timeout).")
    error_type: str = Field(description="The exception's class as module:qualname ('' for a crash or a signal).")
    traceback: str = Field(description="Where its last attempt raised ('' when nothing raised: a crash).")
    worker: str
    attempts: int
    ended: datetime | None

    @classmethod
    def of(cls, row: TaskRun) -> TaskFailure:
        return cls(
            task_run_id=row.id,
            flow_run_id=row.flow_run_id,
            label=row.label,
            task_name=row.task_name,
            state=row.state,
            message=row.state_message,
            error_type=row.error_type,
            traceback=row.traceback,
            worker=row.worker,
            attempts=row.attempts,
            ended=when(row.ended),
        )


class FlowRunFailures(BaseModel):
    """Why a flow run failed: its root cause first, then the other task runs that failed on their own."""

    flow_run_id: str
    state: str
    state_message: str
    root_cause: TaskFailure | None = Field(
        description="The task run that failed on its own first (null: none did, e.g. the run was cancelled)."
    )
    failures: list[TaskFailure] = Field(
        description="Task runs that failed on their own, root cause first, then by end time (at most `limit`)."
    )
    total: int = Field(description="How many task runs failed on their own in all.")
    upstream_failed: int = Field(description="Task runs not run because an upstream failed (UpstreamFailed).")


class StateEventPublic(BaseModel):
    """One transition in a run's history."""

    kind: str
    run_id: str
    label: str = Field(
        default="",
        description="Who changed state, by name: the task run's label (square-0[2] for the third run of a map), "
        "or the flow run's name.",
    )
    state: str
    time: datetime | None
    recorded: datetime | None
    message: str
    cause: str
    applied: bool = Field(description="False when the state machine refused it (a late or duplicate report).")

    @classmethod
    def of(cls, row: StateEvent, label: str = "") -> StateEventPublic:
        return cls(
            kind=row.kind,
            run_id=row.run_id,
            label=label,
            state=row.state,
            time=when(row.ts),
            recorded=when(row.recorded),
            message=row.message,
            cause=row.cause,
            applied=row.applied,
        )


class TaskRunDetail(TaskRunPublic):
    """One task run with its state history and, when it failed on its own, what it raised and where."""

    flow_run_name: str = Field(default="", description="The name of the flow run it belongs to ('' if not recorded).")
    error_type: str = Field(
        default="", description="The exception's class as module:qualname, when it failed on its own ('' otherwise)."
    )
    traceback: str = Field(
        default="", description="Where its last attempt raised, when it failed on its own ('' otherwise)."
    )
    states: list[StateEventPublic] = Field(
        default_factory=list, description="Its transitions in the order they happened (the last `limit`)."
    )
    states_total: int = Field(default=0, description="How many transitions it has in all.")


class LogLinePublic(BaseModel):
    """One log record of a flow run or one of its task runs."""

    seq: int
    flow_run_id: str
    task_run_id: str | None
    label: str = Field(
        default="",
        description="The task run's label (square-0[2] for the third run of a map); empty for the flow run's "
        "own lines, and for a task run not recorded (yet).",
    )
    level: str
    logger: str = Field(
        default="",
        description="The logger that wrote the line: orchestrator.runs (get_run_logger(), log_prints, a failed "
        "attempt's traceback), the task's module, a logger of ORCHESTRATOR_EXTRA_LOGGERS, or py.warnings.",
    )
    message: str
    time: datetime | None

    @classmethod
    def of(cls, row: LogLine, label: str = "") -> LogLinePublic:
        return cls(
            seq=row.seq or 0,
            flow_run_id=row.flow_run_id,
            task_run_id=row.task_run_id,
            label=label,
            level=row.level,
            logger=row.logger,
            message=row.message,
            time=when(row.ts),
        )


class GraphNode(BaseModel):
    """A node of the compiled task graph with the current state of its task run."""

    id: str
    kind: str
    name: str
    label: str
    flow_run_id: str
    upstream: list[str]
    state: str
    mapped: list[dict[str, str]] = Field(
        default_factory=list,
        description="A runtime map's expanded task runs and their states, in index order (at most `limit` "
        "entries per page in all; the rest are on /task-runs).",
    )
    mapped_total: int = Field(default=0, description="How many expanded task runs the map has recorded.")
    child_run_id: str = Field(
        default="",
        description="For a node that stands for a child flow run (kind subflow or flow_run): the child run's id, "
        "once recorded ('' otherwise).",
    )


class TaskStatePublic(BaseModel):
    """A task run's current state, for following a run cheaply (``/task-states?since=``)."""

    id: str
    state: str
    updated: float = Field(description="When the API recorded its last change (seconds since the epoch).")


class TaskStates(BaseModel):
    """The task runs of a run tree whose state was recorded at or after ``since``."""

    flow_run_id: str
    items: list[TaskStatePublic]
    until: float = Field(
        description="The latest ``updated`` among the items (``since`` when none): the next ``since`` to ask with."
    )
    truncated: bool = Field(default=False, description="More changed than one answer holds: ask again from ``until``.")


class Graph(BaseModel):
    """One page of the task graph a flow run was compiled to (empty for a dynamic run until its tasks run).

    Nodes are in plan order; each lists all its upstream node ids, which may be on other pages
    (every edge is listed once, on its downstream node).
    """

    flow_run_id: str
    mode: str
    nodes: list[GraphNode]
    total: int = Field(default=0, description="Nodes in the whole graph.")
    limit: int = Field(default=0, description="The most nodes this page could hold.")
    offset: int = Field(default=0, description="Nodes before this page.")
    next_offset: int | None = Field(default=None, description="The offset of the next page; null on the last.")


class FlowPublic(BaseModel):
    """A flow some worker registered."""

    name: str
    queue: str | None = None
    description: str = ""
    module: str | None = None
    name_template: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict, description="JSON Schema of the flow's parameters.")


class WorkerPublic(BaseModel):
    """A live worker and what it consumes."""

    hostname: str
    queues: list[str] = Field(default_factory=list)
    flows: list[str] = Field(default_factory=list)
    extra: dict[str, Any] = Field(default_factory=dict)


PartState = Literal["ok", "unavailable"]


class HealthDetails(BaseModel):
    """What went wrong, in words (URLs masked); only for a caller allowed to use the rest of the API."""

    database: str
    redis: str
    recorder: str


class Health(BaseModel):
    """Whether the API's dependencies answer: state words only, safe to show to anyone (a probe
    needs no key), so no error text or URL; ``details`` holds those for a caller with the key."""

    status: PartState
    database: PartState
    redis: PartState
    recorder: Literal["ok", "failing", "not running"] = Field(
        description="The event recorder of this process ('not running': it runs elsewhere, "
        "ORCHESTRATOR_API_SERVICES=false)."
    )
    events_backlog: int | None = Field(
        default=None,
        description="Events (states, log lines) waiting in the Redis stream for a recorder to write them to the "
        "database; null when Redis did not answer. They are kept until recorded, however many.",
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What works but needs a look, in words (no URL, no error text): an event backlog past "
        "ORCHESTRATOR_EVENTS_BACKLOG_WARN. A warning leaves the status 'ok' and the answer 200.",
    )
    details: HealthDetails | None = Field(
        default=None,
        description="The errors behind each state (URLs masked); null unless the request carries the API key "
        "(or the server has none and answers loopback callers only).",
    )


LatePolicy = Literal["run_all", "newest_only", "cancel_older_than"]
MAX_AGE = 10 * 366 * 86400.0  # ten years: anything larger is a mistake


def min_interval_seconds() -> float:
    """How often a deployment may run at most (ORCHESTRATOR_SCHEDULE_MIN_INTERVAL_SECONDS; cron: once a minute)."""
    return get_settings().schedule_min_interval_seconds


def interval_problem(value: float | None) -> str | None:
    """Why ``interval_seconds`` would start runs more often than the configured floor, or None."""
    floor = min_interval_seconds()
    if value is None or value >= floor:
        return None
    return (
        f"interval_seconds must be at least {floor:g} (got {value:g}): a deployment starts at most one "
        f"run every {floor:g} s (ORCHESTRATOR_SCHEDULE_MIN_INTERVAL_SECONDS); for more, submit runs yourself"
    )


MAX_CANCELLED_PER_CLEANUP = 500  # Late runs one cleanup request cancels; the answer says how many remain


class DeploymentCreate(BaseModel):
    """Body of ``POST /api/deployments`` (creates, or replaces the one with the same name)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=NAME_PATTERN)
    flow_name: str = Field(min_length=1, max_length=200)
    queue: str | None = Field(default=None, min_length=1, max_length=MAX_QUEUE_LENGTH, pattern=QUEUE_PATTERN)
    parameters: dict[str, Any] = Field(default_factory=dict)
    cron: str | None = Field(
        default=None, min_length=1, max_length=200, description="5 fields, e.g. '0 2 * * *' (02:00 every day)"
    )
    interval_seconds: float | None = Field(
        default=None,
        le=366 * 86400,
        description="Seconds between runs, at least ORCHESTRATOR_SCHEDULE_MIN_INTERVAL_SECONDS (default 10).",
    )
    timezone: str = Field(
        default="UTC", min_length=1, max_length=64, description="IANA name for cron, e.g. Europe/Paris"
    )
    paused: bool = False
    late_policy: LatePolicy = "run_all"
    late_max_age_seconds: float | None = Field(default=None, gt=0, le=MAX_AGE)
    concurrency_limit: int | None = Field(
        default=None, ge=0, le=100_000, description="Flow runs of this deployment under way at once (none: no limit)."
    )
    retention_days: float | None = Field(
        default=None,
        gt=0,
        le=100_000,
        description="Its finished runs are deleted this many days after they ended (none: the flow's or the "
        "server's retention, ORCHESTRATOR_RETENTION_DAYS_BY_FLOW / ORCHESTRATOR_RETENTION_DAYS).",
    )

    _check_text = field_validator("name", "flow_name", "cron", "timezone")(no_nul)
    _check_queue = field_validator("queue", mode="before")(valid_queue)

    @field_validator("interval_seconds")
    @classmethod
    def _floor(cls, value: float | None) -> float | None:
        """Refuse schedules that would start a run more often than the configured floor."""
        if problem := interval_problem(value):
            raise ValueError(problem)
        return value


class DeploymentPublic(BaseModel):
    """A deployment as the API shows it."""

    id: str
    name: str
    flow_name: str
    queue: str | None
    parameters: dict[str, Any]
    cron: str | None
    interval_seconds: float | None
    timezone: str
    paused: bool
    late_policy: str
    late_max_age_seconds: float | None
    concurrency_limit: int | None
    retention_days: float | None = None
    created: datetime | None
    next_runs: list[datetime] = Field(default_factory=list, description="Start times of its Scheduled runs.")


class DeploymentRunCreate(BaseModel):
    """Body of ``POST /api/deployments/{name}/runs``: run it now, maybe with other parameters."""

    model_config = ConfigDict(extra="forbid")

    parameters: dict[str, Any] = Field(default_factory=dict)
    idempotency_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="The same key gives the same run: a second request answers the run the first one made.",
    )
    parent_flow_run_id: str | None = Field(
        default=None, max_length=64, description="The flow run that starts this one (run_deployment in a flow body)."
    )
    parent_task_run_id: str | None = Field(default=None, max_length=200, description="That flow run's node.")


def as_utc(value: datetime) -> datetime:
    """A time without a zone is taken as UTC (the API's times are all UTC)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class DeploymentBackfill(BaseModel):
    """Body of ``POST /api/deployments/{name}/backfill``: the past range to make the schedule's runs for."""

    model_config = ConfigDict(extra="forbid")

    start: datetime = Field(description="First start time covered (included); UTC when no zone is given.")
    end: datetime = Field(description="End of the range (excluded), at most now; UTC when no zone is given.")

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        """Zoneless times are UTC; a time that does not exist in UTC is refused."""
        return valid_start(as_utc(value)) or value


class BackfillResult(BaseModel):
    """What a backfill did: the schedule's start times in the range, and what became of each."""

    deployment: str
    start: datetime
    end: datetime
    start_times: int = Field(description="Start times of the schedule in [start, end).")
    created: list[str] = Field(description="Ids of the runs made now (Scheduled at their start times).")
    existing: int = Field(description="Start times that already had a run (an earlier backfill, the scheduler).")
    skipped_by_policy: int = Field(description="Start times the deployment's late-run policy leaves out.")
    late_policy: str
    concurrency_limit: int | None = Field(description="The dispatcher sends at most this many at once.")
    paused: bool = Field(description="A paused deployment's runs wait until it is resumed.")


class DeploymentDeleted(BaseModel):
    """What deleting a deployment did to its runs."""

    name: str
    cancelled: list[str] = Field(description="Its runs not started yet (scheduled, late, held, sent): cancelled.")
    kept: int = Field(description="Its runs under way or finished: kept, with their history.")


class FlowRunDeleted(BaseModel):
    """What deleting a flow run removed (``DELETE /api/flow-runs/{id}``)."""

    id: str
    flow_runs: list[str] = Field(description="The run and its subflow runs (its whole tree), deleted.")
    task_runs: int = Field(description="Task runs deleted with them.")
    state_events: int = Field(description="State history rows deleted.")
    log_lines: int = Field(description="Log lines deleted.")
    redis_keys: int = Field(description="Keys of these runs that Redis still held, removed.")
    results: int | None = Field(
        description="Persisted results (persist_result=True) removed from the result storage; null when not asked "
        "(?results=true)."
    )


class LateCleanup(BaseModel):
    """Body of ``POST /api/flow-runs/late/cleanup``: a policy and which Late runs it applies to."""

    model_config = ConfigDict(extra="forbid")

    policy: LatePolicy
    max_age_seconds: float | None = Field(default=None, gt=0, le=MAX_AGE, description="For cancel_older_than.")
    deployment: str | None = Field(default=None, max_length=200)
    flow: str | None = Field(default=None, max_length=200)
    queue: str | None = Field(default=None, max_length=200)
    all_flows: bool = Field(
        default=False, description="Apply the policy to every flow's Late runs (needed when no filter is given)."
    )
    limit: int = Field(
        default=MAX_CANCELLED_PER_CLEANUP,
        ge=1,
        le=MAX_CANCELLED_PER_CLEANUP,
        description="Cancel at most this many runs in this request; `remaining` says how many are left.",
    )

    _check_text = field_validator("deployment", "flow", "queue")(no_nul)


class LateCleanupResult(BaseModel):
    """What a late-run cleanup did."""

    policy: str
    late: int = Field(description="Late runs matching the filters when the request came.")
    cancelled: int = Field(description="Runs this request cancelled.")
    kept: int = Field(description="Late runs left (late - cancelled), those still to cancel included.")
    remaining: int = Field(description="Runs the policy would still cancel: send the request again for them.")


class Diagnosis(BaseModel):
    """Why a run is (not) running, in plain words, with the facts behind them."""

    flow_run_id: str
    flow_run_name: str = Field(default="", description="The run's name (flow_run_id is its whole id).")
    state: str
    summary: str
    reasons: list[str]
    facts: dict[str, Any]


class Accepted(BaseModel):
    """An action was started; the run's events will show its effect."""

    id: str
    action: str
    detail: str


class ConcurrencyLimitCreate(BaseModel):
    """Body of ``POST /api/concurrency-limits`` (creates, or changes the limit of the tag)."""

    model_config = ConfigDict(extra="forbid")

    tag: str = Field(min_length=1, max_length=200, pattern=NAME_PATTERN, description="Tasks with tags=[tag] count.")
    limit: int = Field(ge=0, le=100_000, description="Task runs with the tag that may run at once (0: none).")


class SlotHolder(BaseModel):
    """A task run holding a slot of a concurrency limit."""

    task_run_id: str
    label: str
    task: str
    flow_run_id: str
    worker: str
    state: str


class ConcurrencyLimitPublic(BaseModel):
    """A tag's concurrency limit and who holds its slots now."""

    tag: str
    limit: int
    active: int = Field(description="Slots held by live leases.")
    holders: list[SlotHolder]
    created: datetime | None
