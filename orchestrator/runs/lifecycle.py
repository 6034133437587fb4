"""The life of a run tree in Redis: launch a plan, fail downstream, end the flow.

A run tree (a root flow run and its subflows) keeps a count of task runs not yet
final. Every task run becomes final exactly once (see :mod:`orchestrator.runstate.store`);
the one that brings the count to zero decides the flow runs' final states. This is
why a flow that returns before its futures are done still ends correctly, and why
a failed chord header never leaves a run hanging.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.authoring.hooks import call_hooks
from orchestrator.authoring.registry import all_flows, get_flow
from orchestrator.errors import RunError
from orchestrator.planning.compiler import Compiled
from orchestrator.planning.plan import Plan, refs_in
from orchestrator.runs.failures import failure_message, tree_failures
from orchestrator.runstate.events import task_run_event
from orchestrator.runstate.records import NewTaskRun, TaskRunRecord, deciders_of, default_run_name
from orchestrator.runstate.store import Finished, RunStore, now
from orchestrator.runtime.context import RunInfo
from orchestrator.states import StateType
from orchestrator.transport.messaging import Messaging, TaskRunEnd, flow_deadline_message, retry_flow_run_message

log = logging.getLogger(__name__)

Report = Callable[[Sequence[TaskRunEnd]], None]
"""Tells the monitor (Flower) how task runs ended that Celery saw no end of (:meth:`Messaging.report_ends`)."""


def no_report(_: Sequence[TaskRunEnd]) -> None:
    """A :data:`Report` that tells nobody (a process with no broker to report to)."""


def _write_tree(store: RunStore, plan: Plan, compiled: Compiled, pipe: Any) -> None:
    """Task records (Pending), edges, counts and join tables of the nodes about to run."""
    root = plan.root_run_id
    runs = [
        (NewTaskRun(node.id, node.label, node.name, node.flow_run_id, root), node.upstream)
        for node in plan.nodes.values()
    ]
    store.task_runs.write_tree(
        pipe,
        root,
        runs,
        whole_tree_in_root=bool(plan.subflows),
        join_pending=compiled.join_pending,
        join_signatures=compiled.join_signatures,
        tolerant=compiled.tolerant,
        stored_inputs=compiled.stored_inputs,
    )


def _apply(store: RunStore, messaging: Messaging, plan: Plan, compiled: Compiled) -> None:
    """Send the run tree, recorded Running just before: a send that fails (Redis out of memory,
    a message refused) ends the run Failed with that error instead of leaving it Running with
    nothing (or part of it) sent; the caller still gets the error."""
    if not plan.nodes:
        finish_flow_run(store, plan.root_run_id)
    elif compiled.canvas is not None:
        try:
            messaging.send_canvas(compiled.canvas)
        except Exception as exc:
            message = f"sending the run's {len(plan.nodes)} task messages failed: {type(exc).__name__}: {exc}"
            try:
                stop_flow_run(store, messaging, plan.root_run_id, StateType.FAILED, message)
            except Exception as stop_error:  # Redis refuses that too: the error that matters is the first
                exc.add_note(f"and ending the run Failed failed too: {type(stop_error).__name__}: {stop_error}")
            raise


def _launched_at_once(store: RunStore, messaging: Messaging, plan: Plan, compiled: Compiled, pipe: Any) -> bool:
    """Write the records queued in ``pipe`` and send the canvas in one round trip and one atomic step,
    where the broker is the run store's Redis and the canvas only pushes its messages; False when
    they cannot be (nothing done: the caller writes, then sends). Nothing is left half done: the
    records are never Running with nothing sent, and a send refused refuses the records too."""
    if not plan.nodes or compiled.canvas is None:
        return False
    writes = store.flow_runs.launch_writes(pipe)
    if writes is None:
        return False
    try:
        sends = messaging.captured_canvas(compiled.canvas, store.server())
    except Exception:  # the broker away, say: the usual path meets it again and says so as before
        log.debug("could not capture the messages of flow run %s", plan.root_run_id, exc_info=True)
        return False
    return sends is not None and store.flow_runs.launch(plan.root_run_id, writes, sends)


def launch_static(
    store: RunStore,
    messaging: Messaging,
    plan: Plan,
    compiled: Compiled,
    fields: dict[str, Any],
    pipe: Any = None,
    *,
    new: bool = False,
) -> None:
    """Write the run tree's records (in ``pipe`` if given), then send the compiled canvas.

    ``new``: the root's record does not exist yet (a run this process just created), so writing
    and sending may be one step that a repeat cannot do twice (:func:`_launched_at_once`)."""
    root = plan.root_run_id
    pipe = pipe if pipe is not None else store.pipeline()
    _write_tree(store, plan, compiled, pipe)
    ends = {child.end_node: child.run_id for child in plan.subflows.values()}
    store.flow_runs.keep_plan(pipe, root, plan.to_dict(), ends)
    for child in plan.subflows.values():
        returns = plan.nodes[child.end_node].inputs["returns"]
        store.flow_runs.write(
            child.run_id,
            {
                "id": child.run_id,
                "flow": child.name,
                "name": default_run_name(child.name, child.run_id),
                "parent": child.parent_run_id,
                "root": root,
                "state": StateType.RUNNING.value,
                "started": now(),
                "mode": "static",
                "parameters": child.parameters,
                "returns": returns,
                "result_refs": refs_in(returns),
                "deciders": deciders(returns, plan.leaves(child.run_id)),
            },
            pipe,
        )
    schedule_deadline(store, root, fields.get("timeout_seconds"), plan.queue, pipe)
    store.flow_runs.write(
        root,
        fields
        | {
            "state": StateType.RUNNING.value,
            "started": now(),
            "mode": "static",
            "returns": plan.returns,
            "deciders": deciders(plan.returns, plan.leaves(root)),
            "result_refs": refs_in(plan.returns),
        },
        pipe,
    )
    if new and _launched_at_once(store, messaging, plan, compiled, pipe):
        return
    pipe.execute()
    _apply(store, messaging, plan, compiled)


def relaunch_static(store: RunStore, messaging: Messaging, root: str, attempt: int) -> None:
    """Run again only the task runs of a static run tree that did not complete (flow retries).

    Completed task runs keep their results; the rest (and whatever a map expanded
    into) are made non-final, recompiled as a partial plan, and sent.
    """
    raw = store.flow_runs.plan_text(root)
    if raw is None:
        raise RunError(f"flow run {root}: its plan has expired from Redis; it cannot be retried.")
    full = Plan.from_dict(json.loads(raw))
    finals = store.task_runs.all_final(root)
    again = {nid for nid in full.nodes if finals.get(nid) != StateType.COMPLETED.value}
    pipe = store.pipeline()
    store.task_runs.make_not_final(pipe, root, again, {nid for nid in again if full.nodes[nid].kind == "map"})
    part = full.rerun(again)
    compiled = messaging.compile(part)
    _write_tree(store, part, compiled, pipe)
    reopened = [
        task_run_event(node.id, StateType.PENDING.value, reopen=True, message=f"flow run attempt {attempt}")
        for node in part.nodes.values()
    ]
    store.events.append_all(pipe, reopened)
    for child in part.subflows.values():
        store.flow_runs.write(
            child.run_id, {"state": StateType.RETRYING.value, "ended": "", "message": ""}, pipe, reopen=True
        )
    fields = {"state": StateType.RETRYING.value, "attempt": str(attempt), "ended": "", "message": ""}
    store.flow_runs.write(root, fields, pipe, reopen=True)
    pipe.execute()
    _apply(store, messaging, part, compiled)


def schedule_flow_retry(store: RunStore, root: str, why: str) -> bool:
    """If the flow has retries left, make it AwaitingRetry and schedule the next attempt."""
    record = store.flow_runs.read(root)
    attempt = int(record.get("attempt") or 1)
    retries = int(record.get("retries") or 0)
    if attempt > retries:
        return False
    delay = float(record.get("retry_delay_seconds") or 0)
    message = f"attempt {attempt} failed ({why}); retry {attempt} of {retries} in {delay:g}s"
    store.flow_runs.write(
        root, {"state": StateType.AWAITING_RETRY.value, "message": message, "retry_at": now() + delay}
    )
    retry = retry_flow_run_message(root, attempt + 1, record.get("queue") or "default")
    store.delayed.schedule(json.dumps(retry), now() + delay)
    return True


def flow_outcome(store: RunStore, root: str, run_id: str) -> tuple[StateType, str]:
    """A flow run's final state: its returned futures decide, else its leaf task runs.

    A failed run's message names its root cause first (:mod:`orchestrator.runs.failures`).
    """
    record = store.flow_runs.read(run_id)
    if record.get("body_error"):  # a dynamic body raised: its error first, then the task that failed first, if any
        failures, _ = tree_failures(store, root, run_id)
        first = f"; the first task run to fail: {failures[0].words()}" if failures else ""
        return StateType.FAILED, record["body_error"] + first
    states = store.task_runs.final_states(root, deciders_of(record))
    failed = [t for t, s in states.items() if s is None or s.is_failed]
    if not failed:
        return StateType.COMPLETED, ""
    failures, upstream_failed = tree_failures(store, root, run_id)
    if failures:  # the task that raised first, not the downstream leaves it took down
        return StateType.FAILED, failure_message(failures, upstream_failed)
    labels = []
    for trid in failed[:5]:
        info = store.task_runs.read(trid)
        labels.append(f"{info.get('label', trid)} ({info.get('state', 'unknown')}: {info.get('message', '')})")
    more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
    return StateType.FAILED, f"task runs did not complete: {'; '.join(labels)}{more}"


def schedule_deadline(store: RunStore, run_id: str, timeout: float | None, queue: str, pipe: Any = None) -> None:
    """Have a worker of ``queue`` end the run TimedOut ``timeout`` seconds from now, unless final."""
    if not timeout:
        return
    store.delayed.schedule(json.dumps(flow_deadline_message(run_id, timeout, queue)), now() + float(timeout), pipe)


def end_flow_run(store: RunStore, run_id: str, state: StateType, message: str = "", *, write: bool = True) -> None:
    """Record a flow run's final state (unless already written) and call its hooks here.

    Hooks run in the process that ends the run, if it imported the flow (workers do).
    """
    if write:
        store.flow_runs.write(run_id, {"state": state.value, "ended": now(), "message": message})
    if not any(flow.hooks_set for flow in all_flows()):  # the common case costs no round trip
        return
    name = store.flow_runs.field(run_id, "flow")
    definition = get_flow(name) if name else None
    if definition is not None and definition.hooks_set and store.flow_runs.claim_end_hooks(run_id):
        run_name = store.flow_runs.field(run_id, "name") or None  # Prefect's flow_run.name in a hook
        info = RunInfo(run_id, definition.name, run_name=run_name)
        call_hooks(definition, definition.hooks, info, state, message)


def finish_flow_run(store: RunStore, root: str) -> StateType:
    """Decide and record the root flow run's final state (all its task runs are final).

    A failed run with flow retries left is retried instead (AwaitingRetry).
    """
    state, message = flow_outcome(store, root, root)
    if state is StateType.FAILED and schedule_flow_retry(store, root, message):
        return StateType.AWAITING_RETRY
    end_flow_run(store, root, state, message)
    return state


def deciders(returns: Any, leaves: list[str]) -> list[str]:
    """The task runs whose states decide a flow run's: its returned futures, else its leaves."""
    return refs_in(returns) or leaves


