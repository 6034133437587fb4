"""What every engine (local threads, tracer, dynamic driver) must provide.

Decorated tasks and flows delegate to the engine of the flow body they are called
in; this keeps ``@task``/``@flow`` free of any knowledge of threads or Celery.
"""

from __future__ import annotations

import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from orchestrator.errors import ParameterError
from orchestrator.runtime.annotations import BoundInstance, Opaque, Quote
from orchestrator.runtime.futures import AllowFailure, DoneAndNotDone, Future, Unmapped
from orchestrator.states import State, state_of_call

if TYPE_CHECKING:
    from orchestrator.authoring.flows import Flow
    from orchestrator.authoring.tasks import Task


class Engine(ABC):
    """Runs (or records) the task calls a flow body makes."""

    # Whether ``await async_subflow(...)`` may run the subflow in a thread (see runtime.aio.subflow_call).
    subflows_in_threads = True

    @abstractmethod
    def submit(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: list[Any]) -> Future[Any]:
        """Start ``task`` once its upstreams are done; return its future at once."""

    @abstractmethod
    def map(self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: list[Any]) -> Any:
        """Start one run of ``task`` per element of the mapped arguments."""

    def call_task(
        self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: list[Any] | None = None
    ) -> Any:
        """A task called like a function inside a flow body (``wait_for``: as ``submit`` takes it):
        its value, once it has one (a tracer gives the planned future instead)."""
        return self.submit(task, args, kwargs, wait_for or []).result()

    def needs_values(self, reason: str) -> None:
        """The body is about to read a run's real outcome (``return_state=True``, a returned state):
        engines that run tasks have it; the tracer stops and the body runs in dynamic mode."""
        return None

    def task_state(
        self, task: Task, args: tuple[Any, ...], kwargs: dict[str, Any], wait_for: list[Any] | None = None
    ) -> State:
        """``task(x, return_state=True)``: the task run's final state (its ``result()`` gives the value
        or raises the task's exception) instead of its value."""
        self.needs_values(f"{task.name}(..., return_state=True)")
        future = self.submit(task, args, kwargs, wait_for or [])
        future.wait()
        return future.state

    @abstractmethod
    def call_subflow(self, flow: Flow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A flow called inside another flow's body: a child flow run."""

    def subflow_state(self, flow: Flow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> State:
        """``child(x, return_state=True)`` in a body: the child run's final state instead of its value."""
        self.needs_values(f"{flow.name}(..., return_state=True)")
        return state_of_call(lambda: self.call_subflow(flow, args, kwargs))

    def submit_subflow(self, flow: Flow, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        """``child.submit(...)``: a child flow run started at once; its future gives its value."""
        raise NotImplementedError(f"{type(self).__name__} cannot submit subflows")

    def trigger_flow(self, flow: Flow, parameters: dict[str, Any], *, queue: str | None, name: str | None) -> Any:
        """``child.delay()`` / ``apply_async`` inside a body: what it returns there, or None to send it as
        from outside a flow (an in-process run sends it to the fleet)."""
        return None

    def run_deployment(self, deployment: str, parameters: dict[str, Any], *, wait: bool) -> Any:
        """``run_deployment`` inside a body: what it returns there, or None to ask the API as from outside."""
        return None

    @abstractmethod
    def wait(self, futures: list[Future[Any]], timeout: float | None) -> DoneAndNotDone:
        """Block until the futures are final."""

    @abstractmethod
    def as_completed(self, futures: list[Future[Any]], timeout: float | None) -> Iterator[Future[Any]]:
        """Yield futures in the order they finish."""


@functools.lru_cache(maxsize=4096)
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    """inspect.signature is slow; functions do not change their signature."""
    return inspect.signature(fn)


def bind_arguments(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], what: str) -> dict[str, Any]:
    """Bind a call to ``fn``'s signature, naming the missing or unknown argument on error."""
    try:
        bound = _signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        raise ParameterError(f"{what}: {exc}; check the arguments of the call.") from None
    return dict(bound.arguments)


def call_bound(fn: Callable[..., Any], arguments: dict[str, Any]) -> Any:
    """Call ``fn`` with arguments bound by name (:func:`bind_arguments`, or read back from a message).

    A ``*args`` parameter's value (a tuple, or a list after JSON) is spread as positionals and a
    ``**kwargs`` one as keywords; positional-only parameters are passed by position. Calling
    ``fn(**arguments)`` instead would pass ``args=(...)`` by name and fail.
    """
    if takes_all_by_name(fn):  # the common signature: nothing to spread (the executor's hot path)
        return fn(**arguments)
    args, kwargs = as_call(fn, arguments)
    return fn(*args, **kwargs)


@functools.lru_cache(maxsize=4096)
def takes_all_by_name(fn: Callable[..., Any]) -> bool:
    """Whether every parameter of ``fn`` can be passed by name (no positional-only, ``*args`` or ``**kwargs``)."""
    plain = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return all(param.kind in plain for param in _signature(fn).parameters.values())


def as_call(fn: Callable[..., Any], arguments: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The positionals and keywords a call to ``fn`` with these by-name arguments passes (see
    :func:`call_bound`); a name ``fn`` does not have stays a keyword, so the call refuses it."""
    signature = _signature(fn)
    bound = inspect.BoundArguments(signature, dict(arguments))  # type: ignore[arg-type]
    unknown = {name: value for name, value in arguments.items() if name not in signature.parameters}
    return bound.args, bound.kwargs | unknown


def check_wait_for(wait_for: list[Any], task_name: str) -> list[Any]:
    """The futures (or ``allow_failure`` of one) to wait for, lists of them (a map's) flattened.

    Anything else is the value of work already done (``wait_for=[load(x)]`` after a direct call,
    which gave its value, or a State): nothing to wait for, so it is skipped, as Prefect does.
    """
    waits: list[Any] = []
    for item in wait_for:
        if isinstance(item, (Future, AllowFailure)):
            waits.append(item)
        elif isinstance(item, (list, tuple)):
            waits.extend(check_wait_for(list(item), task_name))
    return waits


def walk_futures(value: Any) -> Iterator[tuple[Future[Any], bool]]:
    """Every future inside ``value`` (lists, tuples, sets, dicts), with its allow-failure flag.

    A ``quote(...)`` is not looked into; an ``opaque(...)`` gives only a future it wraps itself.
    """
    if isinstance(value, Future):
        yield value, False
    elif isinstance(value, AllowFailure):
        yield value.future, True
    elif isinstance(value, Quote):
        if isinstance(value, Opaque) and isinstance(value.value, (Future, AllowFailure)):
            yield from walk_futures(value.value)
    elif isinstance(value, Unmapped):
        yield from walk_futures(value.value)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from walk_futures(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from walk_futures(item)


def replace_futures(value: Any, resolve: Callable[[Future[Any], bool], Any], *, unwrap_quoted: bool = True) -> Any:
    """Copy ``value`` with each future replaced by ``resolve(future, allow_failure)``.

    A ``quote(x)`` gives ``x`` itself (not copied, its futures untouched) and an ``opaque(x)``
    its resolved top level; with ``unwrap_quoted=False`` the markers are kept (an engine that
    still has to encode the value for a worker needs to know it was quoted).
    """
    if isinstance(value, Future):
        return resolve(value, False)
    if isinstance(value, AllowFailure):
        return resolve(value.future, True)
    if isinstance(value, Quote):
        inner = value.value
        if isinstance(value, Opaque) and isinstance(inner, (Future, AllowFailure)):
            inner = replace_futures(inner, resolve)
            return inner if unwrap_quoted else value.rewrap(inner)
        return inner if unwrap_quoted else value
    if isinstance(value, Unmapped):
        return replace_futures(value.value, resolve, unwrap_quoted=unwrap_quoted)
    if isinstance(value, list):
        return [replace_futures(v, resolve, unwrap_quoted=unwrap_quoted) for v in value]
    if isinstance(value, tuple):
        return tuple(replace_futures(v, resolve, unwrap_quoted=unwrap_quoted) for v in value)
    if isinstance(value, (set, frozenset)):
        return type(value)(replace_futures(v, resolve, unwrap_quoted=unwrap_quoted) for v in value)
    if isinstance(value, dict):
        return {k: replace_futures(v, resolve, unwrap_quoted=unwrap_quoted) for k, v in value.items()}
    return value


def split_map_arguments(bound: dict[str, Any], what: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split bound map arguments into (mapped iterables, static values).

    Lists, tuples, sets, futures and other iterables (``range``, generators) are mapped;
    ``unmapped(x)``, strings, bytes, dicts and scalars are passed whole to every run.
    ``quote([...])`` / ``opaque([...])`` of a list is mapped too, each run getting its element
    marked the same way (as Prefect does); a method's bound instance is passed to every run.
    """
    mapped: dict[str, Any] = {}
    static: dict[str, Any] = {}
    for name, value in bound.items():
        if isinstance(value, Unmapped):
            static[name] = value.value
        elif isinstance(value, Quote):
            items = value.value
            if isinstance(items, (list, tuple, set, frozenset)) and not isinstance(value, BoundInstance):
                mapped[name] = [value.rewrap(item) for item in items]
            else:
                static[name] = value
        elif isinstance(value, (list, tuple, set, frozenset, Future)):
            mapped[name] = value
        elif isinstance(value, Iterable) and not isinstance(value, (str, bytes, bytearray, Mapping)):
            mapped[name] = list(value)  # range, a generator, dict views, ...: as Prefect maps them
        else:
            static[name] = value
    if not mapped:
        raise ParameterError(
            f"{what}: map() needs at least one iterable argument (a list, tuple or future); "
            "use submit() for a single run."
        )
    return mapped, static


def zip_mapped(mapped: dict[str, list[Any]], what: str) -> list[dict[str, Any]]:
    """Zip equal-length mapped lists into one argument dict per run."""
    lengths = {name: len(values) for name, values in mapped.items()}
    if len(set(lengths.values())) > 1:
        raise ParameterError(
            f"{what}: map() arguments have different lengths {lengths}; "
            "make them equal or wrap the constant ones in unmapped()."
        )
    count = next(iter(lengths.values()))
    return [{name: values[i] for name, values in mapped.items()} for i in range(count)]
