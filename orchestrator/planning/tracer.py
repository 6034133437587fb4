"""Trace a flow body into a :class:`~orchestrator.planning.plan.Plan` without running any task.

The body runs once with its bound parameters; each task call becomes a node and
each future passed along becomes an edge. If the body needs a task's *value* while
it runs (``.result()``, ``if x > 5``, iterating a future), tracing stops with
:class:`DynamicFlowRequired` and the flow runs in dynamic mode on a worker instead.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
import uuid
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from orchestrator.authoring.tags import no_context_tags
from orchestrator.config.settings import get_settings
from orchestrator.errors import OrchestratorError
from orchestrator.planning.plan import REF, Node, Plan, SubflowInfo, refs_in
from orchestrator.planning.templates import allowed_failures, to_template
from orchestrator.runtime import aio
from orchestrator.runtime.context import RunInfo, using
from orchestrator.runtime.engine import (
    Engine,
    bind_arguments,
    check_wait_for,
    split_map_arguments,
    zip_mapped,
)
from orchestrator.runtime.futures import DoneAndNotDone, Future
from orchestrator.runtime.run_logger import prints_logged
from orchestrator.states import State, StateType

if TYPE_CHECKING:
    from orchestrator.authoring.flows import Flow
    from orchestrator.authoring.tasks import Task


class DynamicFlowRequired(BaseException):
    """The flow body needs task results while it runs: it must run in dynamic mode.

    A BaseException so that a flow body's ``except Exception`` cannot swallow it.
    """


class PlannedFuture(Future[Any]):
    """A node of the plan being traced; its value does not exist yet."""

    engine: TracingEngine

    def __init__(self, engine: TracingEngine, node_id: str, label: str, path: tuple[Any, ...] = ()):
        self.engine = engine
        self.task_run_id = node_id
        self.label = label
        self.path = path

    def _needs_value(self, what: str) -> NoReturn:
        reason = self.engine.root.dynamic_reason = f"the flow body uses {what} of {self.label}"
        raise DynamicFlowRequired(reason)

    @property
    def state_type(self) -> StateType:
        self._needs_value("the state")

    @property
    def state(self) -> State:
        self._needs_value("the state")

    def wait(self, timeout: float | None = None) -> StateType:
        self._needs_value("wait()")

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        self._needs_value(".result()")

    def __await__(self) -> Generator[Any, None, PlannedFuture]:
        """``await future`` while tracing gives the stand-in itself, as ``task(x)`` in a sync body does."""
        return self
        yield  # a generator that returns at once: nothing is waited for

    def __getitem__(self, key: Any) -> PlannedFuture:
        if not isinstance(key, (str, int)):
            self._needs_value(f"[{key!r}]")
        return PlannedFuture(self.engine, self.task_run_id, f"{self.label}[{key!r}]", (*self.path, key))

    def __bool__(self) -> bool:
        self._needs_value("the truth value")

    def __iter__(self) -> Iterator[Any]:
        self._needs_value("iteration")

    def __len__(self) -> int:
        self._needs_value("len()")

    def __int__(self) -> int:
        self._needs_value("int()")

    def __float__(self) -> float:
        self._needs_value("float()")

    def __index__(self) -> int:
        self._needs_value("the index value")

    def __lt__(self, other: Any) -> bool:
        self._needs_value("a comparison")

    __le__ = __gt__ = __ge__ = __lt__

    def __add__(self, other: Any) -> Any:
        self._needs_value("arithmetic")

    # every operator needs the value: the body then runs in dynamic mode, with real values
    __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = __add__
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __pow__ = __rpow__ = __divmod__ = __add__
    __rdivmod__ = __matmul__ = __rmatmul__ = __and__ = __rand__ = __or__ = __ror__ = __add__
    __xor__ = __rxor__ = __lshift__ = __rlshift__ = __rshift__ = __rrshift__ = __add__

    def __neg__(self) -> Any:
        self._needs_value("arithmetic")

    __pos__ = __abs__ = __invert__ = __round__ = __trunc__ = __floor__ = __ceil__ = __complex__ = __neg__

    def __str__(self) -> str:
        self._needs_value("str() (or print, or an f-string)")

    def __format__(self, spec: str) -> str:
        self._needs_value("formatting (an f-string or format())")

    def __getattr__(self, name: str) -> Any:
        """An attribute of the value (``x.upper()``, ``x.items()``); Python's own dunder probes stay errors."""
        if name.startswith("_"):
            raise AttributeError(name)
        self._needs_value(f"the attribute {name!r}")

    def __contains__(self, item: Any) -> bool:
        self._needs_value("'in'")

    __hash__ = Future.__hash__

    def __eq__(self, other: object) -> bool:
        """A future equals itself (sets and dicts of futures); against a value or another task's
        future (``a == b`` compares their values, as in Prefect), the value is needed."""
        if other is self or (
            isinstance(other, PlannedFuture) and (other.task_run_id, other.path) == (self.task_run_id, self.path)
        ):
            return True
        self._needs_value("a comparison")

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)


