"""``@flow``: a function whose body wires tasks together into one run."""

from __future__ import annotations

import functools
import inspect
import reprlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from orchestrator.authoring import option_checks as checks
from orchestrator.authoring.decorator_types import flow_decorator
from orchestrator.authoring.definitions import check_callable, why_not_importable
from orchestrator.authoring.hooks import Hook, collect_hooks
from orchestrator.authoring.keywords import check_keywords, target_name
from orchestrator.authoring.methods import (
    bind_on_lookup,
    binds_class,
    carry_binding,
    direct_args,
    engine_args,
    refuse_bound,
    unwrap_function,
)
from orchestrator.authoring.naming import run_name_problem
from orchestrator.authoring.options import (
    flow_option_names,
    flow_record_options,
    flow_with_options,
    given_options,
    registering,
)
from orchestrator.authoring.registry import register_flow
from orchestrator.errors import DefinitionError, OrchestratorError, ParameterError
from orchestrator.guards.limits import queue_problem
from orchestrator.runtime.context import current_engine
from orchestrator.runtime.engine import as_call, bind_arguments, takes_all_by_name
from orchestrator.states import state_of_awaitable

if TYPE_CHECKING:
    from orchestrator.planning.plan import Plan
    from orchestrator.runs.handle import FlowRun
    from orchestrator.runtime.futures import Future

P = ParamSpec("P")
R = TypeVar("R")


def _is_factory(default: Any) -> bool:
    """A callable default is a factory, evaluated when each run is created."""
    return callable(default) and not isinstance(default, type)


