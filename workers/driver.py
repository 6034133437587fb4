"""Dynamic mode: a flow body that needs task results runs on a worker and submits as it goes.

The body runs in a thread of the worker process, outside Celery's pool: the Celery
task that starts it returns at once, so the pool slot is free for the very tasks the
body waits for. A fleet of one worker with concurrency 1 therefore cannot deadlock.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from celery import Celery

from orchestrator.authoring import registry
from orchestrator.authoring.flows import Flow
from orchestrator.authoring.options import message_overrides, time_limits
from orchestrator.authoring.task_run_names import planned_name
from orchestrator.authoring.tasks import Task
from orchestrator.authoring.triggers import DEFAULT_TRIGGER
from orchestrator.config.settings import get_settings
from orchestrator.data.references import resolve
from orchestrator.errors import FlowRunFailed, FlowRunStopped, RunTimeout, describe
from orchestrator.planning.compiler import inline_or_stored, make_signature, message_run
from orchestrator.planning.plan import REF, make_ref, refs_in
from orchestrator.planning.templates import allowed_failures, to_template
from orchestrator.runs.create import FlowSpec, start_linked_run
from orchestrator.runs.handle import FlowRun
from orchestrator.runs.lifecycle import (
    after_final,
    deciders,
    end_flow_run,
    flow_outcome,
    schedule_deadline,
)
from orchestrator.runstate.records import NewTaskRun, body_task_run_id, default_run_name
from orchestrator.runstate.store import RunStore, get_store, now
from orchestrator.runtime import aio
from orchestrator.runtime.context import RunInfo, using
from orchestrator.runtime.engine import (
    Engine,
    bind_arguments,
    check_wait_for,
    replace_futures,
    split_map_arguments,
    zip_mapped,
)
from orchestrator.runtime.futures import DoneAndNotDone, Future
from orchestrator.runtime.run_logger import prints_logged
from orchestrator.runtime.task_errors import remote_task_error
from orchestrator.states import State, StateType
from orchestrator.transport.messaging import CeleryMessaging

from .executor import end_failed, full_run

log = logging.getLogger(__name__)

# How often a body waiting on results asks whether its run was stopped (a cancel, its timeout);
# waits shorter than this cost no extra round trip.
STOP_CHECK_SECONDS = 0.5

_pool: cf.ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _driver_pool() -> cf.ThreadPoolExecutor:
    """One pool of driver threads per worker process (re-created after a fork)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = cf.ThreadPoolExecutor(
                max_workers=get_settings().max_dynamic_flows_per_process, thread_name_prefix="flow-driver"
            )
            _pool_pid = os.getpid()
        return _pool


class RemoteFuture(Future[Any]):
    """A task run sent to the fleet by a dynamic flow body."""

    engine: DynamicEngine

    def __init__(self, engine: DynamicEngine, task_run_id: str, label: str) -> None:
        self.engine = engine
        self.task_run_id = task_run_id
        self.label = label

    @property
    def state_type(self) -> StateType:
        final = self.engine.store.task_runs.final_states(self.engine.root, [self.task_run_id])[self.task_run_id]
        if final is not None:
            return final
        return StateType(self.engine.store.task_runs.read(self.task_run_id).get("state", "Pending"))

    def state_message(self) -> str:
        return str(self.engine.store.task_runs.read(self.task_run_id).get("message", ""))

    def wait(self, timeout: float | None = None) -> StateType:
        _done, _ = self.engine.wait([self], timeout)
        return self.state_type

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        """The task's value; a failed task run raises its own exception, rebuilt (see runtime/task_errors.py)."""
        state = self.wait(timeout)
        if not state.is_final:
            raise RunTimeout(f"task run {self.label} ({self.task_run_id}) is still {state.value} after {timeout}s.")
        if state is StateType.COMPLETED:
            return resolve(make_ref(self.task_run_id), self.engine.store, allow_pickle=True, where=self.label)
        if state is StateType.CANCELLED:  # cancelled with its run: the body stops here
            self.engine.check_not_stopped()
        self.failure_seen = True
        record = self.engine.store.task_runs.read(self.task_run_id)
        error = remote_task_error(
            record, task_run_id=self.task_run_id, flow_run_id=self.engine.flow_run_id, label=self.label, state=state
        )
        if raise_on_failure:
            raise error
        return error


