"""``@task``: a Python function that runs as its own Celery task on the fleet."""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from typing import Any, Generic, ParamSpec, TypeVar, overload

from .context import current_engine
from .definitions import check_callable, why_not_importable
from .errors import DefinitionError, OrchestratorError
from .registry import register_task
from .serialization import check_serializer

P = ParamSpec("P")
R = TypeVar("R")


def _delays(value: float | Sequence[float], where: str) -> list[float]:
    """Normalize retry_delay_seconds to one delay per retry (the last one repeats)."""
    delays = [float(value)] if isinstance(value, (int, float)) else [float(v) for v in value]
    if not delays or any(d < 0 for d in delays):
        raise DefinitionError(f"{where}: retry_delay_seconds must be >= 0 (got {value!r}).")
    return delays


class Task(Generic[P, R]):
    """A decorated function plus its run options; call, ``submit`` or ``map`` it."""

    def __init__(
        self,
        fn: Callable[P, R],
        *,
        name: str | None = None,
        retries: int = 0,
        retry_delay_seconds: float | Sequence[float] = 0,
        timeout_seconds: float | None = None,
        tags: Sequence[str] = (),
        queue: str | None = None,
        result_serializer: str = "json",
    ) -> None:
        check_callable(fn, "task")
        self.fn = fn
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        where = f"task {self.name!r}"
        if retries < 0:
            raise DefinitionError(f"{where}: retries must be >= 0 (got {retries}).")
        if timeout_seconds is not None and timeout_seconds <= 0:
            raise DefinitionError(f"{where}: timeout_seconds must be > 0 (got {timeout_seconds}).")
        self.retries = retries
        self.retry_delays = _delays(retry_delay_seconds, where)
        self.timeout_seconds = timeout_seconds
        self.tags = list(tags)
        self.queue = queue
        self.result_serializer = check_serializer(result_serializer, where)
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        if why_not_importable(fn) is None:
            register_task(self)

    def retry_delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1`` (attempt counts from 1)."""
        return self.retry_delays[min(attempt - 1, len(self.retry_delays) - 1)]

    @property
    def options(self) -> dict[str, Any]:
        """The run options, as sent with every message of this task."""
        return {
            "retries": self.retries,
            "retry_delays": self.retry_delays,
            "timeout_seconds": self.timeout_seconds,
            "tags": self.tags,
            "result_serializer": self.result_serializer,
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
            elif key in {"retries", "timeout_seconds", "tags", "result_serializer"}:
                setattr(clone, key, value)
        return clone

    def with_options(self, **options: Any) -> Task[P, R]:
        """A copy of this task with some options changed (same Celery task name)."""
        clone = copy.copy(self)
        for key, value in options.items():
            if key == "retry_delay_seconds":
                clone.retry_delays = _delays(value, f"task {self.name!r}")
            elif key in {"retries", "timeout_seconds", "tags", "queue", "result_serializer"}:
                setattr(clone, key, value)
            else:
                raise DefinitionError(f"task {self.name!r}: unknown option {key!r}.")
        return clone

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        engine = current_engine()
        if engine is None:
            return self.fn(*args, **kwargs)
        return engine.call_task(self, args, kwargs)  # type: ignore[no-any-return]

    def submit(self, *args: Any, wait_for: Sequence[Any] | None = None, **kwargs: Any) -> Any:
        """Start this task in the current flow and return a future at once."""
        engine = current_engine()
        if engine is None:
            raise OrchestratorError(
                f"{self.name}.submit() was called outside a flow; call it inside a @flow body, "
                "or call the task directly to run it as a plain function."
            )
        return engine.submit(self, args, kwargs, list(wait_for or []))

    def map(self, *args: Any, wait_for: Sequence[Any] | None = None, **kwargs: Any) -> Any:
        """Start one run per element of the iterable arguments; return their futures."""
        engine = current_engine()
        if engine is None:
            raise OrchestratorError(f"{self.name}.map() was called outside a flow; call it inside a @flow body.")
        return engine.map(self, args, kwargs, list(wait_for or []))

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


@overload
def task(__fn: Callable[P, R]) -> Task[P, R]: ...


@overload
def task(
    *,
    name: str | None = None,
    retries: int = 0,
    retry_delay_seconds: float | Sequence[float] = 0,
    timeout_seconds: float | None = None,
    tags: Sequence[str] = (),
    queue: str | None = None,
    result_serializer: str = "json",
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(__fn: Callable[P, R] | None = None, **options: Any) -> Any:
    """Declare a task: ``@task`` or ``@task(retries=3, queue="db", ...)``."""
    if __fn is not None:
        return Task(__fn, **options)
    return lambda fn: Task(fn, **options)
