"""``@task``: a Python function that runs as its own Celery task on the fleet."""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import random
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any, Generic, ParamSpec, TypeVar

from orchestrator.authoring import option_checks as checks
from orchestrator.authoring.caching import (
    CacheKeyFn,
    CachePolicy,
    CacheSettings,
    cache_settings,
    exclusive_cache_options,
)
from orchestrator.authoring.decorator_types import task_decorator
from orchestrator.authoring.definitions import check_callable, why_not_importable
from orchestrator.authoring.hooks import Hook, collect_hooks
from orchestrator.authoring.keywords import check_keywords, target_name
from orchestrator.authoring.methods import (
    bind_on_lookup,
    binds_class,
    carry_binding,
    direct_args,
    engine_args,
    unwrap_function,
)
from orchestrator.authoring.options import (
    apply_callable_options,
    callable_options,
    given_options,
    registering,
    task_option_names,
    task_with_options,
)
from orchestrator.authoring.registry import register_task
from orchestrator.authoring.tags import with_context_tags
from orchestrator.authoring.task_run_names import TaskRunName, check_task_run_name
from orchestrator.authoring.triggers import DEFAULT_TRIGGER, check_trigger
from orchestrator.data.serialization import check_serializer
from orchestrator.errors import DefinitionError, OrchestratorError
from orchestrator.guards.limits import queue_problem
from orchestrator.runtime.annotations import unwrap_arguments
from orchestrator.runtime.context import current_engine
from orchestrator.runtime.engine import Engine
from orchestrator.runtime.futures import FutureList
from orchestrator.states import failed_with, state_of_awaitable, state_of_call

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


RetryDelay = float | Sequence[float] | Callable[[int], Sequence[float]]
# ``(task, exc)``, or Prefect 3's ``(task, task_run, state)``: True to retry
RetryCondition = Callable[..., bool]


def exponential_backoff(backoff_factor: float) -> Callable[[int], list[float]]:
    """``retry_delay_seconds=exponential_backoff(10)``: 10, 20, 40, ... seconds."""
    if backoff_factor <= 0:
        raise DefinitionError(f"exponential_backoff needs a factor > 0 (got {backoff_factor}).")
    return lambda retries: [backoff_factor * 2**i for i in range(max(retries, 1))]


def _delays(value: RetryDelay, where: str, retries: int = 1) -> list[float]:
    """Normalize retry_delay_seconds to one delay per retry (the last one repeats)."""
    if callable(value):
        value = list(value(retries))
    delays = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
    if not delays or any(d < 0 for d in delays):
        raise DefinitionError(f"{where}: retry_delay_seconds must be >= 0 (got {value!r}).")
    return delays


def _checked_queue(queue: str | None, where: str) -> str | None:
    """The queue, once it is a name Redis keeps for queues only (see :func:`queue_problem`)."""
    if queue is not None and (problem := queue_problem(queue)):
        raise DefinitionError(f"{where}: {problem}.")
    return queue


# Options that travel with a message when task.with_options(...) changes them.
MESSAGE_OPTIONS = frozenset(
    {
        "retries",
        "retry_jitter_factor",
        "poke_timeout_seconds",
        "timeout_seconds",
        "tags",
        "result_serializer",
        "log_prints",
        "persist_result",
    }
)


