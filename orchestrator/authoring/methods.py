"""``@task`` and ``@flow`` on methods: ``obj.method(...)`` binds ``obj`` as the first argument, as Prefect does.

A decorated method is a Task or Flow object in the class body, so Python's own binding of
functions does not apply: ``Task.__get__`` / ``Flow.__get__`` (the descriptor protocol)
return a copy that remembers the instance (:func:`bound_copy`), and the copy passes it
first wherever it hands its arguments on:

- called as a plain function (outside a flow, inside a task, a flow in-process), the
  instance itself (:func:`direct_args`);
- handed to an engine, the instance wrapped in
  :class:`~orchestrator.runtime.annotations.BoundInstance` (:func:`engine_args`): engines
  never search it for futures, in-process they pass it unwrapped, and on the fleet it is
  encoded like a quoted value: it travels only if the task's serializer can carry it
  (``result_serializer="pickle"`` and a picklable instance), else the error says so.

A run sent with ``.delay()`` is started by a worker from the flow's name and JSON
parameters, so a flow bound to an instance is refused there (:func:`refuse_bound`).
``@staticmethod`` works in either order (a staticmethod under the decorator is unwrapped and
never bound), and so does ``@classmethod`` (under the decorator, it is unwrapped and the class
it is looked up on is bound; above it, Python binds it).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from orchestrator.errors import DefinitionError
from orchestrator.runtime.annotations import BoundInstance


class Bindable(Protocol):
    """A Task or a Flow: what binding needs of either."""

    fn: Callable[..., Any]
    name: str
    bound_to: Any
    is_static: bool


B = TypeVar("B", bound=Bindable)


def unwrap_function(fn: Any, decorator: str) -> tuple[Any, bool]:
    """The function to decorate, and whether it came as a staticmethod (never bound to an instance)."""
    if isinstance(fn, staticmethod):
        return fn.__func__, True
    if isinstance(fn, classmethod):  # bound to the class it is looked up on (see binds_class)
        return fn.__func__, False
    return fn, False


def binds_class(fn: Any) -> bool:
    """Whether a decorated function came as a classmethod (``@task`` above ``@classmethod``, the order
    Prefect's own tests use): it is bound to the class, not to an instance."""
    return isinstance(fn, classmethod)


def bind_on_lookup(obj: B, instance: Any, owner: type | None) -> B:
    """What ``Task.__get__`` / ``Flow.__get__`` give: a staticmethod or a lookup on the class itself as it
    is, a classmethod bound to the class, a method bound to the instance."""
    if getattr(obj, "binds_class", False):
        return bound_copy(obj, owner if owner is not None else type(instance))
    if instance is None or obj.is_static:
        return obj
    return bound_copy(obj, instance)


def bound_copy(obj: B, instance: Any) -> B:
    """A copy of ``obj`` bound to ``instance``; ``inspect.signature`` of it leaves out the bound parameter."""
    clone = copy.copy(obj)
    clone.bound_to = instance
    signature = inspect.signature(obj.fn)
    parameters = list(signature.parameters.values())[1:]
    clone.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    return clone


def carry_binding(source: Bindable, clone: B) -> B:
    """A ``with_options`` copy keeps what it was made from bound to (and staticmethod-ness)."""
    clone.is_static = source.is_static
    clone.binds_class = getattr(source, "binds_class", False)  # type: ignore[attr-defined]
    if source.bound_to is not None:
        return bound_copy(clone, source.bound_to)
    return clone


def direct_args(obj: Bindable, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The positionals of a plain call of the function: the bound instance first."""
    return args if obj.bound_to is None else (obj.bound_to, *args)


def engine_args(obj: Bindable, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The positionals an engine gets: the bound instance first, marked so it is never walked."""
    return args if obj.bound_to is None else (BoundInstance(obj.bound_to), *args)


def refuse_bound(obj: Bindable, kind: str, what: str) -> None:
    """Refuse ``what`` (``.delay()``, a run of its own) for a flow bound to an instance: a worker starts a
    run from its flow's name and JSON parameters, so no instance can reach it."""
    if obj.bound_to is None:
        return
    raise DefinitionError(
        f"{kind} {obj.name!r} is a method bound to a {type(obj.bound_to).__qualname__} instance, and {what} would "
        "send it to workers, which start a run from the flow's name and its JSON parameters: the instance "
        "cannot be one. Call it in-process (obj.method(...)), or make it a @staticmethod or a module-level "
        "function that takes plain data."
    )
