"""Futures returned by ``task.submit`` and ``task.map``, and the helpers around them.

Each engine has its own future class; they share this interface so a flow body
reads the same whatever runs it. ``wait`` and ``as_completed`` follow Prefect 3.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

from orchestrator.states import State, StateType

if TYPE_CHECKING:
    from orchestrator.runtime.engine import Engine

R = TypeVar("R")


class Future(Generic[R]):
    """The result-to-be of one task run."""

    engine: Engine
    task_run_id: str
    label: str
    # The body saw this run fail (its result() raised into the body, or it read its failed state):
    # it handled the failure, so this run no longer decides its flow's end as a leaf (as in Prefect).
    failure_seen: bool = False

    @property
    def state_type(self) -> StateType:
        """The task run's current precise state (what the engines compare)."""
        raise NotImplementedError

    def state_message(self) -> str:
        """Why the task run is in its state (empty when there is nothing to say)."""
        return ""

    @property
    def state(self) -> State:
        """The task run's current state, as Prefect code reads it (``.is_completed()``, ``.name``,
        ``.result()``: the value, or the task's own exception)."""
        precise = self.state_type
        message = self.state_message() if precise.is_final else ""
        if precise.is_failed:
            self.failure_seen = True
        return State.of(precise, message, resolve=lambda raise_on_failure: self.result(0, raise_on_failure))

    def wait(self, timeout: float | None = None) -> StateType:
        """Block until the task run is final (or ``timeout``); return its state."""
        raise NotImplementedError

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        """The task's return value; raises the run's error if it did not complete."""
        raise NotImplementedError

    def __await__(self) -> Generator[Any, None, R]:
        """``await future`` in an async flow body: its result, waited for without blocking the loop."""
        from orchestrator.runtime.aio import result_of  # on use: aio imports the engine, which imports us

        return result_of(self).__await__()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.label} {self.task_run_id}>"


class AllowFailure:
    """Marks an upstream whose failure must not stop the downstream (Prefect 3)."""

    def __init__(self, future: Future[Any]) -> None:
        if not isinstance(future, Future):
            raise TypeError(f"allow_failure() takes a future, got {type(future).__name__}")
        self.future = future


def allow_failure(future: Future[Any]) -> AllowFailure:
    """Let a downstream run even if ``future`` fails; it receives None for that input."""
    return AllowFailure(future)


class Unmapped:
    """Marks an argument of ``task.map`` that is passed whole to every mapped run."""

    def __init__(self, value: Any) -> None:
        self.value = value


def unmapped(value: Any) -> Unmapped:
    """Pass ``value`` as it is to every run of ``task.map`` instead of iterating it."""
    return Unmapped(value)


class DoneAndNotDone(NamedTuple):
    """What :func:`wait` returns, as in concurrent.futures and Prefect 3."""

    done: set[Future[Any]]
    not_done: set[Future[Any]]


def _engine_of(futures: list[Future[Any]]) -> Engine | None:
    return futures[0].engine if futures else None


def wait(futures: Iterable[Future[Any]], timeout: float | None = None) -> DoneAndNotDone:
    """Wait until every future is final (or ``timeout``); return (done, not_done)."""
    items = list(futures)
    engine = _engine_of(items)
    if engine is None:
        return DoneAndNotDone(set(), set())
    return engine.wait(items, timeout)


def as_completed(futures: Iterable[Future[Any]], timeout: float | None = None) -> Iterator[Future[Any]]:
    """Yield futures as their task runs become final, first finished first."""
    items = list(futures)
    engine = _engine_of(items)
    if engine is None:
        return iter(())
    return engine.as_completed(items, timeout)


class FutureList(list[Any]):
    """What ``task.map(...)`` returns: the futures, in order, which can also be waited for and read at once.

    Prefect 3's map gives such a list, and code calls ``.result()`` / ``.wait()`` on it; it is a
    plain list otherwise (pass it on, index it, iterate it).
    """

    def wait(self, timeout: float | None = None) -> None:
        """Block until every future is final (or ``timeout`` passes)."""
        wait([f for f in self if isinstance(f, Future)], timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list[Any]:
        """Every future's result, in order (the first failure raises, unless ``raise_on_failure=False``)."""
        return [f.result(timeout, raise_on_failure) if isinstance(f, Future) else f for f in self]
