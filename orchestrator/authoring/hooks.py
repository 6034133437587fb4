"""State hooks on tasks and flows: ``on_completion``, ``on_failure``, ``on_retry``, ...

A hook is called as ``hook(task_or_flow, run, state)`` where ``run`` is the
:class:`~orchestrator.runtime.context.RunInfo` and ``state`` a :class:`~orchestrator.states.State`. A hook that
raises is logged and never changes the run's outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.errors import DefinitionError
from orchestrator.runtime.context import RunInfo
from orchestrator.states import State, StateType

log = logging.getLogger(__name__)

HOOK_NAMES = ("on_completion", "on_failure", "on_retry", "on_crashed", "on_cancellation")
Hook = Callable[[Any, RunInfo, "HookState"], Any]

_HOOK_OF_STATE = {
    StateType.COMPLETED: "on_completion",
    StateType.FAILED: "on_failure",
    StateType.TIMED_OUT: "on_failure",
    StateType.AWAITING_RETRY: "on_retry",
    StateType.CRASHED: "on_crashed",
    StateType.CANCELLED: "on_cancellation",
}


# What a hook receives: the state object Prefect's hooks get (``state.name``, ``state.type``,
# ``state.message``, ``state.is_failed()``); the name is kept for code written against it.
HookState = State


def collect_hooks(owner: str, given: dict[str, Hook | Sequence[Hook] | None]) -> dict[str, list[Hook]]:
    """Normalize hook options (one callable or a list) and refuse what is not callable."""
    hooks: dict[str, list[Hook]] = {}
    for name, value in given.items():
        items = [] if value is None else [value] if callable(value) else list(value)
        for item in items:
            if not callable(item):
                raise DefinitionError(f"{owner}: {name} takes callables (hook(obj, run, state)); got {item!r}.")
        hooks[name] = items
    return hooks


def call_hooks(owner: Any, hooks: dict[str, list[Hook]], run: RunInfo, state: StateType, message: str = "") -> None:
    """Call the hooks registered for ``state``; log (never raise) a hook's error."""
    name = _HOOK_OF_STATE.get(state)
    for hook in hooks.get(name, []) if name else []:
        try:
            hook(owner, run, State.of(state, message))
        except Exception:
            log.exception("%s hook %r of %r raised; the run's outcome is unchanged", name, hook, owner)