class LinkedRunFuture(Future[Any]):
    """A child flow run a dynamic body started as a run of its own (``child.submit(...)``)."""

    engine: DynamicEngine

    def __init__(self, engine: DynamicEngine, run_id: str, label: str) -> None:
        self.engine = engine
        self.task_run_id = run_id  # the child flow run's id: what wait() and as_completed() follow
        self.label = label

    @property
    def state_type(self) -> StateType:
        return self.engine.store.flow_runs.state(self.task_run_id) or StateType.PENDING

    def state_message(self) -> str:
        return str(self.engine.store.flow_runs.read(self.task_run_id).get("message", ""))

    def wait(self, timeout: float | None = None) -> StateType:
        return self.engine.store.flow_runs.wait_final(self.task_run_id, timeout) or StateType.PENDING

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        try:
            return FlowRun(self.task_run_id, self.engine.store).result(timeout)
        except FlowRunFailed as exc:
            if raise_on_failure:
                raise
            return exc


def _values_of_children(value: Any) -> Any:
    """``value`` with every child-run future replaced by the child's value (waiting for it); ``quote()``,
    ``opaque()`` and a method's instance stay marked for the templates that encode them."""
    return replace_futures(value, lambda f, _: f.result() if isinstance(f, LinkedRunFuture) else f, unwrap_quoted=False)


