"""Checks shared by ``@task`` and ``@flow`` on the function they decorate."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any

from orchestrator.errors import DefinitionError


def check_callable(fn: Any, decorator: str) -> None:
    """Refuse what can never be a task or flow, at decoration time."""
    if not callable(fn) or not hasattr(fn, "__qualname__"):
        raise DefinitionError(f"@{decorator} decorates a function; got {type(fn).__name__}.")
    if fn.__name__ == "<lambda>":
        raise DefinitionError(
            f"@{decorator} cannot wrap a lambda: workers find {decorator}s by module and name. "
            "Define it with def at the top level of a module."
        )
    if inspect.isasyncgenfunction(fn):
        raise DefinitionError(
            f"@{decorator} on async generator {fn.__qualname__}: a {decorator} returns one value; "
            "collect the items and return a list instead of yielding (async def without yield is fine)."
        )


def why_not_importable(fn: Callable[..., Any]) -> str | None:
    """Why workers could not import ``fn`` by name, or None if they can."""
    if "<locals>" in fn.__qualname__:
        return (
            f"{fn.__qualname__} is defined inside another function, so a worker cannot import it; "
            "move it to the top level of a module"
        )
    if fn.__module__ == "__main__":
        return (
            f"{fn.__qualname__} is defined in __main__ (a script), which workers cannot import; "
            "move it into a module and start the worker with --flows <that module>"
        )
    return None


@functools.lru_cache(maxsize=1024)
def parameter_hints(fn: Callable[..., Any]) -> dict[str, Any]:
    """The type each parameter's value has once bound by name: ``*args: T`` holds ``tuple[T, ...]``
    and ``**kwargs: T`` holds ``dict[str, T]`` (what the run record, the schema and coercion see).

    Empty when the annotations cannot be resolved (the values are then taken as they are).
    Computed once per function (``typing.get_type_hints`` is slow, and ``.delay()`` asks every
    time): callers read the dict and never change it.
    """
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return {}
    hints.pop("return", None)
    for name, param in inspect.signature(fn).parameters.items():
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            hints[name] = tuple[hints.get(name, Any), ...]  # type: ignore[misc]
        elif param.kind is inspect.Parameter.VAR_KEYWORD:
            hints[name] = dict[str, hints.get(name, Any)]  # type: ignore[misc]
    return hints