def after_final(store: RunStore, root: str, finished: Finished) -> None:
    """Called after a task run became final: the last one ends the flow run.

    A run that completed was already ended inside the same Lua script; this records
    why one did not. Deciding must never leave the run hanging: if it fails, the run
    ends Crashed with the error, and the error is raised for the worker's log.

    The tree's edges go first, before anything is decided: a retry the decision schedules
    writes anew those it needs, and must not find them removed behind it. A run that completed
    had them removed by the same script (a completed tree is never retried): no round trip here.
    """
    if finished.left == 0 and not finished.flow_completed:
        store.task_runs.forget_edges(root)
    if finished.flow_completed:
        end_flow_run(store, root, StateType.COMPLETED, write=False)
    if not finished.needs_decision:
        return
    try:
        finish_flow_run(store, root)
    except Exception as exc:
        message = f"internal error while ending the flow run: {type(exc).__name__}: {exc}"
        store.flow_runs.write(root, {"state": StateType.CRASHED.value, "ended": now(), "message": message})
        raise


def end_task_run(
    store: RunStore,
    root: str,
    trid: str,
    state: StateType,
    fields: dict[str, Any],
    label: str,
    send: Callable[[list[dict[str, Any]]], None],
    hooks: Callable[[], None] | None = None,
    report: Report = no_report,
) -> None:
    """Make a task run final in a failed or skipped state and stop its downstream.

    ``hooks`` runs once the task run is final and before its flow run can end, so a
    task's hooks always come before its flow's. ``send`` sends tolerant downstream
    tasks (trigger rules) that this made ready; ``report`` tells Flower about the
    downstream task runs this ended (the task run itself is the caller's to report).
    """
    finished = store.task_runs.finished(root, trid, state, fields)
    if finished.left is None:
        return
    send(finished.ready)
    if hooks:
        hooks()
    propagate_failure(store, root, trid, state, label, send, report)
    after_final(store, root, finished)


