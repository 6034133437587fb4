"""``with_options(...)``: copies of a task or flow with some options changed, and how they travel.

A copy is built by the decorator's own constructor with the options it was declared with
plus the changed ones, so every check a decorated task or flow gets holds for a copy too,
and an option added to ``@task`` later is accepted by ``with_options`` at once. The copy is
never registered: workers know the task by its registered name, so ``name=`` gives a copy
a *display* name (its task runs are labelled with it) and the Celery task name stays.

On the fleet a copy's changed options ride in each message (:func:`message_overrides`),
and the worker applies them to the task it registered (:func:`apply_message_options`).
Callables (hooks, ``retry_condition_fn``, ``retry_on``, a ``task_run_name`` callable)
cannot travel as code: a message carries ``"module:qualname"`` and the worker takes the
object only from a module it has already imported (:func:`resolve_reference`), never
importing a module a message names. A lambda or a nested function has no such name: it
works in-process and is refused with a DefinitionError when the task is sent to workers.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import json
import logging
import sys
import types
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from orchestrator.errors import DefinitionError

if TYPE_CHECKING:
    from orchestrator.authoring.flows import Flow
    from orchestrator.authoring.tasks import Task

log = logging.getLogger(__name__)

UNREFERABLE = "!unreferable:"  # a callable with no importable name: fine in-process, refused on the fleet
NO_TIME_LIMIT = 10**8  # seconds: Celery falls back to the registered limit for a message limit of None
HARD_LIMIT_MARGIN = 5  # the hard time limit follows the soft one (timeout_seconds) by this much

_copying: contextvars.ContextVar[bool] = contextvars.ContextVar("orchestrator_copying", default=False)


def registering() -> bool:
    """False while :func:`task_with_options` / :func:`flow_with_options` build a copy (copies are not registered)."""
    return not _copying.get()


@contextlib.contextmanager
def _unregistered() -> Iterator[None]:
    token = _copying.set(True)
    try:
        yield
    finally:
        _copying.reset(token)


def given_options(frame_locals: dict[str, Any]) -> dict[str, Any]:
    """The keyword options a constructor was called with (its ``locals()`` on entry, minus self and fn)."""
    return {k: v for k, v in frame_locals.items() if k not in ("self", "fn", "__class__")}


def _valid(cls: type) -> list[str]:
    names = [p for p in inspect.signature(cls).parameters if p != "fn"]
    return sorted(names)


def _refuse_unknown(where: str, options: dict[str, Any], valid: list[str]) -> None:
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise DefinitionError(
            f"{where}: with_options got unknown option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}; valid options are: {', '.join(valid)}."
        )


def task_option_names() -> list[str]:
    """Every option ``Task.with_options`` takes: the ``@task`` options."""
    from orchestrator.authoring.tasks import Task

    return _valid(Task)


def flow_option_names() -> list[str]:
    """Every option ``Flow.with_options`` takes: the ``@flow`` options."""
    from orchestrator.authoring.flows import Flow

    return _valid(Flow)


def task_with_options(task: Task[Any, Any], options: dict[str, Any]) -> Task[Any, Any]:
    """A copy of ``task`` built as ``@task`` would build it with these options changed."""
    from orchestrator.authoring.tasks import Task

    _refuse_unknown(f"task {task.name!r}", options, task_option_names())
    changed = dict(options)
    display = changed.pop("name", None)
    with _unregistered():
        clone: Task[Any, Any] = Task(task.fn, **(task.options_given | changed))
    clone.name = task.name  # the registered name: the one workers know
    clone.display_name = display if display is not None else task.display_name
    return clone


def flow_with_options(flow: Flow[Any, Any], options: dict[str, Any]) -> Flow[Any, Any]:
    """A copy of ``flow`` built as ``@flow`` would build it with these options changed."""
    from orchestrator.authoring.flows import Flow

    _refuse_unknown(f"flow {flow.name!r}", options, flow_option_names())
    changed = dict(options)
    display = changed.pop("name", None)
    with _unregistered():
        clone: Flow[Any, Any] = Flow(flow.fn, **(flow.options_given | changed))
    clone.name = flow.name  # the registered name: a worker finds the flow by it
    clone.display_name = display if display is not None else flow.display_name
    clone.changed_options = flow.changed_options | options
    return clone


# -- callables by reference -------------------------------------------------------------------------
def reference(obj: Any) -> str:
    """``"module:qualname"`` of a module-level function (or exception class), else an UNREFERABLE marker."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    plain = isinstance(obj, types.FunctionType) or (isinstance(obj, type) and issubclass(obj, BaseException))
    if not plain or not module or not qualname or "<" in qualname or module == "__main__":
        return f"{UNREFERABLE}{obj!r}"
    return f"{module}:{qualname}"


