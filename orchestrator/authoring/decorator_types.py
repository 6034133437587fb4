"""The static types of ``@task`` and ``@flow``: bare, or called with the options of their class.

Each decorator used to write out its class's options a second time, in an ``@overload`` of its
keyword form (``task(*, name=..., retries=..., ...)``) that only type checkers read; the two
lists were kept in step by hand, and an option added to ``Task`` but not to that overload was a
type error for every caller that passed it. Here the keyword form takes its parameters from the
class itself: a ParamSpec bound to the constructor's options (``Concatenate[fn, Options]``), so
the constructor's signature is the only list. Types only: at run time the decorator function is
returned as it is (its ``__doc__``, ``inspect.signature`` and behaviour do not change).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

if TYPE_CHECKING:
    from orchestrator.authoring.flows import Flow
    from orchestrator.authoring.tasks import Task

P = ParamSpec("P")
R = TypeVar("R")
Options = ParamSpec("Options")


class TaskDecorator(Protocol[Options]):
    """``@task`` (a function in, its Task out) or ``@task(**options)`` (a decorator out)."""

    # (no real overlap: the options are keyword-only, so a function passed alone is never taken for them)
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...  # type: ignore[overload-overlap]

    @overload
    def __call__(
        self, *no_positional: Options.args, **options: Options.kwargs
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...


class FlowDecorator(Protocol[Options]):
    """``@flow`` (a function in, its Flow out) or ``@flow(**options)`` (a decorator out)."""

    # (no real overlap: the options are keyword-only, so a function passed alone is never taken for them)
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Flow[P, R]: ...  # type: ignore[overload-overlap]

    @overload
    def __call__(
        self, *no_positional: Options.args, **options: Options.kwargs
    ) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def task_decorator(
    cls: Callable[Concatenate[Any, Options], Any],
) -> Callable[[Callable[..., Any]], TaskDecorator[Options]]:
    """Type the decorated ``task`` function as :class:`TaskDecorator` with ``cls``'s options."""

    def typed(decorator: Callable[..., Any]) -> TaskDecorator[Options]:
        return decorator  # type: ignore[return-value]  # a plain function: its overloads are declared above

    return typed


def flow_decorator(
    cls: Callable[Concatenate[Any, Options], Any],
) -> Callable[[Callable[..., Any]], FlowDecorator[Options]]:
    """Type the decorated ``flow`` function as :class:`FlowDecorator` with ``cls``'s options."""

    def typed(decorator: Callable[..., Any]) -> FlowDecorator[Options]:
        return decorator  # type: ignore[return-value]  # a plain function: its overloads are declared above

    return typed
