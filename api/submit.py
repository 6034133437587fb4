"""Creating a flow run over HTTP: check the parameters, write the row, send it when due.

The run row is written and the run is sent to Redis inside one database
transaction: if Redis does not answer, the transaction is rolled back and the
caller gets a 503, so nothing is left half-created. Requests that arrive together
share one transaction and one Redis round trip (:class:`Submitter`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import reprlib
import threading
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jsonschema import Draft202012Validator
from sqlalchemy import Engine, insert
from sqlalchemy.exc import DataError, IntegrityError
from sqlmodel import Session

from api.models import FlowRun, StateEvent
from api.schemas import FlowRunCreate
from orchestrator.authoring.naming import run_name_problem
from orchestrator.config.settings import get_settings
from orchestrator.data.serialization import PICKLE_TAG
from orchestrator.guards.limits import depth_problems, holds_key
from orchestrator.runs.handle import NamedRun, send_named_runs
from orchestrator.states import StateType
from orchestrator.transport.messaging import sender_messaging

log = logging.getLogger("orchestrator.api")

DUE_SLACK_SECONDS = 0.5  # a start time this close to now is "now"


class ParameterProblem(ValueError):
    """Parameters that do not match the flow's schema; ``errors`` name each one."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(e["msg"] for e in errors))
        self.errors = errors


def check_structure(parameters: dict[str, Any]) -> None:
    """Refuse what no flow takes, known or not: values nested too deep, pickle payloads.

    Walked without recursion, and before anything recursive (the schema check, the
    database's JSON, the response's serializer) meets the values.
    """
    problems = [_problem(name, "depth", text) for name, text in depth_problems(parameters).items()]
    if problems:
        raise ParameterProblem(problems)
    for name, value in parameters.items():
        if holds_key(value, PICKLE_TAG):
            text = (
                f"parameter {name!r} holds a {PICKLE_TAG!r} payload; the API takes JSON values only "
                "(pickled values never cross the HTTP door)"
            )
            problems.append(_problem(name, "type", text))
    if problems:
        raise ParameterProblem(problems)


def check_parameters(flow: dict[str, Any], parameters: dict[str, Any]) -> None:
    """Refuse too deep, pickled, missing, unknown and ill-typed parameters, each named (the flow's JSON Schema)."""
    check_structure(parameters)
    schema = flow.get("parameters") or {"type": "object"}
    problems: list[dict[str, Any]] = []
    for error in sorted(validator_for(json.dumps(schema, sort_keys=True)).iter_errors(parameters), key=_path):
        if error.validator == "required":
            missing = [n for n in schema.get("required", []) if n not in parameters]
            for name in missing:
                problems.append(_problem(name, "missing", f"parameter {name!r} is required by flow {flow['name']!r}"))
        elif error.validator == "additionalProperties":
            known = ", ".join(schema.get("properties", {})) or "(none)"
            for name in sorted(set(parameters) - set(schema.get("properties", {}))):
                text = f"flow {flow['name']!r} has no parameter {name!r}; its parameters are: {known}"
                problems.append(_problem(name, "unknown", text))
        else:
            name = str(error.path[0]) if error.path else "parameters"
            problems.append(_problem(name, "type", f"parameter {name!r}: {error.message}"))
    if problems:
        raise ParameterProblem(problems)


@lru_cache(maxsize=256)
def validator_for(schema_text: str) -> Draft202012Validator:
    """One compiled validator per distinct schema."""
    return Draft202012Validator(json.loads(schema_text))


def _path(error: Any) -> list[str]:
    return [str(p) for p in error.path]


def _problem(name: str, kind: str, message: str) -> dict[str, Any]:
    return {"loc": ["body", "parameters", name], "msg": message, "type": f"parameter_{kind}"}


