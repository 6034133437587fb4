"""``quote()`` and ``opaque()``: arguments an engine passes on without looking inside them.

Every engine walks a task's arguments for futures (lists, tuples, sets, dicts, at any
depth) to find its upstreams and to replace each future by its value. That walk costs
time on a large structure and is wrong for a value whose futures are meant as futures.
As in Prefect 3:

- ``quote(x)``: ``x`` is passed whole, neither resolved nor walked; a future inside it
  stays a future (in-process; on the fleet a future cannot travel, and saying so is an
  error). The task receives ``x`` itself (the same object, in-process).
- ``opaque(x)``: the top level is resolved (``opaque(future)`` waits for that future and
  passes its value, an edge of the plan as usual), but nothing inside is walked.
- :class:`BoundInstance`: the instance a ``@task`` or ``@flow`` method is bound to
  (``obj.method.submit(...)``), passed as its first argument like a quoted value: an
  instance is never searched for futures, and on the fleet it travels only if its task's
  serializer can carry it (the error says so otherwise).

The engines unwrap the marker before calling the function (:mod:`orchestrator.runtime.engine`),
and the templates of the fleet encode the value whole (:mod:`orchestrator.planning.templates`).
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from orchestrator.runtime.futures import Future

T = TypeVar("T")


class Quote(Generic[T]):
    """A value passed to a task whole: not resolved, not searched for futures (``quote(x)``)."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def unquote(self) -> T:
        """The wrapped value (Prefect's name)."""
        return self.value

    def unwrap(self) -> T:
        """The wrapped value."""
        return self.value

    def rewrap(self, value: Any) -> Quote[Any]:
        """The same kind of marker around another value (each element of a mapped ``quote([...])``)."""
        return type(self)(value)

    def __repr__(self) -> str:
        return f"{type(self).__name__.lower()}({self.value!r})"


class Opaque(Quote[T]):
    """A value whose top level is resolved (a future gives its value) but never walked (``opaque(x)``)."""

    __slots__ = ()


class BoundInstance(Quote[T]):
    """The instance a task or flow method is bound to, passed as its first argument (never walked)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<bound {type(self.value).__qualname__} instance>"


def quote(value: T) -> Quote[T]:
    """Pass ``value`` to a task as it is: no future inside it is resolved, and it is not walked.

    Use it for a large structure (walking it for futures costs time) or to hand a task a future
    itself in-process. The task receives ``value`` unwrapped.
    """
    return Quote(value)


def opaque(value: T) -> Opaque[T]:
    """Resolve ``value`` if it is a future (the task gets its result) but never look inside the value.

    Prefect 3's annotation for large results passed along with ``.submit()`` chaining: the
    dependency is kept, the walk through a big dict or list is not made.
    """
    return Opaque(value)


def unwrap_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A task called as a plain function (outside a flow, or inside a task): the top-level markers
    taken off, an ``opaque(future)`` given its value; nothing is walked."""
    if not any(isinstance(v, Quote) for v in (*args, *kwargs.values())):
        return args, kwargs
    return tuple(_unwrapped(a) for a in args), {k: _unwrapped(v) for k, v in kwargs.items()}


def _unwrapped(value: Any) -> Any:
    if not isinstance(value, Quote):
        return value
    inner = value.value
    if isinstance(value, Opaque) and isinstance(inner, Future):
        return inner.result()
    return inner