class Task(Generic[P, R]):
    """A decorated function plus its run options; call, ``submit`` or ``map`` it."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        retries: int = 0,
        retry_delay_seconds: RetryDelay = 0,
        retry_jitter_factor: float | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] | None = None,
        retry_condition_fn: RetryCondition | None = None,
        poke_timeout_seconds: float | None = None,
        timeout_seconds: float | None = None,
        tags: Sequence[str] = (),
        queue: str | None = None,
        result_serializer: str = "json",
        trigger: str = DEFAULT_TRIGGER,
        on_completion: Hook | Sequence[Hook] | None = None,
        on_failure: Hook | Sequence[Hook] | None = None,
        on_retry: Hook | Sequence[Hook] | None = None,
        on_crashed: Hook | Sequence[Hook] | None = None,
        on_cancellation: Hook | Sequence[Hook] | None = None,
        log_prints: bool | None = None,
        persist_result: bool = False,
        task_run_name: TaskRunName | None = None,
        cache_policy: CachePolicy | None = None,
        cache_key_fn: CacheKeyFn | None = None,
        cache_expiration: timedelta | float | None = None,
        refresh_cache: bool = False,
        description: str | None = None,
        version: str | None = None,
        viz_return_value: Any = None,
    ) -> None:
        self.options_given = given_options(locals())  # what with_options starts from
        self.binds_class = binds_class(fn)  # @task above @classmethod: bound to the class (see methods.py)
        fn, self.is_static = unwrap_function(fn, "task")  # a staticmethod is never bound (see methods.py)
        self.bound_to: Any = None  # the instance of obj.method (set on the copy Task.__get__ makes)
        check_callable(fn, "task")
        # viz_return_value only feeds Prefect's graph visualisation: accepted, and unused here
        self.fn = fn
        self.is_async = inspect.iscoroutinefunction(fn)  # its call returns a coroutine (runtime/aio.py runs it)
        # neither a coroutine nor a generator function: the executor's hot path skips collecting its value
        self.plain_function = not (self.is_async or inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn))
        self.name = checks.text(f"task {fn.__qualname__!r}", "name", name, example="load-users") or (
            f"{fn.__module__}.{fn.__qualname__}"
        )
        where = f"task {self.name!r}"
        self.description = checks.text(where, "description", description, example="Loads users.", empty=True) or (
            inspect.getdoc(fn) or ""
        )
        self.version = checks.text(where, "version", version, example="1.2")  # shown, never interpreted (as in Prefect)
        self.retries = checks.count(where, "retries", retries)
        self.retry_delays = _delays(checks.retry_delays(where, retry_delay_seconds), where, retries)
        self.retry_jitter_factor = checks.factor(where, "retry_jitter_factor", retry_jitter_factor)
        self.retry_on = checks.exception_classes(where, retry_on)
        self.retry_condition_fn = checks.function(
            where, "retry_condition_fn", retry_condition_fn, "(task, task_run, state) -> bool"
        )
        self.poke_timeout_seconds = checks.seconds(where, "poke_timeout_seconds", poke_timeout_seconds)
        self.trigger = check_trigger(trigger, where)
        self.hooks = collect_hooks(
            where,
            {
                "on_completion": on_completion,
                "on_failure": on_failure,
                "on_retry": on_retry,
                "on_crashed": on_crashed,
                "on_cancellation": on_cancellation,
            },
        )
        self.timeout_seconds = checks.seconds(where, "timeout_seconds", timeout_seconds)
        self.log_prints = checks.flag(where, "log_prints", log_prints, optional=True)  # None: as the flow says
        # also write the result to ORCHESTRATOR_RESULT_STORAGE
        self.persist_result = checks.flag(where, "persist_result", persist_result)
        self.tags = checks.tag_list(where, tags)  # one string is one tag
        self.queue = _checked_queue(checks.queue_name(where, queue), where)
        self.result_serializer = check_serializer(
            checks.text(where, "result_serializer", result_serializer, example="json") or "", where
        )
        self.task_run_name = check_task_run_name(task_run_name, fn, where)
        self.display_name: str | None = None  # with_options(name=...): labels its task runs
        self.cache: CacheSettings | None = cache_settings(  # None: no caching (see authoring/caching.py)
            where,
            cache_policy=cache_policy,
            cache_key_fn=cache_key_fn,
            cache_expiration=cache_expiration,
            refresh_cache=checks.flag(where, "refresh_cache", refresh_cache),
        )
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        if why_not_importable(fn) is None and registering():
            register_task(self)

    @property
    def label_base(self) -> str:
        """What this task's run labels start with: its display name, else its function's name."""
        return self.display_name or self.fn.__name__

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (from 1), jitter included."""
        delay = self.retry_delays[min(attempt - 1, len(self.retry_delays) - 1)]
        if self.retry_jitter_factor:
            delay *= 1 + random.uniform(0, self.retry_jitter_factor)
        return delay

    def should_retry(self, exc: BaseException) -> bool:
        """``retry_on`` and ``retry_condition_fn`` decide; a failing condition means no retry."""
        if self.retry_on is not None and not isinstance(exc, self.retry_on):
            return False
        if self.retry_condition_fn is None:
            return True
        try:
            if _takes_three(self.retry_condition_fn):  # Prefect 3's form: (task, task_run, state)
                from orchestrator.runtime.context import current_run

                return bool(self.retry_condition_fn(self, current_run(), failed_with(exc)))  # type: ignore[call-arg]
            return bool(self.retry_condition_fn(self, exc))
        except Exception:
            log.exception("task %s: retry_condition_fn raised; not retrying", self.name)
            return False

    @property
    def options(self) -> dict[str, Any]:
        """The run options, as sent with every message of this task."""
        return {
            "retries": self.retries,
            "retry_delays": self.retry_delays,
            "retry_jitter_factor": self.retry_jitter_factor,
            "poke_timeout_seconds": self.poke_timeout_seconds,
            "timeout_seconds": self.timeout_seconds,
            "log_prints": self.log_prints,
            "persist_result": self.persist_result,
            "tags": self.tags,
            "result_serializer": self.result_serializer,
            **callable_options(self),
            **({"cache": self.cache.spec()} if self.cache is not None else {}),
        }

    def importable_or_raise(self) -> None:
        """Refuse to send a task that workers could not import."""
        reason = why_not_importable(self.fn)
        if reason:
            raise DefinitionError(f"task {self.name!r} cannot run on workers: {reason}.")

    def with_message_options(self, options: dict[str, Any]) -> Task[P, R]:
        """A copy with the run options a message carries (the ``options`` property's keys)."""
        clone = copy.copy(self)
        for key, value in options.items():
            if key == "retry_delays":
                clone.retry_delays = _delays(value, f"task {self.name!r}")
            elif key == "cache":
                clone.cache = CacheSettings.from_spec(value) if value else None
            elif key in MESSAGE_OPTIONS:
                setattr(clone, key, value)
        apply_callable_options(clone, options)
        return clone

    def with_options(self, **options: Any) -> Task[P, R]:
        """A copy of this task with some ``@task`` options changed (same Celery task name; see docs/options.md)."""
        return carry_binding(self, task_with_options(self, exclusive_cache_options(options)))

    def __get__(self, instance: Any, owner: type | None = None) -> Task[P, R]:
        """``obj.method``: a copy bound to ``obj``, passed as the first argument (Prefect's tasks on methods)."""
        return bind_on_lookup(self, instance, owner)

    def _for_engine(self, args: tuple[Any, ...]) -> tuple[Task[P, R], tuple[Any, ...]]:
        """What an engine gets for a call: this task with the enclosing ``tags()`` blocks' tags, and
        the arguments with a bound instance first (see authoring/tags.py and authoring/methods.py)."""
        return with_context_tags(self), engine_args(self, args)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Called in a flow: a task run, and its value (``return_state=True``: its final State).
        Outside any flow: the plain function."""
        return_state = pop_call_keyword(self.fn, kwargs, "return_state", False)
        engine = current_engine()
        if engine is None:  # outside a flow, or inside a task: a plain call of the function
            call_args, call_kwargs = unwrap_arguments(direct_args(self, args), kwargs)
            if return_state:
                if self.is_async:
                    return state_of_awaitable(self.fn(*call_args, **call_kwargs))  # type: ignore[arg-type, return-value]
                return state_of_call(lambda: self.fn(*call_args, **call_kwargs))  # type: ignore[return-value]
            return self.fn(*call_args, **call_kwargs)
        task, args = self._for_engine(args)  # type: ignore[assignment]
        wait_for = list(pop_call_keyword(self.fn, kwargs, "wait_for", None) or [])
        if self.is_async:  # in a flow, as in Prefect: a coroutine that gives the value when awaited
            from orchestrator.runtime.aio import task_call, task_state_call

            if wait_for:
                raise OrchestratorError(
                    f"{self.name}(..., wait_for=...) on an async task: use {self.name}.submit(..., wait_for=...)."
                )
            if return_state:
                return task_state_call(engine, task, args, kwargs)  # type: ignore[return-value]
            return task_call(engine, task, args, kwargs)  # type: ignore[return-value]
        if return_state:
            return engine.task_state(task, args, kwargs, wait_for)  # type: ignore[return-value]
        return engine.call_task(task, args, kwargs, wait_for)  # type: ignore[no-any-return]

    def submit(self, *args: Any, wait_for: Sequence[Any] | None = None, **kwargs: Any) -> Any:
        """Start this task in the current flow (or inside a task) and return a future at once."""
        engine = current_engine() or _inside_a_task(self.name, "submit")
        task, args = self._for_engine(args)
        return engine.submit(task, args, kwargs, list(wait_for or []))

    def map(self, *args: Any, wait_for: Sequence[Any] | None = None, **kwargs: Any) -> Any:
        """Start one run per element of the iterable arguments; return their futures."""
        engine = current_engine() or _inside_a_task(self.name, "map")
        task, args = self._for_engine(args)
        futures = engine.map(task, args, kwargs, list(wait_for or []))
        return FutureList(futures) if isinstance(futures, list) else futures  # a map planned over a future: one node

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


@functools.lru_cache(maxsize=1024)
def _takes_three(fn: Callable[..., Any]) -> bool:
    """Whether a ``retry_condition_fn`` is written as Prefect 3's ``(task, task_run, state)``
    (``state.result()`` raises the attempt's exception) rather than ``(task, exc)``."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 3


def pop_call_keyword(fn: Callable[..., Any], kwargs: dict[str, Any], name: str, default: Any) -> Any:
    """A keyword of the call itself (Prefect's ``wait_for=``, ``return_state=``), taken out of the
    call's arguments, unless the function has a parameter of that name itself."""
    if name not in kwargs or name in inspect.signature(fn).parameters:
        return default
    return kwargs.pop(name)


def _inside_a_task(name: str, call: str) -> Engine:
    """The engine for ``submit`` / ``map`` inside a task's function (threads of that process, as Prefect 3
    allows); outside any flow or task there is none to use."""
    from orchestrator.local.nested import inside_task_engine  # on use: the nested engine runs task code

    engine = inside_task_engine()
    if engine is None:
        raise OrchestratorError(
            f"{name}.{call}() was called outside a flow; call it inside a @flow body (or a task), "
            "or call the task directly to run it as a plain function."
        )
    return engine


@task_decorator(Task)  # typed with Task's own options (see decorator_types.py)
def task(__fn: Callable[P, R] | None = None, **options: Any) -> Any:
    """Declare a task: ``@task`` or ``@task(retries=3, queue="db", ...)``.

    A keyword ``@task`` does not take is refused by name, with what to do instead.
    """

    def declare(fn: Callable[P, R]) -> Task[P, R]:
        check_keywords("task", target_name(fn), options, task_option_names())
        return Task(fn, **options)

    return declare(__fn) if __fn is not None else declare
