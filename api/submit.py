"""Creating a flow run over HTTP: check the parameters, write the row, send it when due.

The run row is written and the run is sent to Redis inside one database
transaction: if Redis does not answer, the transaction is rolled back and the
caller gets a 503, so nothing is left half-created.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from jsonschema import Draft202012Validator
from sqlmodel import Session

from orchestrator.client import submit_by_name
from orchestrator.settings import get_settings
from orchestrator.states import StateType

from .models import FlowRun, StateEvent
from .schemas import FlowRunCreate

DUE_SLACK_SECONDS = 0.5  # a start time this close to now is "now"


class ParameterProblem(ValueError):
    """Parameters that do not match the flow's schema; ``errors`` name each one."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(e["msg"] for e in errors))
        self.errors = errors


def check_parameters(flow: dict[str, Any], parameters: dict[str, Any]) -> None:
    """Refuse missing, unknown and ill-typed parameters, each named (the flow's JSON Schema)."""
    schema = flow.get("parameters") or {"type": "object"}
    problems: list[dict[str, Any]] = []
    for error in sorted(Draft202012Validator(schema).iter_errors(parameters), key=lambda e: list(e.path)):
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


def _problem(name: str, kind: str, message: str) -> dict[str, Any]:
    return {"loc": ["body", "parameters", name], "msg": message, "type": f"parameter_{kind}"}


def run_name(flow: dict[str, Any], parameters: dict[str, Any], run_id: str, given: str | None) -> str:
    """The given name, else the flow's template filled in, else flow name + short id."""
    if given:
        return given
    template = flow.get("name_template")
    if template:
        try:
            return str(template.format(**parameters))
        except (KeyError, IndexError, ValueError):
            pass  # names a parameter with a callable default: the worker names it at start
    return f"{flow['name']}-{run_id[:8]}"


def create_flow_run(session: Session, flow: dict[str, Any], body: FlowRunCreate) -> FlowRun:
    """Write the run (Scheduled or Pending) and, when due now, send it; all or nothing."""
    check_parameters(flow, body.parameters)
    now = time.time()
    run_id = str(uuid.uuid4())
    due = body.scheduled_start.timestamp() if body.scheduled_start else now
    later = due > now + DUE_SLACK_SECONDS
    state = StateType.SCHEDULED if later else StateType.PENDING
    row = FlowRun(
        id=run_id,
        flow_name=flow["name"],
        name=run_name(flow, body.parameters, run_id, body.name),
        state=state.value,
        root_id=run_id,
        queue=body.queue or flow.get("queue") or get_settings().default_queue,
        parameters=body.parameters,
        created=now,
        scheduled_start=due,
        dispatched=not later,
        updated=now,
    )
    session.add(row)
    session.add(api_event(row.id, state, "created over HTTP", now))
    session.flush()
    if not later:
        dispatch(row, name_given=body.name is not None)
    session.commit()
    session.refresh(row)
    return row


def dispatch(row: FlowRun, *, name_given: bool) -> None:
    """Send a run to its queue through Redis (raises ConnectionProblem when Redis is away)."""
    submit_by_name(
        row.flow_name,
        row.parameters,
        queue=row.queue,
        name=row.name,
        run_id=row.id,
        record={
            "created": row.created,
            "scheduled_start": row.scheduled_start or "",
            "name_given": "1" if name_given else "0",  # else the worker names it from the template
        },
    )


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