class DynamicEngine(Engine):
    """Submits a flow body's task calls to the fleet one by one, as the body runs."""

    def __init__(
        self,
        app: Celery,
        store: RunStore,
        root: str,
        flow_run_id: str,
        queue: str,
        label_counts: dict[str, int] | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.root = root
        self.flow_run_id = flow_run_id
        self.queue = queue
        self.futures: list[RemoteFuture] = []
        self.has_downstream: set[str] = set()
        self._counts = label_counts if label_counts is not None else {}  # shared by the run tree

    def template(self, value: Any, where: str, serializer: str = "json") -> Any:
        """Encode arguments; futures of this run tree become references."""
        return to_template(
            value, where, serializer, lambda f: isinstance(f, RemoteFuture) and f.engine.root == self.root
        )

    def leaves(self) -> list[str]:
        """Task runs of this flow run that nothing in it waited for (nor saw fail: the body handled those)."""
        return [f.task_run_id for f in self.futures if f.task_run_id not in self.has_downstream and not f.failure_seen]

    def check_not_stopped(self) -> None:
        """Raise FlowRunStopped if the run tree ended while the body ran (a cancel, its timeout): the
        body's calls into the orchestrator are where it learns, and unwinds."""
        state = self.store.flow_runs.state(self.root)
        if state is not None and state.is_final:
            raise FlowRunStopped(self.root, state.value)

    def submit(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: list[Any]) -> RemoteFuture:
        task.importable_or_raise()
        self.check_not_stopped()
        where = f"task {task.name!r}"
        bound = _values_of_children(bind_arguments(task.fn, args, kwargs, where))
        inputs = {k: self.template(v, f"{where} argument {k!r}", task.result_serializer) for k, v in bound.items()}
        upstream = refs_in(inputs)
        allow = list(allowed_failures(inputs))
        for item in check_wait_for(wait_for, task.name):
            ref = self.template(item, f"{where} wait_for", "json")
            upstream.append(ref[REF])
            if ref.get("allow_failure"):
                allow.append(ref[REF])
        count = self._counts.get(task.label_base, 0)
        self._counts[task.label_base] = count + 1
        trid, label = str(uuid.uuid4()), f"{task.label_base}-{count}"
        if task.task_run_name is not None:
            label = planned_name(task.task_run_name, bound, inputs, where) or label
        run = message_run(self.root, self.flow_run_id, label)
        tolerant = task.trigger != DEFAULT_TRIGGER or bool(allow)
        if tolerant:
            run |= {"ups": upstream, "allow": allow, "trigger": task.trigger}
        inline, stored = inline_or_stored(inputs)
        message: dict[str, Any] = {"run": run, "inputs": inline}
        declared = registry.get_task(task.name)
        overrides = (
            {}  # the registered task itself: nothing changed
            if declared is task
            else message_overrides(task.name, task.options, declared.options if declared is not None else None)
        )
        if overrides:  # task.with_options(...) in the body: the worker applies these (as in a compiled plan)
            message["options"] = overrides
        sig = make_signature(
            task.name,
            message,
            queue=task.queue or self.queue,
            task_id=trid,
            app=self.app,
            limits=time_limits(overrides, is_async=task.is_async),
        )
        new = NewTaskRun(trid, label, task.name, self.flow_run_id, self.root)
        self.store.task_runs.add_to_dynamic_tree(new, stored)  # the root's set holds the whole tree
        future = RemoteFuture(self, trid, label)
        self.futures.append(future)
        self.has_downstream.update(upstream)
        status, count_or_up, up_state = self.store.task_runs.register_waiting(
            self.root, trid, upstream, json.dumps(dict(sig)), tolerant
        )
        if status == "blocked":
            state = StateType.SKIPPED if up_state == StateType.SKIPPED.value else StateType.UPSTREAM_FAILED
            up_label = self.store.task_runs.read(count_or_up or "").get("label", count_or_up)
            end_failed(
                self.store,
                full_run(run, trid),
                "driver",
                state,
                f"not run: upstream {up_label} ended {up_state}",
                send=CeleryMessaging(self.app).send_signatures,
            )
        elif count_or_up == "0":
            sig.apply_async()
        return future

    def map(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: list[Any]) -> list[RemoteFuture]:
        where = f"task {task.name!r}"
        mapped, static = split_map_arguments(bind_arguments(task.fn, args, kwargs, where), where)
        lists = {k: list(v.result() if isinstance(v, Future) else v) for k, v in mapped.items()}
        return [self.submit(task, (), static | one, wait_for) for one in zip_mapped(lists, where)]

    def call_subflow(self, flow: Flow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self.check_not_stopped()
        params = flow.bind_parameters(
            replace_futures(args, lambda f, _: f.result()), replace_futures(kwargs, lambda f, _: f.result())
        )
        child_id = str(uuid.uuid4())
        self.store.flow_runs.write(
            child_id,
            {
                "id": child_id,
                "flow": flow.name,
                "name": default_run_name(flow.name, child_id),
                "parent": self.flow_run_id,
                "root": self.root,
                "state": StateType.RUNNING.value,
                "started": now(),
                "mode": "dynamic",
            },
        )
        child = DynamicEngine(self.app, self.store, self.root, child_id, flow.queue or self.queue, self._counts)
        try:
            with using(child, RunInfo(child_id, flow.name, extra={"parent_flow_run_id": self.flow_run_id})):
                value, decided = returned_state(aio.call(flow.fn, params))
            if decided:
                raise FlowRunFailed(f"subflow run {flow.name} ({child_id}): {decided}")
            child.wait(list(child.futures), None)
            returns = child.template(value, f"subflow {flow.name!r} return value")
        except Exception as exc:
            self.store.flow_runs.write(
                child_id, {"state": StateType.FAILED.value, "ended": now(), "message": describe(exc)}
            )
            raise
        self.store.flow_runs.write(
            child_id,
            {"returns": returns, "deciders": deciders(returns, child.leaves()), "result_refs": refs_in(returns)},
        )
        state, message = flow_outcome(self.store, self.root, child_id)
        end_flow_run(self.store, child_id, state, message)
        if state is not StateType.COMPLETED:
            raise FlowRunFailed(f"subflow run {flow.name} ({child_id}) failed: {message}")
        return resolve(returns, self.store, allow_pickle=True, where=f"subflow {flow.name!r}")

    def submit_subflow(self, flow: Flow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LinkedRunFuture:
        """``child.submit(...)``: the child starts now as a run of its own (linked to this one), traced on
        a worker with these values, compiled when it can be; several run at once."""
        flow.importable_or_raise()
        self.check_not_stopped()
        resolved = replace_futures((args, kwargs), lambda f, _: f.result())
        params = flow.bind_parameters(*resolved)
        run_id = str(uuid.uuid4())
        queue = flow.queue or self.queue
        start_linked_run(
            FlowSpec.of(flow),
            params,
            run_id=run_id,
            parent=self.flow_run_id,
            parent_task_run="",
            tree=self.root,
            queue=queue,
        )
        return LinkedRunFuture(self, run_id, f"subflow-{flow.name}")

    def trigger_flow(self, flow: Flow, parameters: dict[str, Any], *, queue: str | None, name: str | None) -> FlowRun:
        """``child.delay()`` in a dynamic body: a run of its own, linked to this flow run."""
        flow.importable_or_raise()
        self.check_not_stopped()
        run_id = str(uuid.uuid4())
        start_linked_run(
            FlowSpec.of(flow),
            _values_of_children(parameters),
            run_id=run_id,
            parent=self.flow_run_id,
            parent_task_run="",
            tree=self.root,
            queue=queue,
            name=name,
        )
        return FlowRun(run_id, self.store)

    def _poll(self, futures: list[Future[Any]], timeout: float | None) -> Iterator[Future[Any]]:
        """Yield futures as they become final (task runs, and child runs of their own); stop at ``timeout``."""
        pending = {f.task_run_id: f for f in futures}
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.005
        next_check = time.monotonic() + STOP_CHECK_SECONDS
        while pending:
            if time.monotonic() >= next_check:  # a long wait: has the run been stopped meanwhile?
                self.check_not_stopped()
                next_check = time.monotonic() + STOP_CHECK_SECONDS
            tasks = [trid for trid, f in pending.items() if not isinstance(f, LinkedRunFuture)]
            finals: dict[str, StateType | None] = dict(self.store.task_runs.final_states(self.root, tasks))
            for trid, f in pending.items():
                if isinstance(f, LinkedRunFuture):
                    state = self.store.flow_runs.state(trid)
                    finals[trid] = state if state is not None and state.is_final else None
            for trid, state in finals.items():
                if state is not None:
                    yield pending.pop(trid)
            if not pending or (deadline is not None and time.monotonic() >= deadline):
                return
            time.sleep(pause)
            pause = min(pause * 1.5, 0.1)

    def wait(self, futures: list[Future[Any]], timeout: float | None) -> DoneAndNotDone:
        done = set(self._poll(futures, timeout))
        return DoneAndNotDone(done, set(futures) - done)

    def as_completed(self, futures: list[Future[Any]], timeout: float | None) -> Iterator[Future[Any]]:
        return self._poll(futures, timeout)


def returned_state(value: Any) -> tuple[Any, str]:
    """A body's return value, and why its run fails if the body returned a state that did not
    complete (as in Prefect, a returned state decides the run's end); a Completed state gives its data."""
    if not isinstance(value, State):
        return value, ""
    if value.is_completed():
        return value.data, ""
    said = f": {value.message}" if value.message else ""
    return None, f"the flow returned a {value.name} state{said}"


def drive(app: Celery, flow: Flow, run_id: str, parameters: dict[str, Any], queue: str, retrying: bool = False) -> None:
    """Run a dynamic flow body to its end; the run ends when its last task run does.

    A retry runs the whole body again (new task runs), like Prefect's flow retries.
    """
    store = get_store()
    store.flow_runs.start_dynamic_body(run_id)  # the body itself is the one task run its tree waits for
    schedule_deadline(store, run_id, flow.timeout_seconds, queue)
    state = StateType.RETRYING if retrying else StateType.RUNNING
    store.flow_runs.write(run_id, {"state": state.value, "started": now(), "mode": "dynamic"})
    engine = DynamicEngine(app, store, run_id, run_id, queue)
    returns: Any = None
    body_error = ""
    try:
        with using(engine, RunInfo(run_id, flow.name)), prints_logged(flow.log_prints):
            value, body_error = returned_state(aio.call(flow.fn, parameters))
        returns = engine.template(_values_of_children(value), f"flow {flow.name!r} return value")
    except FlowRunStopped as stopped:  # cancelled or timed out while it ran: it unwound, nothing to record
        body_stopped(store, flow, run_id, stopped)
        return
    except Exception as exc:
        log.exception("flow run %s (%s): the flow body raised", run_id, flow.name)
        body_error = f"the flow body raised {describe(exc)}"
    store.flow_runs.write(
        run_id,
        {
            "returns": returns,
            "deciders": deciders(returns, engine.leaves()),
            "result_refs": refs_in(returns),
            "body_error": body_error,
        },
    )
    body_state = StateType.FAILED if body_error else StateType.COMPLETED
    after_final(store, run_id, store.task_runs.finished(run_id, body_task_run_id(run_id), body_state, {"ended": now()}))


def body_stopped(store: RunStore, flow: Flow, run_id: str, stopped: FlowRunStopped) -> None:
    """A body whose run was stopped from outside has unwound: its pseudo task run ends with the run's
    state, and the flow's hooks for that state run here, where the code is, unless the process that
    stopped the run had the code and ran them already (``end_flow_run``: once per end)."""
    state = StateType(stopped.state)
    log.info("flow run %s (%s): the body stopped: the run ended %s", run_id, flow.name, state.value)
    store.task_runs.finished(run_id, body_task_run_id(run_id), StateType.CANCELLED, {"ended": now()})
    end_flow_run(store, run_id, state, store.flow_runs.field(run_id, "message") or "", write=False)


def start_driver(
    app: Celery, flow: Flow, run_id: str, parameters: dict[str, Any], queue: str, retrying: bool = False
) -> None:
    """Hand a dynamic flow body to this process's driver threads and return at once."""

    def guarded() -> None:
        try:
            drive(app, flow, run_id, parameters, queue, retrying)
        except Exception:  # never lose a driver silently
            log.exception("flow run %s: the dynamic driver failed", run_id)

    _driver_pool().submit(guarded)
