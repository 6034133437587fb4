"""Tasks started inside a task run (Prefect 3): ``other.submit(x)`` / ``other.map(xs)`` in a task's function.

A task's function runs with no flow engine in its context (the executor on a worker and the
in-process runner both call it under ``using(None, run)``), so calling another task there
runs its function directly, as a plain call. ``submit`` and ``map`` need futures: this
engine runs the nested task runs in threads of the process the task runs in (a worker's
pool process, or the in-process run's), and gives futures of
:class:`~orchestrator.runtime.futures.Future` with ``result()``, ``wait()``, ``wait()`` /
``as_completed()`` and a FutureList for ``map``.

Kept simple on purpose: a nested task run is part of its parent task run, not a task run of
its own. Its logs carry the parent's task run id (with its own task name), it is not
recorded in the run store or the API, and it takes no concurrency slot (the parent holds
the parent's). Retries, retry delays, ``retry_on`` / ``retry_condition_fn``, the signals,
trigger rules between nested futures, ``timeout_seconds`` and state hooks hold as in an
in-process run; the cache and ``task_run_name`` do not apply. A nested future the task
never waits for keeps running in its thread after the task returns, and its result is dropped.

Threads: one pool per nesting depth in each process (re-created after a fork). A nested
task that itself submits and waits occupies a thread of depth *d* while its children run in
the pool of depth *d + 1*, so no pool ever waits on itself and a full pool cannot deadlock.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextvars
import os
import threading
from typing import TYPE_CHECKING, Any

from orchestrator.authoring.hooks import call_hooks
from orchestrator.authoring.triggers import verdict
from orchestrator.config.settings import get_settings
from orchestrator.errors import OrchestratorError, TaskRunFailed, UpstreamFailedError
from orchestrator.local.thread_engine import Attempts, ThreadEngine, start_when_done
from orchestrator.local.thread_future import ThreadFuture
from orchestrator.runtime import aio
from orchestrator.runtime.context import RunInfo, current_engine, current_run, using
from orchestrator.runtime.engine import (
    bind_arguments,
    check_wait_for,
    replace_futures,
    split_map_arguments,
    walk_futures,
    zip_mapped,
)
from orchestrator.runtime.futures import Future
from orchestrator.runtime.signals import RETRY
from orchestrator.runtime.task_errors import annotate
from orchestrator.states import StateType

if TYPE_CHECKING:
    from orchestrator.authoring.flows import Flow
    from orchestrator.authoring.tasks import Task

DEPTH = "nested_depth"  # RunInfo.extra: how deep a nested task run is (the parent task run is depth 0)

_pools: dict[int, cf.ThreadPoolExecutor] = {}
_pools_pid = 0
_pools_lock = threading.Lock()


def _pool(depth: int) -> cf.ThreadPoolExecutor:
    """The threads of nesting depth ``depth`` in this process (new ones after a fork)."""
    global _pools_pid
    with _pools_lock:
        if _pools_pid != os.getpid():
            _pools.clear()  # a forked child has the dict, not the threads
            _pools_pid = os.getpid()
        pool = _pools.get(depth)
        if pool is None:
            pool = _pools[depth] = cf.ThreadPoolExecutor(
                max_workers=get_settings().local_max_workers, thread_name_prefix=f"nested-task-{depth}"
            )
        return pool


def inside_task_engine() -> NestedEngine | None:
    """The engine for ``submit`` / ``map`` in the task run this code runs in, or None outside any task run."""
    run = current_run()
    if run is None or run.task_run_id is None or current_engine() is not None:
        return None
    return NestedEngine(run)


class NestedFuture(ThreadFuture):
    """A nested task run executing in a thread of this process (labelled with a piece of its own id)."""

    engine: NestedEngine

    def __init__(self, engine: NestedEngine, base: str) -> None:
        super().__init__(engine, base)  # its own id for wait() and as_completed(); never recorded
        self.label = f"{base}-{self.task_run_id[:8]}"


class NestedEngine(ThreadEngine):
    """Runs the task runs a task's function submits, in this process's nested-task threads."""

    future_type = NestedFuture

    def __init__(self, parent: RunInfo) -> None:
        self.parent = parent
        self.depth = int(parent.extra.get(DEPTH, 0)) + 1
        self.pool = _pool(self.depth)

    def _where(self, task: Task) -> str:
        return f"task {task.name!r} submitted inside task {self.parent.task_name!r}"

    # -- submitting -----------------------------------------------------------------
    def submit(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: list[Any]) -> NestedFuture:
        bound = bind_arguments(task.fn, args, kwargs, self._where(task))
        return self._submit_bound(task, bound, wait_for)

    def _submit_bound(self, task: Task, bound: dict[str, Any], wait_for: list[Any]) -> NestedFuture:
        upstream = list(walk_futures(bound))
        for item in check_wait_for(wait_for, task.name):
            upstream.extend(walk_futures(item))
        for up, _ in upstream:
            if not isinstance(up, NestedFuture):
                raise OrchestratorError(
                    f"{self._where(task)}: it was given a future of the flow run ({up.label}); inside a task "
                    "only futures of tasks submitted in that task can be passed on. Pass the value instead."
                )
        future = NestedFuture(self, task.label_base)
        context = contextvars.copy_context()  # the submitter's tags, log_prints and its own context variables
        start_when_done(upstream, lambda: self.pool.submit(context.run, self._execute, future, task, bound, upstream))
        return future

    def map(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: list[Any]) -> list[NestedFuture]:
        where = self._where(task)
        mapped, static = split_map_arguments(bind_arguments(task.fn, args, kwargs, where), where)
        lists = {name: list(value.result() if isinstance(value, Future) else value) for name, value in mapped.items()}
        return [self._submit_bound(task, static | one, wait_for) for one in zip_mapped(lists, where)]

    def call_subflow(self, flow: Flow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Not reached: a flow called inside a task finds no engine in its context and runs in-process."""
        raise OrchestratorError(f"flow {flow.name!r}: a subflow cannot be submitted from inside a task.")

    # -- running one nested task ----------------------------------------------------------
    def _execute(
        self, future: NestedFuture, task: Task, bound: dict[str, Any], upstream: list[tuple[Future[Any], bool]]
    ) -> None:
        states = {up.task_run_id: (up.label, up.state_type) for up, _ in upstream}
        allowed = {up.task_run_id for up, tolerated in upstream if tolerated}
        decision = verdict(task.trigger, states, allowed)
        if not decision.run:
            future.set_state(decision.state)
            future.cf.set_exception(UpstreamFailedError(f"task {future.label}: {decision.message}"))
            return
        inputs = replace_futures(bound, lambda f, _: f.result() if f.state_type is StateType.COMPLETED else None)
        try:
            value = self._attempts(future, task, inputs)
        except Exception as exc:  # the outcome is recorded; the future carries the error
            future.cf.set_exception(exc)
            return
        future.set_state(StateType.COMPLETED)
        future.cf.set_result(value)

    def _attempts(self, future: NestedFuture, task: Task, inputs: dict[str, Any]) -> Any:
        """Run the attempts the task's retry options allow; its value, or raise TaskRunFailed."""
        parent = self.parent
        attempts = Attempts(task)
        while True:
            future.set_state(StateType.RUNNING if attempts.number == 1 else StateType.RETRYING)
            extra = parent.extra | {DEPTH: self.depth, "nested_task_run_id": future.task_run_id}
            run = RunInfo(
                parent.flow_run_id,
                parent.flow_name,
                parent.task_run_id,
                task.name,
                attempts.number,
                extra=extra,
                tags=list(task.tags),
            )

            def call(run: RunInfo = run) -> Any:
                with using(None, run):
                    return aio.call(task.fn, inputs)

            try:
                value = attempts.call(call, future.label)
            except Exception as exc:
                outcome = attempts.outcome(exc)
                call_hooks(task, task.hooks, run, outcome.state, outcome.message)
                if outcome.state is StateType.AWAITING_RETRY:
                    future.set_state(StateType.AWAITING_RETRY)
                    attempts.retry(outcome)
                    continue
                future.set_state(outcome.state)
                if outcome.state is StateType.SKIPPED or isinstance(exc, RETRY):  # no error of its own
                    where = f"task {future.label} (inside task {parent.task_name})"
                    raise TaskRunFailed(f"{where} ended {outcome.state.value}: {outcome.message}") from exc
                label = f"{future.label} (inside task {parent.task_name})"
                flow_run = parent.flow_run_id
                annotate(exc, task_run_id=future.task_run_id, flow_run_id=flow_run, label=label, state=outcome.state)
                raise  # the task's own exception, as in-process and on the fleet
            call_hooks(task, task.hooks, run, StateType.COMPLETED)
            return value