def propagate_failure(
    store: RunStore,
    root: str,
    trid: str,
    state: StateType,
    label: str,
    send: Callable[[list[dict[str, Any]]], None],
    report: Report = no_report,
) -> None:
    """Mark every task run downstream of ``trid`` UpstreamFailed (Skipped after a skip).

    They will never be sent (canvas stops at a raised task; joins never reach zero),
    so they are made final here and the run tree can still end. A tolerant task
    (trigger rule, allow_failure, wait()) is left alone: its join sends it once its
    upstreams are final, and it decides for itself; ``send`` sends those that became
    ready on the way.

    No worker ever receives the task runs ended here, so Celery never reports them:
    ``report`` tells Flower their end (one read of their task names, one batch of events,
    and only on this failure path).
    """
    down_state = StateType.SKIPPED if state is StateType.SKIPPED else StateType.UPSTREAM_FAILED
    message = f"not run: upstream {label} ended {state.value}"
    queue: deque[str] = deque(store.task_runs.downstream_of(trid))
    seen: set[str] = set()
    ended: list[str] = []
    while queue:
        node = queue.popleft()
        if node in seen or store.task_runs.is_tolerant(root, node):
            continue
        seen.add(node)
        finished = store.task_runs.finished(root, node, down_state, {"ended": now(), "message": message})
        if finished.left is None:
            continue
        ended.append(node)
        send(finished.ready)
        child = store.flow_runs.subflow_of_end(root, node)
        if child:
            end_flow_run(store, child, StateType.FAILED, message)
        after_final(store, root, finished)
        queue.extend(store.task_runs.downstream_of(node))
    if ended and report is not no_report:
        names = [name or "" for (name,) in store.task_runs.fields_of(ended, "name")]
        report([TaskRunEnd(node, name, down_state, message) for node, name in zip(ended, names, strict=True)])


