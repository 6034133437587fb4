"""Run a flow in-process, tasks in threads: no Redis, no worker, no API.

This is how people unit-test flows. Submitted tasks start as soon as their own
upstreams are done (done-callbacks, so no thread ever blocks waiting for another),
with the same retry, signal, serialization and upstream-failure rules as the fleet.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextvars
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from orchestrator.authoring.hooks import call_hooks
from orchestrator.authoring.triggers import verdict
from orchestrator.config.settings import get_settings
from orchestrator.data.serialization import dumps
from orchestrator.errors import FlowRunFailed, TaskRunFailed, UpstreamFailedError, describe
from orchestrator.local.cache import open_local_cache
from orchestrator.local.naming import local_run_name
from orchestrator.local.thread_engine import Attempts, ThreadEngine, start_when_done
from orchestrator.local.thread_future import ThreadFuture
from orchestrator.local.timeouts import LocalTimeout, call_with_timeout
from orchestrator.runtime import aio
from orchestrator.runtime.context import RunInfo, current_run, using
from orchestrator.runtime.engine import (
    bind_arguments,
    check_wait_for,
    replace_futures,
    split_map_arguments,
    walk_futures,
    zip_mapped,
)
from orchestrator.runtime.futures import Future
from orchestrator.runtime.run_logger import prints_logged, show_run_logs_on_terminal
from orchestrator.runtime.signals import RETRY
from orchestrator.runtime.task_errors import annotate
from orchestrator.states import State, StateType

if TYPE_CHECKING:
    from orchestrator.authoring.flows import Flow
    from orchestrator.authoring.tasks import Task


class LocalFuture(ThreadFuture):
    """A task run of an in-process flow run, executing in a thread of this process."""

    engine: LocalEngine


class LocalEngine(ThreadEngine):
    """Executes one flow run's task calls in a shared thread pool."""

    future_type = LocalFuture

    def __init__(
        self, flow: Flow, run_id: str, pool: cf.ThreadPoolExecutor, parameters: dict[str, Any] | None = None
    ) -> None:
        self.flow = flow
        self.run_id = run_id
        self.parameters = parameters or {}  # the flow run's, for the FLOW_PARAMETERS cache policy
        self.pool = pool
        self.futures: list[LocalFuture] = []
        self.has_downstream: set[str] = set()
        self._lock = threading.Lock()

    # -- submitting -----------------------------------------------------------------
    def submit(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: list[Any]) -> LocalFuture:
        bound = bind_arguments(task.fn, args, kwargs, f"task {task.name!r}")
        return self._submit_bound(task, bound, wait_for)

    def _submit_bound(self, task: Task, bound: dict[str, Any], wait_for: list[Any]) -> LocalFuture:
        future = LocalFuture(self, f"{task.label_base}-{len(self.futures)}")
        upstream = list(walk_futures(bound))
        for item in check_wait_for(wait_for, task.name):
            upstream.extend(walk_futures(item))
        with self._lock:
            self.futures.append(future)
            self.has_downstream.update(up.task_run_id for up, _ in upstream)
        start_when_done(upstream, lambda: self.pool.submit(self._execute, future, task, bound, upstream))
        return future

    def map(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: list[Any]) -> list[LocalFuture]:
        what = f"task {task.name!r}"
        mapped, static = split_map_arguments(bind_arguments(task.fn, args, kwargs, what), what)
        lists: dict[str, list[Any]] = {}
        for name, value in mapped.items():
            if isinstance(value, Future):
                if value.wait() is not StateType.COMPLETED:
                    return [self._upstream_failed_map(task, value)]
                value = value.result()
            lists[name] = list(value)
        return [self._submit_bound(task, static | one, wait_for) for one in zip_mapped(lists, what)]

    def _upstream_failed_map(self, task: Task, upstream: Future[Any]) -> LocalFuture:
        future = LocalFuture(self, f"{task.label_base}-map")
        with self._lock:
            self.futures.append(future)
        message = f"not run: the mapped upstream {upstream.label} did not complete"
        future.set_state(StateType.UPSTREAM_FAILED, message)
        future.cf.set_exception(UpstreamFailedError(message))
        return future

    def call_subflow(self, flow: Flow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return run_flow_locally(flow, self._child_parameters(flow, args, kwargs), pool=self.pool)

    @staticmethod
    def _child_parameters(flow: Flow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """A subflow's parameters: futures given their values, then as a call from outside gets them."""
        resolved_args = replace_futures(args, lambda f, _: f.result())
        resolved_kwargs = replace_futures(kwargs, lambda f, _: f.result())
        return flow.call_parameters(resolved_args, resolved_kwargs)

    def subflow_state(self, flow: Flow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> State:
        """``child(x, return_state=True)``: the child's own final state (TimedOut stays TimedOut)."""
        return flow_state_locally(flow, self._child_parameters(flow, args, kwargs), pool=self.pool)

    def submit_subflow(self, flow: Flow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> LocalFuture:
        """``child.submit(...)``: the child runs in a thread of its own (its tasks use the shared pool,
        so a pool filled with waiting children cannot deadlock); its future gives its value."""
        future = LocalFuture(self, f"subflow-{flow.name}-{len(self.futures)}")
        with self._lock:
            self.futures.append(future)
        context = contextvars.copy_context()  # the parent's run and engine: the child links to them

        def run_child() -> None:
            future.set_state(StateType.RUNNING)
            try:
                value = context.run(self.call_subflow, flow, args, kwargs)
            except Exception as exc:
                future.set_state(StateType.FAILED, describe(exc))
                future.cf.set_exception(exc)
                return
            future.set_state(StateType.COMPLETED)
            future.cf.set_result(value)

        threading.Thread(target=run_child, name=f"subflow-{flow.name}", daemon=True).start()
        return future

    # -- waiting --------------------------------------------------------------------
    def drain(self) -> None:
        """Wait for every task run this flow started, including ones started later."""
        seen = 0
        while True:
            with self._lock:
                batch = self.futures[seen:]
                seen = len(self.futures)
            if not batch:
                return
            cf.wait([f.cf for f in batch])

    # -- running one task -------------------------------------------------------------
    def _execute(
        self,
        future: LocalFuture,
        task: Task,
        bound: dict[str, Any],
        upstream: list[tuple[Future[Any], bool]],
    ) -> None:
        states = {up.task_run_id: (up.label, up.state_type) for up, _ in upstream}
        allowed = {up.task_run_id for up, tolerated in upstream if tolerated}
        decision = verdict(task.trigger, states, allowed)
        if not decision.run:
            future.set_state(decision.state, decision.message)
            future.cf.set_exception(UpstreamFailedError(f"task {future.label}: {decision.message}"))
            return
        # An upstream that did not complete (tolerated, or under a trigger rule) passes None.
        inputs = replace_futures(bound, lambda f, _: f.result() if f.state_type == StateType.COMPLETED else None)
        self._attempts(future, task, inputs)

    def _attempts(self, future: LocalFuture, task: Task, inputs: dict[str, Any]) -> None:
        if task.task_run_name is not None:
            future.label = local_run_name(task, future, self.run_id, self.flow.name, inputs)
        cache = open_local_cache(self, future, task, inputs) if task.cache is not None else None
        if cache is not None and cache.answered:  # a cached result (or a key that cannot be computed)
            return
        attempts = Attempts(task)
        while True:
            future.set_state(StateType.RUNNING if attempts.number == 1 else StateType.RETRYING)
            run = RunInfo(
                self.run_id,
                self.flow.name,
                future.task_run_id,
                task.name,
                attempts.number,
                {"local": True},
                future.label,
                list(task.tags),
            )
            try:
                log_prints = task.log_prints if task.log_prints is not None else self.flow.log_prints

                def call(run: RunInfo = run, log_prints: bool = log_prints) -> Any:
                    with using(None, run), prints_logged(log_prints):
                        return aio.call(task.fn, inputs)

                value = attempts.call(call, future.label)
                text = dumps(value, task.result_serializer, f"task {task.name!r} ({future.label})")
            except Exception as exc:
                outcome = attempts.outcome(exc)
                call_hooks(task, task.hooks, run, outcome.state, outcome.message)
                if outcome.state is StateType.AWAITING_RETRY:
                    future.set_state(StateType.AWAITING_RETRY, outcome.message)
                    attempts.retry(outcome)
                    continue
                future.set_state(outcome.state, outcome.message)
                future.cf.set_exception(self.task_error(exc, future, outcome.state, outcome.message))
                return
            if cache is not None:
                cache.keep(text)
            future.set_state(StateType.COMPLETED)
            call_hooks(task, task.hooks, run, StateType.COMPLETED)
            future.cf.set_result(value)
            return

    def task_error(self, exc: BaseException, future: LocalFuture, state: StateType, message: str) -> BaseException:
        """What ``future.result()`` raises: the task's own exception with its run ids (a skipped task has none)."""
        if state is StateType.SKIPPED or isinstance(exc, RETRY):  # skipped, or a sensor gave up: no error of its own
            exc = TaskRunFailed(f"task {future.label} ended {state.value}: {message}")
        return annotate(exc, task_run_id=future.task_run_id, flow_run_id=self.run_id, label=future.label, state=state)

    def failed_runs(self, returned: list[Future[Any]]) -> list[LocalFuture]:
        """The task runs that decide this flow failed: returned futures, else the leaves."""
        deciders = [f for f in returned if isinstance(f, LocalFuture)]
        if not deciders:  # the leaves, but for those whose failure the body saw and handled
            deciders = [f for f in self.futures if f.task_run_id not in self.has_downstream and not f.failure_seen]
        return [f for f in deciders if f.state_type.is_failed]


def run_flow_locally(
    flow: Flow, parameters: dict[str, Any], pool: cf.ThreadPoolExecutor | None = None, *, return_state: bool = False
) -> Any:
    """Run ``flow`` in this process and return its value; raise what made it fail.

    ``return_state=True`` gives the run's final :class:`State` instead, and never raises.
    """
    state = flow_state_locally(flow, parameters, pool)
    return state if return_state else state.result()


def flow_state_locally(flow: Flow, parameters: dict[str, Any], pool: cf.ThreadPoolExecutor | None = None) -> State:
    """Run ``flow`` in this process, with its retries, and return its final state.

    A failed attempt runs the whole body again after ``retry_delay_seconds`` (there is no
    stored state to resume from in-process); the hooks see the final state only.
    """
    show_run_logs_on_terminal()
    own_pool = pool is None
    workers = get_settings().local_max_workers
    pool = pool or cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"flow-{flow.name}")
    run_id = str(uuid.uuid4())
    parent = current_run()
    run_name = flow.run_name(parameters, run_id)
    abandoned = False
    try:
        for attempt in range(1, flow.retries + 2):
            extra = {"parent_flow_run_id": parent.flow_run_id if parent else None, "local": True}
            info = RunInfo(run_id, flow.name, attempt=attempt, extra=extra, run_name=run_name)
            state, abandoned = _flow_attempt(flow, parameters, pool, info)
            if state.is_completed() or attempt > flow.retries:
                break
            logging.getLogger("orchestrator.runs").info(
                "[%s %s] attempt %d ended %s (%s); retrying in %gs",
                flow.name,
                run_id,
                attempt,
                state.name,
                state.message,
                flow.retry_delay_seconds,
            )
            time.sleep(flow.retry_delay_seconds)
        call_hooks(flow, flow.hooks, info, state.detail, state.message or "")
        return state
    finally:
        if own_pool:
            pool.shutdown(wait=not abandoned, cancel_futures=abandoned)


def _flow_attempt(
    flow: Flow, parameters: dict[str, Any], pool: cf.ThreadPoolExecutor, info: RunInfo
) -> tuple[State, bool]:
    """One attempt of an in-process run: (its final state, whether its threads were abandoned)."""
    run_id = info.flow_run_id
    engine = LocalEngine(flow, run_id, pool, parameters)

    def body() -> Any:
        with using(engine, info), prints_logged(flow.log_prints):
            value = aio.call(flow.fn, parameters)
        engine.drain()
        return value

    try:
        if flow.timeout_seconds:  # the body and its task runs, abandoned at the deadline (see timeouts.py)
            value = call_with_timeout(body, flow.timeout_seconds, f"flow run {flow.name!r} ({run_id})")
        else:
            value = body()
    except LocalTimeout as exc:
        if getattr(exc, "task_run_id", None) is not None:  # a task's timeout, raised into the body by result()
            return State.of(StateType.FAILED, describe(exc), data=exc), False
        message = f"ran past timeout_seconds={flow.timeout_seconds:g} ({describe(exc)})"
        error = FlowRunFailed(f"flow run {flow.name!r} ({run_id}) ended TimedOut: {message}.")
        error.__cause__ = exc
        return State.of(StateType.TIMED_OUT, message, data=error), True
    except Exception as exc:
        return State.of(StateType.FAILED, describe(exc), data=exc), False
    if isinstance(value, State):  # the body decided its own final state (as in Prefect)
        return _returned_state(flow, run_id, value), False
    failed = engine.failed_runs([f for f, _ in walk_futures(value)])
    if failed:
        message = "; ".join(f"{f.label} ({f.state_type.value}: {f.history[-1][2]})" for f in failed)
        return State.of(StateType.FAILED, message, data=_flow_error(flow, run_id, engine, failed, message)), False
    return State.of(StateType.COMPLETED, data=replace_futures(value, lambda f, _: f.result())), False


def _returned_state(flow: Flow, run_id: str, returned: State) -> State:
    """The final state of a run whose body returned ``returned``: a completed one's data is its value,
    a failed one's result raises its exception (or FlowRunFailed with its message)."""
    if returned.is_completed():
        return State.of(returned.detail, returned.message, data=replace_futures(returned.data, lambda f, _: f.result()))
    error = returned.data if isinstance(returned.data, BaseException) else None
    if error is None:
        said = f": {returned.message}" if returned.message else ""
        error = FlowRunFailed(f"flow run {flow.name!r} ({run_id}) returned a {returned.name} state{said}")
    return State(returned.type, returned.name, returned.message, error)


def _flow_error(flow: Flow, run_id: str, engine: LocalEngine, failed: list[LocalFuture], message: str) -> BaseException:
    """What a failed in-process run raises: the exception of the task run that failed first (as
    Prefect raises it), with a note naming the run; FlowRunFailed if no task raised one."""
    root_cause = next((f for f in failed if f.state_type in _RAISED), None) or next(
        (f for f in engine.futures if f.state_type in _RAISED), None
    )
    error = root_cause.cf.exception() if root_cause is not None else None
    summary = f"flow run {flow.name!r} ({run_id}) failed: task runs {message}."
    if error is None:
        error = FlowRunFailed(summary)
        error.__cause__ = failed[0].cf.exception()
        return error
    if summary not in getattr(error, "__notes__", ()):
        error.add_note(summary)
    return error


# The states in which a task run's future holds the exception its task raised.
_RAISED = frozenset({StateType.FAILED, StateType.TIMED_OUT})
