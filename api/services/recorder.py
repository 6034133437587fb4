"""The recorder: reads state and log events from the Redis stream and writes them to the database.

Workers append every state change and log line to one Redis stream. The recorder
reads it with a consumer group, applies a batch in one transaction, and only then
acknowledges it: an API killed mid-batch leaves the batch pending, and the next
recorder reads it again. Each event is applied once (its stream id is a unique key)
and through the one state machine of :mod:`orchestrator.states`, so a duplicate or
late event never moves a run backwards. Only one recorder is active at a time (a
lease in Redis) so that the events of a run are applied in the order they happened.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, insert, union_all
from sqlalchemy.exc import DataError, IntegrityError, ProgrammingError
from sqlmodel import Session, col, select

from api.db import chunks
from api.metrics import Metrics, RunEnd
from api.models import FlowRun, LogLine, StateEvent
from api.services import recorder_rows
from api.services.created_runs import CreatedRuns, created_runs
from api.services.outage import FIRST_WAIT, RedisOutage, next_wait
from api.services.recorder_rows import FlowRow, TaskRow, scrubbed, table_of
from orchestrator.data.serialization import to_plain
from orchestrator.errors import ConnectionProblem
from orchestrator.guards.redaction import mask_urls_in
from orchestrator.runstate import events as stream
from orchestrator.runstate.connection import RedisUnavailable
from orchestrator.runstate.event_stream import DEAD_LETTERS, Entry
from orchestrator.runstate.leases import RECORDER_LEASE
from orchestrator.runstate.records import parse_float, parse_json
from orchestrator.runstate.store import RunStore
from orchestrator.states import FAILED_STATES, StateType, can_transition

log = logging.getLogger("orchestrator.recorder")

LEASE_SECONDS = 15
# After a batch smaller than a full one, wait this long before reading again. A batch costs ~2 ms of CPU
# whatever its size (five statements, a commit, five Redis round trips): read as soon as each event came,
# the batches of a busy fleet held a few events each and the recorder took most of the API's CPU, beside
# the HTTP requests under the one interpreter lock (issue 18). Adds at most this much to the recording lag.
GATHER_SECONDS = 0.05
TRACEBACK_LOG_LINES = 200  # lines of a traceback written as log lines (the innermost ones)
RUN_LOGGER = "orchestrator.runs"  # the logger name of the lines the recorder writes itself (ends, tracebacks)
FAILED_STATE_NAMES = frozenset(state.value for state in FAILED_STATES)
PENDING = StateType.PENDING.value
# The record fields of a Pending event the submitter's row already holds as the event has them (the
# same NewFlowRun wrote both); a field outside these (mode, attempt, parent, ...) takes the full path.
# scheduled_start and state are not copied onto the row by merge_flow_record.
AS_SUBMITTED = frozenset(
    {"id", "flow", "name", "name_given", "root", "queue", "parameters", "created", "scheduled_start", "state"}
)


@dataclass
class Event:
    """One stream entry: its id (the event's unique key in the database) and the typed event."""

    stream_id: str
    body: stream.StreamEvent

    @property
    def kind(self) -> str:
        return self.body.kind

    @property
    def run_id(self) -> str:
        return self.body.id

    @property
    def record(self) -> dict[str, Any]:
        return self.body.record if isinstance(self.body, stream.StateChange) else {}


def parse(entries: Iterable[Entry]) -> list[Event]:
    """Stream entries as events; an entry that is no event is logged and skipped (still acknowledged)."""
    events = []
    for stream_id, fields in entries:
        try:
            events.append(Event(stream_id, stream.decode(fields.get("event", ""))))
        except stream.EventFormatError as exc:
            log.warning("event %s skipped (%s): %r", stream_id, exc, fields)
    return events


def merge_flow_record(row: FlowRow, rec: dict[str, Any]) -> None:
    """Copy the descriptive fields an event carries onto the flow run row."""
    if rec.get("flow"):
        row.flow_name = str(rec["flow"])
    if rec.get("name") and not row.renamed:
        row.name = str(rec["name"])
    if rec.get("parent"):
        row.parent_id = str(rec["parent"])
    if rec.get("root"):
        row.root_id = str(rec["root"])
    if rec.get("queue"):
        row.queue = str(rec["queue"])
    if "parameters" in rec:
        params = parse_json(rec["parameters"], {})
        row.parameters = to_plain(params) if isinstance(params, dict) else {}
    if rec.get("mode"):
        row.mode = str(rec["mode"])
    if rec.get("attempt"):
        row.attempt = int(float(rec["attempt"]))
    if "result_refs" in rec:
        row.result_refs = list(parse_json(rec["result_refs"], []))
    created = parse_float(rec.get("created"))
    if created is not None:
        row.created = min(row.created, created) if row.created else created


def merge_task_record(row: TaskRow, rec: dict[str, Any]) -> None:
    """Copy the descriptive fields an event carries onto the task run row."""
    for source, target in (("flow_run_id", "flow_run_id"), ("root", "root_id"), ("label", "label")):
        if rec.get(source):
            setattr(row, target, str(rec[source]))
    if row.root_id == row.flow_run_id:  # kept only for a subflow's task runs: in_run_tree finds the rest by
        row.root_id = ""  # flow_run_id, and an empty key costs the row and its index 36 bytes less
    if rec.get("name"):
        row.task_name = str(rec["name"])
    if rec.get("worker"):
        row.worker = str(rec["worker"])
    if rec.get("attempts"):
        row.attempts = int(float(rec["attempts"]))
    if rec.get("cache_key"):  # a task with a cache policy: the key, and whether its result came from the cache
        row.cache_key = str(rec["cache_key"])
        row.cached = str(rec.get("cached")) == "1"
    created = parse_float(rec.get("created"))
    if created is not None and not row.created:
        row.created = created


def cause_of(event: Event) -> str:
    """Who or what made the change, for the history."""
    rec = event.record
    body = event.body
    cause = body.cause if isinstance(body, stream.StateChange | stream.Renamed) else ""
    if cause or rec.get("cause"):
        return str(cause or rec.get("cause"))
    if isinstance(body, stream.StateChange) and body.reopen:
        return "retry requested"
    if rec.get("worker"):
        return f"worker {rec['worker']}"
    return "fleet"


@dataclass
class Batch:
    """What one batch of events changes, built in memory and written in one transaction."""

    flows: dict[str, FlowRow] = field(default_factory=dict)  # plain rows, written with Core (recorder_rows)
    tasks: dict[str, TaskRow] = field(default_factory=dict)
    stateless: set[tuple[str, str]] = field(default_factory=set)  # rows created here, no state applied yet
    history: list[dict[str, Any]] = field(default_factory=list)  # state_event rows (insert-only: no ORM objects)
    logs: list[dict[str, Any]] = field(default_factory=list)  # log_line rows
    plans_wanted: set[str] = field(default_factory=set)
    ended: list[RunEnd] = field(default_factory=list)  # runs this batch moved to a final state (metrics)


class Recorder:
    """Moves events from the Redis stream into the database, batch by batch."""

    def __init__(
        self,
        store: RunStore,
        engine: Engine,
        consumer: str,
        batch_size: int = 2000,
        outage: RedisOutage | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics  # the app's: lag, task durations, ends and dead letters observed here
        self.outage = outage or RedisOutage(store.url)
        self.stream = store.events
        self.engine = engine
        self.consumer = consumer
        self.batch_size = batch_size
        self.recorded = 0
        self.last_error = ""
        self.gather_seconds = GATHER_SECONDS
        self.created: CreatedRuns = created_runs  # runs this process's submitter committed (their Pending is known)

    # -- the stream -----------------------------------------------------------------
    def ensure_group(self) -> None:
        """Create the consumer group at the stream's start: events sent while no API ran are recorded too."""
        self.stream.ensure_group()

    def hold_lease(self) -> bool:
        """Take or renew the single-recorder lease; False while another recorder holds it."""
        return self.store.leases.hold(RECORDER_LEASE, self.consumer, LEASE_SECONDS)

    def release_lease(self) -> None:
        self.store.leases.release(RECORDER_LEASE, self.consumer)

    def read(self, block_ms: int) -> list[Entry]:
        """Our own unacknowledged events first, then those a dead consumer left, then new ones."""
        return self.stream.read(self.consumer, self.batch_size, block_ms)

    def step(self, block_ms: int = 1000) -> int:
        """Read, apply and acknowledge one batch; returns how many entries it handled."""
        entries = self.read(block_ms)
        if not entries:
            return 0
        events = parse(entries)
        if not self.apply_retrying(events):
            log.warning("recorder: a batch was refused; applying its events one by one")
            self.apply_each(events)
        self.stream.acknowledge([stream_id for stream_id, _ in entries])
        self.recorded += len(entries)
        return len(entries)

    def apply_retrying(self, events: list[Event], attempts: int = 4) -> bool:
        """Apply a batch; False if the database keeps refusing it (a bad event, not an outage).

        An IntegrityError is first taken for a race: the API was creating one of these
        runs in a transaction not committed when the batch was read; read again once
        that commit is done.
        """
        for attempt in range(attempts):
            try:
                self.apply(events)
                return True
            except IntegrityError:
                time.sleep(0.05 * (attempt + 1))
            except (DataError, ProgrammingError):
                return False
        return False

    def apply_each(self, events: list[Event]) -> None:
        """Apply events one at a time; one the database refuses goes to the dead-letter list, named in the log."""
        for event in events:
            try:
                self.apply([event])
            except (DataError, IntegrityError, ProgrammingError) as exc:
                log.error(
                    "recorder: event %s refused by the database (%s); kept in %s", event.stream_id, exc, DEAD_LETTERS
                )
                self.stream.keep_refused(event.stream_id, stream.to_wire(event.body), str(exc))
                if self.metrics is not None:
                    self.metrics.dead_lettered.inc()

    def run(self, stop: threading.Event) -> None:
        """Loop until ``stop`` is set; Redis or database outages are waited out, never fatal.

        Redis away is told once through ``self.outage`` (shared with the services loop), not on
        every retry; any other error (the database away, say) is logged on each retry, with the
        pause growing to a few seconds.
        """
        wait = FIRST_WAIT
        while not stop.is_set():
            try:
                self.ensure_group()
                if not self.hold_lease():
                    self.outage.back()
                    stop.wait(2)
                    continue
                self.outage.back()
                handled = self.step()
                wait = FIRST_WAIT
                self.last_error = ""
                if 0 < handled < self.batch_size:
                    stop.wait(self.gather_seconds)  # let more events come: one batch for them all
            except Exception as exc:  # keep the events pending; try again after a pause
                self.last_error = mask_urls_in(f"{type(exc).__name__}: {exc}")
                if isinstance(exc, (*RedisUnavailable, ConnectionProblem)):
                    self.outage.lost(exc)
                else:
                    log.warning("recorder: %s; retrying in %.1fs", self.last_error, wait)
                stop.wait(wait)
                wait = next_wait(wait)
        try:
            self.release_lease()
        except RedisUnavailable:
            pass  # Redis away at shutdown: the lease expires on its own within LEASE_SECONDS

    # -- applying a batch -----------------------------------------------------------
    def apply(self, events: list[Event]) -> None:
        """Apply events in stream order in one transaction (a no-op for events seen before)."""
        if not events:
            return
        # Not expired on commit: the session ends with the batch, and reading a row's state after the commit
        # (completed_with_graph) reloaded each row of the batch with one SELECT each (~40% of a state event's CPU).
        with Session(self.engine, expire_on_commit=False) as session:
            known = self._known_pending(session, events)
            seen = self._seen(session, [e for e in events if e.stream_id not in known])
            fresh = [e for e in events if e.stream_id not in seen and e.stream_id not in known]
            batch = self._load(session, fresh)
            recorded = time.time()
            for event in fresh:
                if event.kind == "flow_run":
                    self._flow_event(batch, event, recorded)
                elif event.kind == "task_run":
                    self._task_event(batch, event, recorded)
                elif isinstance(event.body, stream.Renamed):
                    row = batch.flows.get(event.run_id)
                    if row is not None and event.body.name:
                        row.name = event.body.name
                        row.renamed = True
                        row.updated = recorded
                elif isinstance(event.body, stream.LogLine):
                    batch.logs.append(self._log_line(event.stream_id, event.body))
            self._attach_plans(batch)
            written = time.time()  # what the history calls "recorded": just before the commit
            for entry in batch.history:
                entry["recorded"] = written
            recorder_rows.write(session, [*batch.flows.values(), *batch.tasks.values()])  # NULs dropped there
            # History and log lines are only ever inserted: as plain rows they skip building an ORM
            # object each (about a third of a batch's CPU time), in the same transaction, in stream order.
            for model, rows in ((StateEvent, batch.history), (LogLine, batch.logs)):
                if rows:
                    session.execute(insert(table_of(model)), [scrubbed(row) for row in rows])  # Core: no ORM bulk path
            session.commit()
            self.created.forget(e.run_id for e in events if flow_pending(e) is not None)  # a Pending event comes once
            self.store.flow_runs.plans_recorded(completed_with_graph(batch.flows.values()))
            if self.metrics is not None:
                stamps = [e.body.ts for e in events if e.stream_id in known] + [e.body.ts for e in fresh]
                self.metrics.batch_recorded(session, stamps, written, batch.ended)

    def _known_pending(self, session: Session, events: list[Event]) -> dict[str, str]:
        """The batch's Pending events of runs this API's submitter created whose row is still as created
        (stream id -> run id): applying one would change nothing (same state, message and record), so it
        is neither loaded nor applied. Its run's other events in the batch are applied as ever.

        Decided from the event, the submitter's list (the row was written from the record the event
        carries) and one query of ids (the row is still Pending with no message: no cancel, no Late since).
        """
        candidates = {
            e.stream_id: e.run_id
            for e in events
            if (change := flow_pending(e)) is not None
            and not change.reopen
            and not change.message
            and not change.record.keys() - AS_SUBMITTED
        }
        if not candidates:
            return {}
        listed = self.created.listed(candidates.values())
        if not listed:
            return {}
        as_created: set[str] = set()
        for part in chunks(sorted(listed)):
            query = select(FlowRun.id).where(
                col(FlowRun.id).in_(part), col(FlowRun.state) == PENDING, col(FlowRun.state_message) == ""
            )
            as_created.update(session.exec(query).all())
        return {stream_id: run_id for stream_id, run_id in candidates.items() if run_id in as_created}

    def _seen(self, session: Session, events: list[Event]) -> set[str]:
        ids = [e.stream_id for e in events]
        seen: set[str] = set()
        for part in chunks(ids):  # one statement for both tables: a batch of a few events paid for each
            query = union_all(
                select(StateEvent.event_id).where(col(StateEvent.event_id).in_(part)),
                select(LogLine.event_id).where(col(LogLine.event_id).in_(part)),
            )
            seen.update(session.execute(query).scalars())
        return seen

    def _load(self, session: Session, events: list[Event]) -> Batch:
        """Rows of the runs the batch touches; runs the database lacks get their record from Redis."""
        batch = Batch()
        flow_ids = {e.run_id for e in events if e.kind in ("flow_run", "flow_run_rename")}
        task_ids = {e.run_id for e in events if e.kind == "task_run" and not e.run_id.startswith("body:")}
        batch.flows.update(recorder_rows.load(session, FlowRow, flow_ids))
        batch.tasks.update(recorder_rows.load(session, TaskRow, task_ids))
        described = {e.run_id for e in events if e.record.get("flow")}
        missing_flows = sorted(i for i in flow_ids if i not in batch.flows and i not in described)
        missing_tasks = sorted(i for i in task_ids if i not in batch.tasks)
        for run_id, rec in zip(missing_flows, self.store.flow_runs.read_many(missing_flows), strict=True):
            row = FlowRow(id=run_id, created=parse_float(rec.get("created")) or time.time())
            merge_flow_record(row, rec)
            batch.flows[run_id] = row
            batch.stateless.add(("flow_run", run_id))
        for trid, rec in zip(missing_tasks, self.store.task_runs.read_many(missing_tasks), strict=True):
            task = TaskRow(id=trid, created=parse_float(rec.get("created")) or 0.0)
            merge_task_record(task, rec)
            batch.tasks[trid] = task
            batch.stateless.add(("task_run", trid))
        return batch

    def _flow_event(self, batch: Batch, event: Event, recorded: float) -> None:
        row = batch.flows.get(event.run_id)
        if row is None:
            row = FlowRow(id=event.run_id, created=parse_float(event.record.get("created")) or event.body.ts)
            batch.flows[event.run_id] = row
            batch.stateless.add(("flow_run", event.run_id))
        merge_flow_record(row, event.record)
        before = None if ("flow_run", row.id) in batch.stateless else row.state
        self._transition(batch, row, event, recorded, "flow_run", row.id)
        if row.state != before and row.state in FAILED_STATE_NAMES:  # its end, once: in its logs, root cause first
            batch.logs.append(
                {
                    "event_id": f"{event.stream_id}/end",
                    "flow_run_id": row.id,
                    "task_run_id": None,
                    "level": "ERROR",
                    "logger": RUN_LOGGER,
                    "message": f"flow run {row.name or row.id} ended {row.state}: {row.state_message}",
                    "ts": event.body.ts or recorded,
                }
            )
        if row.mode == "static" and row.plan is None and (row.root_id in (None, row.id)):
            batch.plans_wanted.add(row.id)

    def _task_event(self, batch: Batch, event: Event, recorded: float) -> None:
        if event.run_id.startswith("body:"):
            return  # a dynamic flow's body: its own flow run events tell its story
        row = batch.tasks.get(event.run_id)
        if row is None:
            row = TaskRow(id=event.run_id, created=event.body.ts)
            batch.tasks[event.run_id] = row
            batch.stateless.add(("task_run", event.run_id))
        merge_task_record(row, event.record)
        self._transition(batch, row, event, recorded, "task_run", row.flow_run_id)
        if event.record.get("traceback"):
            self._keep_traceback(batch, row, event)

    def _transition(
        self, batch: Batch, row: FlowRow | TaskRow, event: Event, recorded: float, kind: str, flow_run_id: str
    ) -> None:
        """Apply one state event through the state machine and keep it in the history."""
        change = event.body
        assert isinstance(change, stream.StateChange)  # only state changes reach here
        try:
            new = StateType(change.state)
        except ValueError:
            log.warning("event %s has an unknown state %r; skipped", event.stream_id, change.state)
            return
        current = None if (kind, row.id) in batch.stateless else StateType(row.state)
        reopen = change.reopen
        message = change.message
        ts = change.ts or recorded
        allowed = can_transition(current, new, reopen=reopen)
        if allowed and current is new and message == row.state_message and not reopen:
            return  # the same state reported again: nothing to record
        if allowed:
            batch.stateless.discard((kind, row.id))
            row.state = new.value
            row.state_message = message
            if new in (StateType.RUNNING, StateType.RETRYING) and (row.started is None or reopen):
                row.started = parse_float(event.record.get("started")) or ts
            if new.is_final:
                row.ended = parse_float(event.record.get("ended")) or ts
                if current is not new:
                    batch.ended.append(RunEnd.of_flow(row) if isinstance(row, FlowRow) else RunEnd.of_task(row))
            elif reopen:
                row.ended = None
        row.updated = recorded
        batch.history.append(
            {
                "event_id": event.stream_id,
                "kind": kind,
                "run_id": row.id,
                "flow_run_id": flow_run_id or "",
                "state": new.value,
                "ts": ts,
                "recorded": recorded,
                "message": message,
                "cause": cause_of(event)[:300],
                "applied": allowed,
            }
        )

    @staticmethod
    def _keep_traceback(batch: Batch, row: TaskRow, event: Event) -> None:
        """A failed attempt's traceback: kept on the task run when it ended it (``/failures``), and
        written among the run's log lines either way, as ERROR lines of the run logger (the attempt
        failed, whether a retry follows or not, as Prefect logs it), so ``flow-run logs`` shows where
        each attempt failed, under the task's name. The worker ships no copy of its own: this is the
        one place a traceback becomes log lines.

        One log line per line of the traceback, after a headline naming the task: a log line is one
        line wherever it is shown (the CLI escapes a newline inside one rather than let it forge another).
        """
        change = event.body
        assert isinstance(change, stream.StateChange)
        text = str(event.record["traceback"])
        final = change.state in FAILED_STATE_NAMES
        if final:
            row.traceback = text
            row.error_type = str(event.record.get("error_type") or "")[:300]
        lines = text.rstrip().splitlines()
        if len(lines) > TRACEBACK_LOG_LINES:  # the innermost frames matter most; the whole one is on the task run
            cut = len(lines) - TRACEBACK_LOG_LINES
            lines = [f"({cut} lines of the traceback left out here: /failures has it whole)", *lines[cut:]]
        headline = f"{row.label or row.id} ({row.task_name or 'task'}) {change.state}: {change.message}"
        ts = change.ts or time.time()
        for n, line in enumerate([headline, *lines]):
            batch.logs.append(
                {
                    "event_id": f"{event.stream_id}/tb{n}",  # from the state event's id: a redelivery adds none
                    "flow_run_id": row.flow_run_id,
                    "task_run_id": row.id,
                    "level": "ERROR",
                    "logger": RUN_LOGGER,
                    "message": line,
                    "ts": ts,
                }
            )

    @staticmethod
    def _log_line(stream_id: str, line: stream.LogLine) -> dict[str, Any]:
        """A log_line row."""
        return {
            "event_id": stream_id,
            "flow_run_id": line.flow_run_id,
            "task_run_id": line.task_run_id,
            "level": line.level[:16],
            "logger": line.logger[:200],
            "message": line.message,
            "ts": line.ts,
        }

    def _attach_plans(self, batch: Batch) -> None:
        """Keep a static run tree's plan (for /graph) once, read from Redis when the run starts."""
        wanted = sorted(batch.plans_wanted)
        if not wanted:
            return
        for run_id, raw in zip(wanted, self.store.flow_runs.plan_texts(wanted), strict=True):
            if raw:
                batch.flows[run_id].plan = graph_of(json.loads(raw), run_id)


def flow_pending(event: Event) -> stream.StateChange | None:
    """The event's state change if it is a flow run's Pending one."""
    body = event.body
    if isinstance(body, stream.StateChange) and body.kind == "flow_run" and body.state == PENDING:
        return body
    return None


def completed_with_graph(rows: Iterable[FlowRow]) -> list[str]:
    """The completed static root runs of a batch whose graph (their plan) the database holds: Redis may
    drop their plan after a grace (``FlowRuns.plans_recorded``)."""
    done = StateType.COMPLETED.value
    return [r.id for r in rows if r.state == done and r.plan is not None and r.root_id in (None, r.id)]


def graph_of(plan: dict[str, Any], run_id: str) -> dict[str, Any]:
    """The part of a plan the graph view needs (``api/graph.py``): nodes and edges, not their (possibly
    large) inputs, and only what differs from what a reader assumes: ``kind`` when not "task",
    ``flow_run_id`` when not the run's own (a subflow's nodes), ``upstream`` when there is one, and
    ``child_run_id`` on a traced subflow's end node (the run page's graph links it to the child's page).

    A plain task node takes about 160 bytes instead of 300: the run's id, "task", an empty list, the
    queue and the trigger rule were written on every node, and nothing reads the last two.
    """
    nodes = []
    for n in plan.get("nodes", []):
        node = {k: n[k] for k in ("id", "name", "label") if n.get(k)}
        if n.get("kind") not in (None, "task"):
            node["kind"] = n["kind"]
        if n.get("flow_run_id") and n["flow_run_id"] != run_id:
            node["flow_run_id"] = n["flow_run_id"]
        if n.get("upstream"):
            node["upstream"] = n["upstream"]
        if child := (n.get("options") or {}).get("child_run_id"):
            node["child_run_id"] = child
        nodes.append(node)
    return {"flow_name": plan.get("flow_name"), "nodes": nodes, "subflows": plan.get("subflows", [])}