class TracingEngine(Engine):
    """Records the task calls of one flow run (root or subflow) into a shared plan."""

    subflows_in_threads = False  # one subflow at a time, so the plan's nodes keep their order

    def __init__(
        self,
        plan: Plan,
        flow_run_id: str,
        queue: str,
        label_counts: dict[str, int] | None = None,
        log_prints: bool = False,
        root: TracingEngine | None = None,
    ) -> None:
        self.plan = plan
        self.root: TracingEngine = root or self  # the root flow's engine holds the trace's dynamic reason
        self.log_prints = log_prints
        self.flow_run_id = flow_run_id
        self.queue = queue
        self.barrier: list[str] = []
        self.dynamic_reason: str | None = None
        self._counts = label_counts if label_counts is not None else {}

    # -- templates ------------------------------------------------------------------
    def template(self, value: Any, where: str, serializer: str = "json") -> Any:
        """Turn call arguments into a JSON template: planned futures become references."""
        return to_template(
            value, where, serializer, lambda f: isinstance(f, PlannedFuture) and f.engine.plan is self.plan
        )

    def _inputs(self, task: Task, bound: dict[str, Any]) -> dict[str, Any]:
        where = f"task {task.name!r} argument"
        return {k: self.template(v, f"{where} {k!r}", task.result_serializer) for k, v in bound.items()}

    def _label(self, base: str) -> str:
        count = self._counts.get(base, 0)
        self._counts[base] = count + 1
        return f"{base}-{count}"

    def _add(self, node: Node) -> PlannedFuture:
        node.allow = list(dict.fromkeys([*node.allow, *allowed_failures(node.inputs)]))
        self.plan.add(node)
        return PlannedFuture(self, node.id, node.label)

    def _wait_ids(self, wait_for: list[Any], task_name: str) -> tuple[list[str], list[str]]:
        """(ids to wait for, those of them whose failure is tolerated).

        ``wait()`` only waits: like Prefect, tasks after it run whatever the waited
        futures' states, so barrier edges are tolerated too.
        """
        ids: list[str] = []
        allow: list[str] = []
        for item in check_wait_for(wait_for, task_name):
            ref = self.template(item, f"task {task_name!r} wait_for")
            ids.append(ref[REF])
            if ref.get("allow_failure"):
                allow.append(ref[REF])
        barrier = [b for b in self.barrier if b not in ids]
        return ids + barrier, allow + barrier

    def _task_node(
        self,
        task: Task,
        inputs: dict[str, Any],
        waits: tuple[list[str], list[str]],
        kind: str = "task",
        bound: dict[str, Any] | None = None,
    ) -> Node:
        wait_ids, allow = waits
        label = self._label(task.label_base)
        if task.task_run_name is not None and kind == "task":
            label = _planned_name(task, bound or {}, inputs) or label
        return Node(
            id=str(uuid.uuid4()),
            kind=kind,  # type: ignore[arg-type]
            name=task.name,
            label=label,
            flow_run_id=self.flow_run_id,
            inputs=inputs,
            wait_for=wait_ids,
            queue=task.queue or self.queue,
            options=task.options | {"importable_error": _import_error(task), **self._inherited(task)},
            trigger=task.trigger,
            allow=allow,
        )

    def _inherited(self, task: Task) -> dict[str, Any]:
        """Options a task takes from its flow when it does not say (log_prints)."""
        return {"log_prints": True} if task.log_prints is None and self.log_prints else {}

    # -- Engine ---------------------------------------------------------------------
    def needs_values(self, reason: str) -> NoReturn:
        """A call that reads a run's real outcome: the body runs in dynamic mode."""
        self.root.dynamic_reason = f"the flow body uses {reason}"
        raise DynamicFlowRequired(self.root.dynamic_reason)

    def submit(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: list[Any]) -> PlannedFuture:
        bound = bind_arguments(task.fn, args, kwargs, f"task {task.name!r}")
        waits = self._wait_ids(wait_for, task.name)
        return self._add(self._task_node(task, self._inputs(task, bound), waits, bound=bound))

    def map(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: list[Any]) -> Any:
        where = f"task {task.name!r}"
        mapped, static = split_map_arguments(bind_arguments(task.fn, args, kwargs, where), where)
        waits = self._wait_ids(wait_for, task.name)
        if not any(isinstance(v, Future) for v in mapped.values()):
            runs = zip_mapped({k: list(v) for k, v in mapped.items()}, where)
            return [
                self._add(self._task_node(task, self._inputs(task, static | one), waits, bound=static | one))
                for one in runs
            ]
        inputs = {"mapped": self._inputs(task, mapped), "static": self._inputs(task, static)}
        return self._add(self._task_node(task, inputs, waits, kind="map"))

    def call_task(
        self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: list[Any] | None = None
    ) -> PlannedFuture:
        return self.submit(task, args, kwargs, wait_for or [])

    def call_subflow(self, flow: Flow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> PlannedFuture:
        """A subflow call: traced inline when its body only wires tasks, else a node that starts it.

        Inline, the child's task runs are nodes of this plan (one run tree, compiled together,
        siblings concurrent). A child whose body needs values (computes with its inputs, reads
        a result) cannot be traced with planned futures: it becomes a ``flow_run`` node that
        starts the child as a run of its own, traced with its actual parameters once they exist.
        The parent stays compiled either way.
        """
        params = flow.bind_parameters(args, kwargs)
        child_id = str(uuid.uuid4())
        where = f"subflow {flow.name!r}"
        parameters = {k: self.template(v, f"{where} parameter {k!r}") for k, v in params.items()}
        info = SubflowInfo(run_id=child_id, name=flow.name, parent_run_id=self.flow_run_id, parameters=parameters)
        before = (set(self.plan.nodes), set(self.plan.subflows), dict(self._counts))
        reason_before = self.root.dynamic_reason
        self.plan.subflows[child_id] = info
        child = TracingEngine(
            self.plan, child_id, flow.queue or self.queue, self._counts, flow.log_prints, root=self.root
        )
        child.barrier = list(self.barrier)
        try:
            if catches_errors(flow.fn):  # its except clauses need the tasks' real errors: a run of its own
                raise DynamicFlowRequired(f"subflow {flow.name!r} catches exceptions")
            with using(child, RunInfo(child_id, flow.name, extra={"parent_flow_run_id": self.flow_run_id})):
                value = aio.call(flow.fn, params)
            # the body caught our signal, or decides its own final state (a run of its own honours it)
            needs_values = self.root.dynamic_reason != reason_before or isinstance(value, State)
        except DynamicFlowRequired:
            needs_values = True
        except OrchestratorError:
            raise  # a wiring or definition error: the same with any values
        except Exception:  # what it did with a planned input may be what failed: run it with values
            needs_values = True
        if needs_values:  # undo what the child added; it runs as a run of its own
            self.root.dynamic_reason = reason_before
            self._forget_since(before)
            return self.start_flow_run(flow, parameters, wait=True, link="subflow")
        returns = child.template(value, f"{where} return value")
        returned = refs_in(returns)
        side_leaves = [n for n in self.plan.leaves(child_id) if n not in returned]
        end = Node(
            id=str(uuid.uuid4()),
            kind="subflow",
            name=flow.name,
            label=self._label(f"subflow-{flow.name}"),
            flow_run_id=self.flow_run_id,
            inputs={"returns": returns},
            wait_for=side_leaves + list(self.barrier),
            queue=self.queue,
            options={"child_run_id": child_id},
            # A child that returns futures is decided by them (as in-process): its side
            # tasks are waited for, but their failure is tolerated.
            allow=(side_leaves if returned else []) + list(self.barrier),
        )
        info.end_node = end.id
        return self._add(end)

    def _forget_since(self, before: tuple[set[str], set[str], dict[str, int]]) -> None:
        """Drop the nodes and subflows added since ``before`` (a child that will run on its own)."""
        nodes, subflows, counts = before
        for nid in set(self.plan.nodes) - nodes:
            del self.plan.nodes[nid]
        for sid in set(self.plan.subflows) - subflows:
            del self.plan.subflows[sid]
        self._counts.clear()
        self._counts.update(counts)

    def start_flow_run(
        self,
        flow: Flow | None,
        parameters: dict[str, Any],
        *,
        wait: bool,
        link: str,
        deployment: str | None = None,
        queue: str | None = None,
        name: str | None = None,
    ) -> PlannedFuture:
        """A ``flow_run`` node: start a run of its own (linked to this one) once ``parameters`` are ready.

        ``parameters`` are templates already. Its value is the child's result when ``wait``,
        else the child's run id. Nothing starts while tracing (``orchestrator plan`` included).
        """
        target = deployment or (flow.name if flow is not None else "")
        waits = self._wait_ids([], target)
        node = Node(
            id=str(uuid.uuid4()),
            kind="flow_run",
            name=flow.name if flow is not None else target.split("/", 1)[0],
            label=self._label(f"{link}-{target.replace('/', '-')}"),
            flow_run_id=self.flow_run_id,
            inputs={"parameters": parameters},
            wait_for=waits[0],
            queue=self.queue,
            options={
                "link": link,
                "wait": wait,
                "deployment": deployment,
                # a subflow runs on its parent's queue unless its flow names one; a triggered run
                # goes where .delay() from anywhere sends it (a deployment: where it says)
                "run_queue": queue
                or (flow.queue if flow is not None else None)
                or (self.queue if link == "subflow" else None),
                "run_name": name,
                # what with_options changed on the flow (the worker re-imports it by name)
                "flow_options": flow.run_options.get("flow_options") if flow is not None else None,
            },
            allow=waits[1],
        )
        return self._add(node)

    def submit_subflow(self, flow: Flow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> PlannedFuture:
        """``child.submit(...)`` while tracing: the same node a call makes (its value is the child's)."""
        return self.call_subflow(flow, args, kwargs)

    def trigger_flow(
        self, flow: Flow, parameters: dict[str, Any], *, queue: str | None, name: str | None
    ) -> PlannedFuture:
        """``child.delay()`` / ``apply_async`` in a traced body: a node whose value is the new run's id."""
        where = f"flow {flow.name!r} triggered by flow run {self.flow_run_id}"
        templates = {k: self.template(v, f"{where}: parameter {k!r}") for k, v in parameters.items()}
        return self.start_flow_run(flow, templates, wait=False, link="trigger", queue=queue, name=name)

    def run_deployment(self, deployment: str, parameters: dict[str, Any], *, wait: bool) -> PlannedFuture:
        """``run_deployment(...)`` in a traced body: a node that asks the API for the deployment's run."""
        where = f"deployment {deployment!r} run by flow run {self.flow_run_id}"
        templates = {k: self.template(v, f"{where}: parameter {k!r}") for k, v in parameters.items()}
        return self.start_flow_run(None, templates, wait=wait, link="deployment", deployment=deployment)

    def wait(self, futures: list[Future[Any]], timeout: float | None) -> DoneAndNotDone:
        """Traced wait: later task calls wait for these futures (a barrier, no blocking)."""
        for future in futures:
            ref = self.template(future, "wait()")
            if ref[REF] not in self.barrier:
                self.barrier.append(ref[REF])
        return DoneAndNotDone(set(futures), set())

    def as_completed(self, futures: list[Future[Any]], timeout: float | None) -> Iterator[Future[Any]]:
        self.root.dynamic_reason = "the flow body uses as_completed()"
        raise DynamicFlowRequired(self.root.dynamic_reason)


def _planned_name(task: Task, bound: dict[str, Any], inputs: dict[str, Any]) -> str | None:
    from orchestrator.authoring.task_run_names import planned_name

    assert task.task_run_name is not None
    return planned_name(task.task_run_name, bound, inputs, f"task {task.name!r}")


def _import_error(task: Task) -> str | None:
    from orchestrator.authoring.definitions import why_not_importable

    return why_not_importable(task.fn)


@functools.lru_cache(maxsize=1024)
def catches_errors(fn: Callable[..., Any]) -> bool:
    """Whether ``fn``'s own body has a ``try`` with ``except`` clauses.

    A planned call never raises, so an ``except`` around a task call could not take effect
    in a compiled plan: such a body runs in dynamic mode, where the task's own exception
    reaches the clause (``try: load(x) except ValueError: ...``, as in Prefect). Nested
    functions are not looked into; a body whose source cannot be read is planned as usual.
    """
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return False
    function = tree.body[0] if tree.body else None
    if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return False
    pending: list[ast.AST] = list(function.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.Try, ast.TryStar)) and node.handlers:
            return True
        pending.extend(ast.iter_child_nodes(node))
    return False


def trace_flow(flow: Flow, parameters: dict[str, Any], *, run_id: str | None = None, queue: str | None = None) -> Plan:
    """Trace ``flow`` with ``parameters`` into a plan; raises DynamicFlowRequired if needed."""
    if catches_errors(flow.fn):
        raise DynamicFlowRequired("the flow body catches exceptions (try/except): its tasks' errors must reach it")
    run_id = run_id or str(uuid.uuid4())
    plan = Plan(flow.name, run_id, queue or flow.queue or get_settings().default_queue)
    engine = TracingEngine(plan, run_id, plan.queue, log_prints=flow.log_prints)
    with using(engine, RunInfo(run_id, flow.name)), prints_logged(flow.log_prints), no_context_tags():
        value = aio.call(flow.fn, parameters)
    if engine.dynamic_reason:  # the body caught our signal; it still needs values
        raise DynamicFlowRequired(engine.dynamic_reason)
    if isinstance(value, State):  # it decides its own final state: the driver honours that
        engine.needs_values("a returned state")
    plan.returns = engine.template(value, f"flow {flow.name!r} return value")
    plan.topological_order()
    return plan