def run_name(flow: dict[str, Any], parameters: dict[str, Any], run_id: str, given: str | None) -> str:
    """The given name, else the flow's template filled in, else flow name + short id.

    A name the template makes passes the rule a given one does (checked by the request's
    schema), so a bad one is a 422 for this request, never a row the database refuses.
    """
    if given:
        return given
    template = flow.get("name_template")
    if template:
        try:
            name = str(template.format(**parameters))
        except (KeyError, IndexError, ValueError, AttributeError, TypeError):
            name = None  # names a parameter with a callable default: the worker names it at start
        if name is not None:
            problem = run_name_problem(name)
            if problem:
                text = (
                    f"flow {flow['name']!r} names its runs with flow_run_name {reprlib.repr(template)}, which made a "
                    f"name that cannot be used: {problem}; pass parameters that make a valid name, or give the run "
                    "a name"
                )
                raise ParameterProblem([{"loc": ["body", "name"], "msg": text, "type": "run_name"}])
            return name
    return f"{flow['name']}-{run_id[:8]}"


def new_flow_run(flow: dict[str, Any], body: FlowRunCreate) -> dict[str, Any]:
    """The row (as column values) of a run to create, Scheduled or Pending, after checking its parameters."""
    check_parameters(flow, body.parameters)
    now = time.time()
    run_id = str(uuid.uuid4())
    due = body.scheduled_start.timestamp() if body.scheduled_start else now
    later = due > now + DUE_SLACK_SECONDS
    return {
        "id": run_id,
        "flow_name": flow["name"],
        "name": run_name(flow, body.parameters, run_id, body.name),
        "renamed": body.name is not None,
        "state": (StateType.SCHEDULED if later else StateType.PENDING).value,
        "state_message": "",
        "parent_id": None,
        "root_id": run_id,
        "queue": body.queue or flow.get("queue") or get_settings().default_queue,
        "parameters": body.parameters,
        "mode": "",
        "attempt": 1,
        "created": now,
        "scheduled_start": due,
        "dispatched": not later,
        "started": None,
        "ended": None,
        "updated": now,
        "result_refs": [],
        "plan": None,
        "deployment_id": None,
    }


def named_run(row: dict[str, Any]) -> NamedRun:
    """What Redis and the worker need to start the run of ``row``."""
    return NamedRun(
        flow=row["flow_name"],
        run_id=row["id"],
        parameters=row["parameters"],
        queue=row["queue"],
        name=row["name"],
        name_given=bool(row["renamed"]),
        record={"created": row["created"], "scheduled_start": row["scheduled_start"] or ""},
    )


class RowsRefused(Exception):
    """The database refused a batch's rows before anything was sent; ``__cause__`` is its error."""


def write_and_send(session: Session, rows: list[dict[str, Any]]) -> None:
    """Insert the rows, send those due now, then commit: a Redis failure rolls everything back.

    Raises RowsRefused when the database refuses the rows themselves (nothing is sent then).
    """
    history = [api_event(r["id"], StateType(r["state"]), "created over HTTP", r["created"]) for r in rows]
    try:
        session.execute(insert(FlowRun), rows)
        session.execute(insert(StateEvent), [h.model_dump(exclude={"seq"}) for h in history])
    except (DataError, IntegrityError) as exc:
        session.rollback()
        raise RowsRefused(str(exc)) from exc
    send_named_runs([named_run(r) for r in rows if r["dispatched"]], sender_messaging())
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
        except RowsRefused as refused:
            if len(batch) > 1:
                log.warning("submitter: the database refused a batch of %d runs; writing them one by one", len(batch))
                for pending in batch:
                    self._flush([pending])
                return
            error = refused.__cause__ or refused
        except BaseException as exc:  # every waiting request learns of it (Redis away: nothing was created)
            error = exc
        for pending in batch:
            pending.loop.call_soon_threadsafe(_settle, pending.future, pending.row, error)


def _settle(future: asyncio.Future[dict[str, Any]], row: dict[str, Any], error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(row)


def dispatch(row: FlowRun) -> None:
    """Send one scheduled run to its queue through Redis (raises ConnectionProblem when Redis is away)."""
    send_named_runs([named_run(row.model_dump())], sender_messaging())


def api_event(run_id: str, state: StateType, message: str, ts: float, cause: str = "api") -> StateEvent:
    """A history row for a change the API itself made."""
    return StateEvent(
        event_id=f"api-{uuid.uuid4()}",
        kind="flow_run",
        run_id=run_id,
        flow_run_id=run_id,
        state=state.value,
        ts=ts,
        recorded=ts,
        message=message,
        cause=cause,
    )
