"""Creating a flow run over HTTP: check the parameters, write the row, send it when due.

The check, the queue, the name and the record are :func:`orchestrator.runs.create.new_flow_run`'s,
the one every door uses; here the record becomes a database row (:func:`flow_run_row`).

The run row is written and the run is sent to Redis inside one database
transaction: if Redis does not answer, the transaction is rolled back and the
caller gets a 503, so nothing is left half-created. Requests that arrive together
share one transaction and one Redis round trip (:class:`Submitter`).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, Table, insert
from sqlalchemy.exc import DataError, IntegrityError
from sqlmodel import Session

from api.models import FlowRun, StateEvent
from api.schemas import FlowRunCreate
from api.services.created_runs import created_runs
from orchestrator.data import classes
from orchestrator.data.serialization import PICKLE_TAG, TAG
from orchestrator.guards.limits import holds_key
from orchestrator.runs import create
from orchestrator.runs.create import FlowSpec, ParameterProblem, parameter_problem, send_new_runs
from orchestrator.runstate.records import NewFlowRun
from orchestrator.states import StateType
from orchestrator.transport.messaging import sender_messaging

log = logging.getLogger("orchestrator.api")

DUE_SLACK_SECONDS = 0.5  # a start time this close to now is "now"
FLOW_RUN_TABLE: Table = FlowRun.__table__  # type: ignore[attr-defined]
STATE_EVENT_TABLE: Table = StateEvent.__table__  # type: ignore[attr-defined]


def refuse_pickled(parameters: dict[str, Any]) -> None:
    """The HTTP door's own rule: no pickle payloads, no value naming a class (checked after the depth, before
    the schema).

    Both make a worker run code to read them. Over HTTP a dataclass or model parameter is a plain
    object: the flow's type hint makes it an instance on the worker, so naming the class is never needed.
    """
    problems = []
    for name, value in parameters.items():
        if holds_key(value, PICKLE_TAG):
            text = (
                f"parameter {name!r} holds a {PICKLE_TAG!r} payload; the API takes JSON values only "
                "(pickled values never cross the HTTP door)"
            )
            problems.append(parameter_problem(name, "type", text))
        elif holds_key(value, TAG, classes.KINDS):
            text = (
                f"parameter {name!r} holds a value tagged {{{TAG!r}: 'dataclass' or 'model'}}, which names a class; "
                "the API takes JSON values only: send the object's fields as a plain object (a parameter "
                "annotated with a dataclass or a pydantic model becomes an instance of it on the worker)"
            )
            problems.append(parameter_problem(name, "type", text))
    if problems:
        raise ParameterProblem(problems)


def check_structure(parameters: dict[str, Any]) -> None:
    """Refuse what no flow takes, known or not: values nested too deep, pickle payloads."""
    create.check_parameters("", None, parameters, door=refuse_pickled)


def check_parameters(flow: dict[str, Any], parameters: dict[str, Any]) -> None:
    """Refuse too deep, pickled, missing, unknown and ill-typed parameters, each named (the flow's JSON Schema)."""
    spec = FlowSpec.announced(flow)
    create.check_parameters(spec.name, spec.schema, parameters, door=refuse_pickled)


def new_flow_run(
    flow: dict[str, Any], body: FlowRunCreate, *, run_id: str | None = None, parent: str | None = None
) -> dict[str, Any]:
    """The row (as column values) of a run to create, Scheduled or Pending, after checking its parameters."""
    now = time.time()
    due = body.scheduled_start.timestamp() if body.scheduled_start else now
    later = due > now + DUE_SLACK_SECONDS
    run = create.new_flow_run(
        FlowSpec.announced(flow),
        body.parameters,
        queue=body.queue,
        name=body.name,
        created=now,
        scheduled_start=due,
        door=refuse_pickled,
        run_id=run_id,
    ).record
    state = StateType.SCHEDULED if later else StateType.PENDING
    return flow_run_row(run, state=state, dispatched=not later) | {"parent_id": parent}


def flow_run_row(run: NewFlowRun, *, state: StateType, dispatched: bool) -> dict[str, Any]:
    """A new run's record as the database's flow_run row spells it (column values)."""
    return {
        "id": run.id,
        "flow_name": run.flow,
        "name": run.name,
        "renamed": run.name_given,
        "state": state.value,
        "state_message": "",
        "parent_id": None,
        "root_id": run.id,
        "queue": run.queue,
        "parameters": run.parameters,
        "mode": "",
        "attempt": 1,
        "created": run.created,
        "scheduled_start": run.scheduled_start,
        "dispatched": dispatched,
        "started": None,
        "ended": None,
        "updated": run.created,
        "result_refs": [],
        "plan": None,
        "deployment_id": None,
    }


def named_run(row: dict[str, Any]) -> NewFlowRun:
    """The record Redis and the worker need to start the run of ``row`` (its database row)."""
    return NewFlowRun(
        id=row["id"],
        flow=row["flow_name"],
        name=row["name"],
        name_given=bool(row["renamed"]),
        queue=row["queue"],
        parameters=row["parameters"],
        created=row["created"],
        scheduled_start=row["scheduled_start"],
        parent=row.get("parent_id") or "",
    )


class RowsRefused(Exception):
    """The database refused a batch's rows before anything was sent; ``__cause__`` is its error."""


def write_and_send(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert the rows, send those due now, then commit: a Redis failure rolls everything back.

    Raises RowsRefused when the database refuses the rows themselves (nothing is sent then).
    """
    history = [api_event_row(r["id"], StateType(r["state"]), "created over HTTP", r["created"]) for r in rows]
    try:  # Core inserts of plain rows: the ORM's bulk path and a model object per event cost more than the insert
        session.execute(insert(FLOW_RUN_TABLE), rows)
        session.execute(insert(STATE_EVENT_TABLE), history)
    except (DataError, IntegrityError) as exc:
        session.rollback()
        raise RowsRefused(str(exc)) from exc
    send_new_runs([named_run(r) for r in rows if r["dispatched"]], sender_messaging())
    session.commit()


@dataclass
class _Pending:
    row: dict[str, Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[dict[str, Any]]


class Submitter:
    """Creates runs in batches: one transaction and one Redis round trip for many requests.

    Each request still gets its answer only after its run is committed and sent (or
    an error if not), so a 201 means what it says; batching only shares the costs of
    a commit and of a connection between the requests that arrive together.
    """

    def __init__(self, engine: Engine, max_batch: int = 256) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self.created = created_runs  # committed and sent: the recorder need not load them for their Pending event
        self.queue: queue.Queue[_Pending | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="submitter", daemon=True)
        self.thread.start()

    async def submit(self, row: dict[str, Any]) -> dict[str, Any]:
        """Create the run (and send it if due); returns its row once committed."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.queue.put(_Pending(row, loop, future))
        return await future

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    item = self.queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self.queue.put(None)
                    break
                batch.append(item)
            self._flush(batch)

    def _flush(self, batch: list[_Pending]) -> None:
        """Write and send one batch; rows the database refuses are tried one by one, so only the bad one fails."""
        error: BaseException | None = None
        try:
            with Session(self.engine) as session:
                write_and_send(session, [p.row for p in batch])
            self.created.add_all(p.row["id"] for p in batch if p.row["dispatched"])
        except RowsRefused as refused:
            if len(batch) > 1:
                log.warning("submitter: the database refused a batch of %d runs; writing them one by one", len(batch))
                for pending in batch:
                    self._flush([pending])
                return
            error = refused.__cause__ or refused
        except BaseException as exc:  # every waiting request learns of it (Redis away: nothing was created)
            error = exc
        by_loop: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        for pending in batch:
            by_loop.setdefault(pending.loop, []).append(pending)
        for loop, answered in by_loop.items():  # one wake-up of each loop per batch, not one per request
            loop.call_soon_threadsafe(_settle, answered, error)


def _settle(answered: list[_Pending], error: BaseException | None) -> None:
    """Give each waiting request its row, or the batch's error (on the requests' own loop)."""
    for pending in answered:
        if pending.future.done():
            continue
        if error is not None:
            pending.future.set_exception(error)
        else:
            pending.future.set_result(pending.row)


def dispatch(row: FlowRun) -> None:
    """Send one scheduled run to its queue through Redis (raises ConnectionProblem when Redis is away)."""
    send_new_runs([named_run(row.model_dump())], sender_messaging())


def api_event(run_id: str, state: StateType, message: str, ts: float, cause: str = "api") -> StateEvent:
    """A history row for a change the API itself made."""
    return StateEvent(**api_event_row(run_id, state, message, ts, cause))


def api_event_row(run_id: str, state: StateType, message: str, ts: float, cause: str = "api") -> dict[str, Any]:
    """:func:`api_event` as column values (every column but ``seq``), for a Core insert of many."""
    return {
        "event_id": f"api-{uuid.uuid4()}",
        "kind": "flow_run",
        "run_id": run_id,
        "flow_run_id": run_id,
        "state": state.value,
        "ts": ts,
        "recorded": ts,
        "message": message,
        "cause": cause,
        "applied": True,
    }