def stop_flow_run(store: RunStore, messaging: Messaging, run_id: str, state: StateType, message: str) -> bool:
    """End a run tree now (cancel, timeout): unfinished task runs Cancelled, running ones terminated.

    The final state is set on the record first, without an event, so that the last
    task run made final here cannot "decide" the run; a Cancelling event tells the
    history what is under way; the final event comes last, after the task runs are
    cancelled, so whoever waits sees them cancelled already. Returns False if the
    run was already final.
    """
    current = store.flow_runs.state(run_id)
    if current is None or current.is_final:
        return False
    store.flow_runs.set_state_only(run_id, state)
    pipe = store.pipeline()
    store.flow_runs.emit_state(run_id, StateType.CANCELLING, pipe, {"cause": message})
    pipe.execute()
    running: list[str] = []
    unsent: list[TaskRunEnd] = []  # Celery will report no end of these: Flower hears it from here
    for row in list_task_runs(store, run_id):
        task_run = TaskRunRecord.from_redis(row["id"], row)
        if task_run is None:
            continue
        now_in = task_run.state or StateType.PENDING
        if now_in.is_final:
            continue
        is_running = now_in in (StateType.RUNNING, StateType.RETRYING)
        if is_running:
            running.append(task_run.id)
        why = f"cancelled: flow run {run_id} {message}"
        fields = {"ended": now(), "message": why, "flow_run_id": task_run.flow_run_id}
        finished = store.task_runs.finished(run_id, task_run.id, StateType.CANCELLED, fields)
        if not is_running and finished.left is not None:  # a running one: its worker reports the revoke
            unsent.append(TaskRunEnd(task_run.id, task_run.name, StateType.CANCELLED, why))
    if running:  # stop the work itself, not just the records
        messaging.revoke(running, terminate=True)
    messaging.report_ends(unsent, "")
    for child in store.flow_runs.subflows(run_id):
        child_state = store.flow_runs.state(child)
        if child_state is not None and not child_state.is_final:
            end_flow_run(store, child, StateType.CANCELLED, f"parent flow run {run_id} {message}")
    for linked in store.linked.children(run_id):  # runs of their own it started: stopped with it
        stop_flow_run(store, messaging, linked, StateType.CANCELLED, f"was stopped with its parent flow run {run_id}")
    end_flow_run(store, run_id, state, message)
    return True


def retry_final_run(store: RunStore, messaging: Messaging, run_id: str) -> int:
    """Run a finished, unsuccessful flow run again (the API's retry); returns the new attempt.

    A static run re-runs only the task runs that did not complete, so completed ones
    keep their results; a dynamic run re-runs its body on a worker of its queue.
    """
    record = store.flow_runs.record(run_id)
    if record is None:
        raise RunError(f"flow run {run_id} is not in Redis (expired after result_ttl_seconds?); it cannot be retried.")
    state = record.state or StateType.PENDING
    if not state.is_final or state is StateType.COMPLETED:
        raise RunError(f"flow run {run_id} is {state.value}; only a run that ended without completing can be retried.")
    if not record.is_root:
        raise RunError(f"flow run {run_id} is a subflow run; retry its parent flow run {record.parent} instead.")
    attempt = record.attempt + 1
    store.flow_runs.reopen_latch(run_id)
    if record.mode != "dynamic":
        relaunch_static(store, messaging, run_id, attempt)
        return attempt
    fields = {"state": StateType.AWAITING_RETRY.value, "message": "retry requested", "retry_at": now()}
    store.flow_runs.write(run_id, fields, reopen=True)
    messaging.send_retry_flow_run(run_id, attempt, record.queue or "default")
    return attempt


def list_task_runs(store: RunStore, run_id: str) -> list[dict[str, str]]:
    """Every task run record of a flow run (a root: of its whole tree), in no set order."""
    return store.task_runs.of_flow(run_id)
