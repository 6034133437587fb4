"""Every task and flow defined in this process, by name.

Workers subscribe with :func:`on_task_registered` so that a task imported at any
time becomes a Celery task under its own name. The API never needs this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from orchestrator.errors import DefinitionError

if TYPE_CHECKING:
    from orchestrator.authoring.flows import Flow
    from orchestrator.authoring.tasks import Task

_tasks: dict[str, Task] = {}
_flows: dict[str, Flow] = {}
_task_listeners: list[Callable[[Task], None]] = []


def _same_definition(a: Callable[..., object], b: Callable[..., object]) -> bool:
    """True when two functions are the same definition (a module re-imported)."""
    return (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _check_unique(kind: str, name: str, existing: Task | Flow | None, new: Task | Flow) -> None:
    """Refuse a second, different function under a name already taken."""
    if existing is not None and not _same_definition(existing.fn, new.fn):
        raise DefinitionError(
            f"{kind} name {name!r} is already used by {existing.fn.__module__}."
            f"{existing.fn.__qualname__}; give one of them another name with @{kind}(name=...)."
        )


def register_task(task: Task) -> None:
    """Make ``task`` known by name and tell the listeners (the worker app)."""
    _check_unique("task", task.name, _tasks.get(task.name), task)
    _tasks[task.name] = task
    for listener in list(_task_listeners):
        listener(task)


def register_flow(flow: Flow) -> None:
    """Make ``flow`` known by name."""
    _check_unique("flow", flow.name, _flows.get(flow.name), flow)
    _flows[flow.name] = flow


def get_task(name: str) -> Task | None:
    """The task registered under ``name``, if this process imported it."""
    return _tasks.get(name)


def get_flow(name: str) -> Flow | None:
    """The flow registered under ``name``, if this process imported it."""
    return _flows.get(name)


def all_flows() -> list[Flow]:
    """Every registered flow."""
    return list(_flows.values())


def on_task_registered(listener: Callable[[Task], None]) -> None:
    """Call ``listener`` for every task registered now and later."""
    _task_listeners.append(listener)
    for task in list(_tasks.values()):
        listener(task)
