"""The ``flow_run`` plan node: start a flow run of its own, and end when it does (or at once).

A subflow whose body needs its actual parameters, ``child.delay()`` in a flow body and
``run_deployment`` are such nodes. The node runs once its inputs are ready:

1. it resolves the child's parameters and creates the child run once (its id comes from the
   node's id and the parent's attempt, so a redelivered message finds the child and starts
   nothing; :func:`orchestrator.runs.create.start_linked_run`);
2. a node that does not wait ends Completed with the child's run id;
3. a node that waits leaves its own message with the child and ends this execution
   (RETRY in Celery and Flower): no worker slot is held while the child runs. The child's
   end sends the message again, and that execution ends the node with the child's result,
   or Failed with the child's state and message.
"""

from __future__ import annotations

import json
import logging
from typing import Any, NoReturn, Protocol

from orchestrator.authoring import registry
from orchestrator.authoring.options import flow_from_record
from orchestrator.data.references import resolve
from orchestrator.errors import OrchestratorError, RunError
from orchestrator.runs.api_client import ApiClient
from orchestrator.runs.create import FlowSpec, linked_run_id, start_linked_run
from orchestrator.runs.deployments import deployment_run_path
from orchestrator.runs.linked import linked_outcome
from orchestrator.runstate.store import RunStore, get_store
from orchestrator.states import StateType

from .executor import Attempt, end_completed, end_failed, finish_what_a_crash_left, full_run, gate, start_record

log = logging.getLogger(__name__)


class HoldingAttempt(Attempt, Protocol):
    """An attempt that can end its execution and be carried on by its own message later."""

    def resume_message(self) -> dict[str, Any]: ...

    def hold(self, why: str) -> NoReturn: ...


def run_linked_flow(
    attempt: HoldingAttempt,
    run: dict[str, Any],
    message_id: str,
    flow: str,
    inputs: dict[str, Any] | None,
    link: dict[str, Any],
) -> bool:
    """One execution of a ``flow_run`` node; returns False when the canvas must not go on."""
    store = get_store()
    run = full_run(run, message_id)
    trid = run["task_run_id"]
    if gate(store, run, attempt.worker, attempt.send, attempt.report) is None:
        return False
    started = store.task_runs.started(run["root"], trid, start_record(run, flow, attempt), stored_inputs=inputs is None)
    if started is None:  # final already (cancelled with its parent, or a redelivery)
        return finish_what_a_crash_left(store, run, attempt.send, attempt.report)
    if started.stale:
        return False
    wait = bool(link.get("wait"))
    attempt_number = int(store.flow_runs.field(run["root"], "attempt") or 1)
    noted_attempt, _, child_id = (store.task_runs.read(trid).get("child_run") or "").partition(":")
    if noted_attempt != str(attempt_number):  # not started yet in this attempt of the parent
        child_id = _start_child(store, attempt, run, flow, inputs, started.stored_inputs, link, attempt_number)
    if not wait:
        end_completed(store, run, attempt, json.dumps(child_id))
        return True
    outcome = linked_outcome(store, child_id)
    if outcome is None:
        attempt.hold(f"waits for flow run {child_id} ({flow})")
    if outcome.state is StateType.COMPLETED and outcome.result_text is not None:
        end_completed(store, run, attempt, outcome.result_text)
        return True
    message = f"flow run {child_id} ({flow}) ended {outcome.state.value}: {outcome.message}"
    end_failed(store, run, attempt.worker, StateType.FAILED, message, send=attempt.send, report=attempt.report)
    raise RunError(message)


def _start_child(
    store: RunStore,
    attempt: HoldingAttempt,
    run: dict[str, Any],
    flow: str,
    inputs: dict[str, Any] | None,
    stored: dict[str, Any] | None,
    link: dict[str, Any],
    attempt_number: int,
) -> str:
    """Create the child (once) and note its id on the node's task run; a refusal fails the node."""
    trid = run["task_run_id"]
    from_store = inputs is None  # pickle payloads are loaded only from the run store
    template = (inputs if inputs is not None else stored or {}).get("parameters", {})
    what = f"deployment {link['deployment']!r}" if link.get("deployment") else f"flow {flow!r}"
    waiter = attempt.resume_message() if link.get("wait") else None
    try:
        parameters = resolve(
            template, store, allow_pickle=True, inline_pickle=from_store, where=f"parameters of {what}"
        )
        if link.get("deployment"):
            child_id = _run_deployment(store, link["deployment"], parameters, run, attempt_number, waiter)
        else:
            child_id = linked_run_id(trid, attempt_number)
            definition = registry.get_flow(flow)
            if definition is not None and link.get("flow_options"):  # a with_options flow called as a subflow
                definition = flow_from_record(definition, link["flow_options"])
            spec = FlowSpec.of(definition) if definition is not None else FlowSpec(flow)
            start_linked_run(
                spec,
                parameters,
                run_id=child_id,
                parent=run["flow_run_id"],
                parent_task_run=trid,
                tree=run["root"],
                queue=link.get("run_queue"),
                name=link.get("run_name"),
                waiter=waiter,
            )
    except (OrchestratorError, ValueError, TypeError) as exc:
        message = f"could not start a run of {what}: {exc}"
        end_failed(store, run, attempt.worker, StateType.FAILED, message, send=attempt.send, report=attempt.report)
        raise RunError(message) from exc
    fields = {
        "child_run": f"{attempt_number}:{child_id}",
        "message": f"started flow run {child_id}",
        "flow_run_id": run["flow_run_id"],
    }
    store.task_runs.progress(trid, fields | {"root": run["root"], "state": StateType.RUNNING.value})
    return child_id


def _run_deployment(
    store: RunStore,
    deployment: str,
    parameters: dict[str, Any],
    run: dict[str, Any],
    attempt_number: int,
    waiter: dict[str, Any] | None,
) -> str:
    """Ask the API for a run of ``deployment`` linked to this node; the node's id makes it once."""
    body = {
        "parameters": parameters,
        "idempotency_key": f"{run['task_run_id']}:{attempt_number}",
        "parent_flow_run_id": run["flow_run_id"],
        "parent_task_run_id": run["task_run_id"],
    }
    created = ApiClient().request("POST", deployment_run_path(deployment), json=body)
    child_id = str(created["id"])
    store.linked.link(run["root"], child_id)
    if waiter is not None:
        store.linked.wait_for(child_id, json.dumps(waiter))
    return child_id