def resolve_reference(ref: str) -> Any:
    """The object a message names, found only in a module this process has already imported.

    Never imports: a message cannot make a worker load code. The object must be a plain
    function (or an exception class) whose own module and qualified name are the ones named;
    attributes are read from ``vars()``, so no ``__getattr__`` or property runs.
    """
    module_name, sep, qualname = ref.partition(":")
    if not sep or not qualname or ref.startswith(UNREFERABLE):
        raise DefinitionError(f"{ref!r} is not a reference to a module-level function")
    module = sys.modules.get(module_name)
    if module is None:
        raise DefinitionError(f"{ref!r}: module {module_name!r} is not imported on this worker (it is never imported)")
    obj: Any = module
    for part in qualname.split("."):
        obj = vars(obj).get(part) if hasattr(obj, "__dict__") else None
        if obj is None:
            raise DefinitionError(f"{ref!r}: {module_name} has no {qualname}")
    if reference(obj) != ref:
        raise DefinitionError(f"{ref!r} does not name a plain module-level function there")
    return obj


def _refs(hooks: dict[str, list[Callable[..., Any]]]) -> dict[str, list[str]]:
    return {name: [reference(h) for h in items] for name, items in hooks.items() if items}


def callable_options(task: Task[Any, Any]) -> dict[str, Any]:
    """The callable and naming options of ``task`` as a message carries them (compared with the registered task)."""
    retry_on = task.retry_on
    template = task.task_run_name
    return {
        "hooks": _refs(task.hooks),
        "retry_on": [reference(e) for e in retry_on] if retry_on is not None else None,
        "retry_condition_fn": reference(task.retry_condition_fn) if task.retry_condition_fn else None,
        "task_run_name": template if template is None or isinstance(template, str) else {"ref": reference(template)},
        "display_name": task.display_name,
    }


def message_overrides(name: str, options: dict[str, Any], declared: dict[str, Any] | None) -> dict[str, Any]:
    """The options of a task call that differ from the task as workers register it (``declared``).

    A changed callable with no importable name cannot reach a worker: refused here, naming it.
    """
    overrides = {k: v for k, v in options.items() if k != "importable_error"}
    if declared is not None:
        overrides = {k: v for k, v in overrides.items() if declared.get(k) != v}
    for key, value in overrides.items():
        bad = [v for v in _flatten(value) if isinstance(v, str) and v.startswith(UNREFERABLE)]
        if bad:
            raise DefinitionError(
                f"task {name!r}: with_options({key}=...) gives {bad[0][len(UNREFERABLE) :]}, which cannot be sent to "
                "workers: a worker takes a callable by its module and name only. Define it with def at the top "
                "level of a module the workers import (--flows), or run the flow in-process."
            )
    return overrides