class Flow(Generic[P, R]):
    """A decorated flow function plus its options."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        queue: str | None = None,
        flow_run_name: str | Callable[[], str] | None = None,
        description: str | None = None,
        timeout_seconds: float | None = None,
        retries: int = 0,
        retry_delay_seconds: float = 0,
        on_completion: Hook | Sequence[Hook] | None = None,
        on_failure: Hook | Sequence[Hook] | None = None,
        on_crashed: Hook | Sequence[Hook] | None = None,
        on_cancellation: Hook | Sequence[Hook] | None = None,
        log_prints: bool = False,
        version: str | None = None,
        plan_on_worker: bool = False,
        validate_parameters: bool = True,
    ) -> None:
        self.options_given = given_options(locals())  # what with_options starts from
        self.display_name: str | None = None  # with_options(name=...): names its runs
        self.changed_options: dict[str, Any] = {}  # with_options(...) on the registered flow: kept on .delay() runs
        # a call in-process checks and converts its arguments by their annotations (authoring/params.py)
        where = f"flow {fn.__qualname__!r}" if callable(fn) and hasattr(fn, "__qualname__") else "flow"
        self.validate_parameters = checks.flag(where, "validate_parameters", validate_parameters)
        self.binds_class = binds_class(fn)  # @flow above @classmethod: bound to the class (see methods.py)
        fn, self.is_static = unwrap_function(fn, "flow")  # a staticmethod is never bound (see methods.py)
        self.bound_to: Any = None  # the instance of obj.method (set on the copy Flow.__get__ makes)
        check_callable(fn, "flow")
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)  # its body is a coroutine (runtime/aio.py runs it)
        self.name = checks.text(where, "name", name, example="etl") or fn.__name__.replace("_", "-")
        where = f"flow {self.name!r}"
        if (queue := checks.queue_name(where, queue)) is not None and (problem := queue_problem(queue)):
            raise DefinitionError(f"{where}: {problem}.")
        self.queue = queue
        if flow_run_name is not None and not (isinstance(flow_run_name, str) or callable(flow_run_name)):
            checks.refuse(
                where,
                "flow_run_name",
                flow_run_name,
                "a template string or a function with no arguments",
                "e.g. flow_run_name='etl-{day}'.",
            )
        self.flow_run_name = flow_run_name
        description = checks.text(where, "description", description, example="Loads the day.", empty=True)
        self.description = description or inspect.getdoc(fn) or ""
        self.version = checks.text(where, "version", version, example="1.2")  # shown, never interpreted
        self.signature = inspect.signature(fn)
        self.timeout_seconds = checks.seconds(where, "timeout_seconds", timeout_seconds)
        self.retries = checks.count(where, "retries", retries)
        self.retry_delay_seconds = checks.seconds(where, "retry_delay_seconds", retry_delay_seconds, zero=True) or 0
        # print() in the body, and in tasks that do not say, goes to the run log
        self.log_prints = checks.flag(where, "log_prints", log_prints)
        # .delay() plans a body that only wires tasks in the caller's process (one hop fewer); a body with
        # side effects of its own (prints, sleeps, reads) can ask for a worker of its queue to plan it
        self.plan_on_worker = checks.flag(where, "plan_on_worker", plan_on_worker)
        self.hooks = collect_hooks(
            f"flow {self.name!r}",
            {
                "on_completion": on_completion,
                "on_failure": on_failure,
                "on_crashed": on_crashed,
                "on_cancellation": on_cancellation,
            },
        )
        # inspect.signature(), __doc__, __name__, __wrapped__ as for a decorated function (Prefect does the same)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        if why_not_importable(fn) is None and registering():
            register_flow(self)

    def with_options(self, **options: Any) -> Flow[P, R]:
        """A copy of this flow with some ``@flow`` options changed (same registered name; see docs/options.md)."""
        return carry_binding(self, flow_with_options(self, options))

    def __get__(self, instance: Any, owner: type | None = None) -> Flow[P, R]:
        """``obj.method``: a copy bound to ``obj``, passed as the first argument (Prefect's flows on methods)."""
        return bind_on_lookup(self, instance, owner)

    def _in_process_parameters(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The parameters of a call run in this process, the instance first for a method."""
        return self.call_parameters(direct_args(self, args), kwargs)

    def call_parameters(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The parameters of an in-process call (top level or subflow): bound, the given ones checked and
        converted by their annotations unless ``validate_parameters=False``, the defaults filled in."""
        if not self.validate_parameters:
            return self.bind_parameters(args, kwargs)
        from orchestrator.authoring.params import validated_call  # on use: pydantic is loaded by the first call

        return validated_call(self, args, kwargs)

    def bind_parameters(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Bind a call to named parameters, evaluating callable defaults now."""
        bound = bind_arguments(self.fn, args, kwargs, f"flow {self.name!r}")
        params: dict[str, Any] = {}
        for pname, param in self.signature.parameters.items():
            if pname in bound:
                params[pname] = bound[pname]
            elif param.default is not param.empty:
                default = param.default
                params[pname] = default() if _is_factory(default) else default
        return params

    def complete_parameters(self, given: dict[str, Any]) -> dict[str, Any]:
        """Parameters given by name (a run record, the API, ``-p``): checked and completed like a call
        (``*args`` and ``**kwargs`` given under their own names), callable defaults evaluated now.

        A body whose parameters all take names binds ``given`` by name as it is: spreading it as a
        call first (:func:`as_call`) binds the same values with the same errors, and cost about 5 µs
        of every ``.delay()``."""
        if takes_all_by_name(self.fn):
            return self.bind_parameters((), given)
        args, kwargs = as_call(self.fn, given)
        return self.bind_parameters(args, kwargs)

    def check_parameter_names(self, parameters: dict[str, Any]) -> None:
        """Refuse unknown or missing parameters, naming them."""
        known = set(self.signature.parameters)
        unknown = sorted(set(parameters) - known)
        if unknown:
            raise ParameterError(
                f"flow {self.name!r} has no parameter {', '.join(map(repr, unknown))}; "
                f"its parameters are: {', '.join(known) or '(none)'}."
            )

    def run_name(self, parameters: dict[str, Any], run_id: str) -> str:
        """The run's name: the ``flow_run_name`` template filled in, or flow name + id.

        A made name passes the same check as a given one (:func:`run_name_problem`).
        """
        template = self.flow_run_name
        if template is None:
            from orchestrator.runstate.records import default_run_name  # on use: authoring needs no run store

            return default_run_name(self.display_name or self.name, run_id)
        if callable(template):
            name = str(template())
        else:
            try:
                name = template.format(**parameters)
            except (KeyError, IndexError) as exc:
                raise ParameterError(
                    f"flow {self.name!r}: flow_run_name {template!r} names {exc}, which is not a parameter of the flow."
                ) from None
        problem = run_name_problem(name)
        if problem:
            raise ParameterError(
                f"flow {self.name!r}: flow_run_name {reprlib.repr(template)} made a name that cannot be used: "
                f"{problem}. Pass parameters that make a valid name, or give the run a name."
            )
        return name

    @property
    def hooks_set(self) -> bool:
        """Whether any state hook is declared on this flow."""
        return any(self.hooks.values())

    @property
    def run_options(self) -> dict[str, Any]:
        """Options kept on each run record, for the workers that end or retry the run."""
        return {
            "timeout_seconds": self.timeout_seconds or "",
            "retries": self.retries,
            "retry_delay_seconds": self.retry_delay_seconds,
            **flow_record_options(self),
        }

    def importable_or_raise(self) -> None:
        """Refuse to send a flow that workers could not import (or a method bound to an instance)."""
        refuse_bound(self, "flow", "a run of its own (child.submit(), .delay() in a body)")
        reason = why_not_importable(self.fn)
        if reason:
            raise DefinitionError(f"flow {self.name!r} cannot run on workers: {reason}.")

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the flow: in-process outside any flow, as a subflow inside one. Its value, or with
        ``return_state=True`` its final State (which never raises; ``state.result()`` does)."""
        from orchestrator.authoring.tasks import pop_call_keyword

        return_state = bool(pop_call_keyword(self.fn, kwargs, "return_state", False))
        engine = current_engine()
        if self.is_async:  # as in Prefect: a coroutine, awaited for the flow's value
            from orchestrator.runtime import aio

            if engine is not None:
                call = aio.subflow_call(engine, self, engine_args(self, args), kwargs)
                if return_state:
                    engine.needs_values(f"{self.name}(..., return_state=True)")
                    return state_of_awaitable(call)  # type: ignore[return-value]
                return call  # type: ignore[return-value]
            parameters = self._in_process_parameters(args, kwargs)
            return aio.flow_call(self, parameters, return_state)  # type: ignore[return-value]
        if engine is not None:
            if return_state:
                return engine.subflow_state(self, engine_args(self, args), kwargs)  # type: ignore[return-value]
            return engine.call_subflow(self, engine_args(self, args), kwargs)  # type: ignore[no-any-return]
        from orchestrator.local.runner import run_flow_locally

        parameters = self._in_process_parameters(args, kwargs)
        return run_flow_locally(self, parameters, return_state=return_state)  # type: ignore[no-any-return]

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Inside a flow body: start this flow as a child run now and return a future of its value,
        so several children run at once (``child(...)`` waits for its value)."""
        engine = current_engine()
        if engine is None:
            raise OrchestratorError(
                f"{self.name}.submit() was called outside a flow; call it inside a @flow body, "
                "or use .delay() to send a run to the fleet."
            )
        return engine.submit_subflow(self, engine_args(self, args), kwargs)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> FlowRun:
        """Send a run of this flow to the fleet with these parameters.

        Inside a flow body the run is linked to that flow run as its child; in a body traced
        into a plan it is a node of the plan (nothing starts while tracing), whose value is the
        new run's id.
        """
        refuse_bound(self, "flow", f"{self.name}.delay()")
        return self.apply_async(parameters=bind_arguments(self.fn, args, kwargs, f"flow {self.name!r}"))

    def apply_async(
        self,
        parameters: dict[str, Any] | None = None,
        *,
        queue: str | None = None,
        name: str | None = None,
    ) -> FlowRun:
        """Send a run to the fleet: ``parameters`` by name, optional queue and run name.

        The parameters get the check the API gives a run sent over HTTP (the flow's JSON
        Schema, with its messages): bad ones raise ParameterError and nothing is sent.
        """
        refuse_bound(self, "flow", f"{self.name}.apply_async()")
        engine = current_engine()
        if engine is not None:
            started = engine.trigger_flow(self, dict(parameters or {}), queue=queue, name=name)
            if started is not None:
                return started  # type: ignore[no-any-return]
        from orchestrator.runs.create import create_flow_run

        return create_flow_run(self, dict(parameters or {}), queue=queue, name=name)

    def plan(self, *args: P.args, **kwargs: P.kwargs) -> Plan:
        """Trace the body with these parameters and return the task graph (runs nothing)."""
        from orchestrator.planning.tracer import trace_flow

        return trace_flow(self, self.bind_parameters(direct_args(self, args), kwargs), queue=self.queue)

    def __repr__(self) -> str:
        return f"<Flow {self.name}>"


@flow_decorator(Flow)  # typed with Flow's own options (see decorator_types.py)
def flow(__fn: Callable[P, R] | None = None, **options: Any) -> Any:
    """Declare a flow: ``@flow`` or ``@flow(name="etl", queue="etl", ...)``.

    A keyword ``@flow`` does not take is refused by name, with what to do instead.
    """

    def declare(fn: Callable[P, R]) -> Flow[P, R]:
        check_keywords("flow", target_name(fn), options, flow_option_names())
        return Flow(fn, **options)

    return declare(__fn) if __fn is not None else declare