def _flatten(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _flatten(item)
    elif isinstance(value, list):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def time_limits(overrides: dict[str, Any], *, is_async: bool = False) -> dict[str, Any]:
    """Celery's per-message soft and hard time limits for a changed ``timeout_seconds`` (else none).

    A worker fixes a task's limits when it registers it; a message's own limits win. None
    cannot say "no limit" (Celery then uses the registered one), so it becomes a very long one.
    An async task gets no soft limit: its own loop cancels it at the timeout (a signal landing
    in the loop's machinery could be swallowed there), and the hard limit stays the backstop.
    """
    if "timeout_seconds" not in overrides:
        return {}
    timeout = overrides["timeout_seconds"]
    if not timeout:
        return {"soft_time_limit": NO_TIME_LIMIT, "time_limit": NO_TIME_LIMIT}
    soft = NO_TIME_LIMIT if is_async else float(timeout)
    return {"soft_time_limit": soft, "time_limit": float(timeout) + HARD_LIMIT_MARGIN}


def registered_time_limits(timeout: float | None, *, is_async: bool) -> dict[str, Any]:
    """The limits a worker registers a task with (see :func:`time_limits`)."""
    if not timeout:
        return {}
    hard = {"time_limit": float(timeout) + HARD_LIMIT_MARGIN}
    return hard if is_async else {"soft_time_limit": float(timeout)} | hard


def _resolved(task_name: str, option: str, ref: str) -> Any:
    try:
        return resolve_reference(ref)
    except DefinitionError as exc:
        log.error("%s: option %s not applied on this worker: %s", task_name, option, exc)
        return None


def apply_callable_options(clone: Task[Any, Any], options: dict[str, Any]) -> None:
    """Set the callable and naming options a message carries on ``clone`` (a copy of the registered task)."""
    name = clone.name
    if "hooks" in options:
        hooks: dict[str, list[Callable[..., Any]]] = {k: [] for k in clone.hooks}
        for kind, refs in (options["hooks"] or {}).items():
            hooks[kind] = [h for h in (_resolved(name, kind, r) for r in refs) if h is not None]
        clone.hooks = hooks
    if "retry_on" in options:
        refs = options["retry_on"]
        found = [_resolved(name, "retry_on", r) for r in refs] if refs is not None else None
        clone.retry_on = tuple(e for e in found if e is not None) if found is not None else None
    if "retry_condition_fn" in options:
        ref = options["retry_condition_fn"]
        clone.retry_condition_fn = _resolved(name, "retry_condition_fn", ref) if ref else None
    if "task_run_name" in options:
        template = options["task_run_name"]
        if isinstance(template, dict):  # a callable, by reference
            template = _resolved(name, "task_run_name", str(template.get("ref", "")))
        clone.task_run_name = template
    if "display_name" in options:
        clone.display_name = options["display_name"]


# -- a flow's changed options on its run record --------------------------------------------------------
FLOW_HOOKS = ("on_completion", "on_failure", "on_crashed", "on_cancellation")


def flow_record_options(flow: Flow[Any, Any]) -> dict[str, Any]:
    """A with_options flow's changed options as its run record keeps them (``flow_options``), else nothing.

    A worker re-imports a flow sent by name, so what ``with_options`` changed must ride on the
    record; a ``flow_run_name`` callable goes by reference (refused here if it has none). A flow
    run's hooks run in whichever process ends it, from the flow that process registered, so
    hooks changed by ``with_options`` are refused for a run sent to workers: declare them on ``@flow``.
    """
    if not flow.changed_options:
        return {}
    encoded: dict[str, Any] = {}
    for key, value in flow.changed_options.items():
        if key in FLOW_HOOKS:
            raise DefinitionError(
                f"flow {flow.name!r}: with_options({key}=...) holds in-process only; a run sent to workers calls "
                f"the hooks of the flow as the workers registered it. Declare the hook on @flow({key}=...)."
            )
        if key == "flow_run_name" and callable(value):
            encoded[key] = {"ref": _sendable(flow.name, key, value)}
        else:
            encoded[key] = value
    return {"flow_options": json.dumps(encoded)}


def _sendable(flow_name: str, key: str, obj: Any) -> str:
    ref = reference(obj)
    if ref.startswith(UNREFERABLE):
        raise DefinitionError(
            f"flow {flow_name!r}: with_options({key}=...) gives {obj!r}, which cannot be sent to workers: a worker "
            "takes a callable by its module and name only. Define it with def at the top level of a module the "
            "workers import (--flows), or run the flow in-process."
        )
    return ref


def flow_from_record(flow: Flow[Any, Any], text: str | None) -> Flow[Any, Any]:
    """The registered ``flow`` with the options its run record carries (``flow_options``) applied."""
    if not text:
        return flow
    options: dict[str, Any] = json.loads(text)
    for key, value in list(options.items()):
        if key == "flow_run_name" and isinstance(value, dict):
            options[key] = _resolved(flow.name, key, str(value.get("ref", "")))
    return flow_with_options(flow, options)
