"""The task's own exception, wherever a failed task run's result is read.

Prefect code catches what its tasks raise (``except ValueError:`` around ``future.result()``),
so ``future.result()``, ``state.result()`` and a failing flow call raise the task's own
exception type, with the run's ids attached (as attributes and as a note in the traceback):

- in-process, the very exception object the task raised;
- on the fleet (a dynamic body reading a task run another process ran), an exception of
  the same class rebuilt from the run record: the class named ``module:qualname`` by the
  worker that ran it, looked up only among modules this process has already imported and
  only if it is an ``Exception`` subclass (a message can never make us import a module),
  constructed with the original text. A class that cannot be found or built that way gives
  :class:`~orchestrator.errors.TaskRunFailed`, with the original's name in its message.
"""

from __future__ import annotations

import sys
from typing import Any

from orchestrator.errors import TaskRunFailed, TaskTimedOut
from orchestrator.states import StateType


def type_name(exc: BaseException) -> str:
    """``module:qualname`` of ``exc``'s class: what a worker records for :func:`rebuild`."""
    cls = type(exc)
    return f"{cls.__module__}:{cls.__qualname__}"


def annotate(exc: BaseException, *, task_run_id: str, flow_run_id: str, label: str, state: StateType) -> BaseException:
    """``exc`` with the task run's ids attached (``exc.task_run_id``, ``exc.flow_run_id``) and a note."""
    try:
        exc.task_run_id = task_run_id  # type: ignore[attr-defined]
        exc.flow_run_id = flow_run_id  # type: ignore[attr-defined]
    except AttributeError:  # a class with __slots__: the note still says it
        pass
    note = f"task run {label} ({task_run_id}) of flow run {flow_run_id} ended {state.value}"
    if note not in getattr(exc, "__notes__", ()):
        exc.add_note(note)
    return exc


def rebuild(error_type: str, text: str) -> Exception | None:
    """An instance of the class named ``module:qualname`` with ``text`` as its message, or None.

    Never imports: the class must live in a module already loaded here (the worker that
    drives a body imported the task's module, and builtins are always there).
    """
    module_name, _, qualname = error_type.partition(":")
    module = sys.modules.get(module_name)
    if module is None or not qualname:
        return None
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
        if target is None:
            return None
    if not isinstance(target, type) or not issubclass(target, Exception):
        return None
    try:
        made = target(text) if text else target()
    except Exception:  # a constructor with other arguments: keep the class, set the text
        try:
            made = target.__new__(target)
            made.args = (text,)
        except Exception:
            return None
    return made if isinstance(made, target) else None


def remote_task_error(
    record: dict[str, Any], *, task_run_id: str, flow_run_id: str, label: str, state: StateType
) -> Exception:
    """What reading a failed task run of the fleet raises: its own exception if it can be rebuilt."""
    message = record.get("message", "")
    error_type = record.get("error_type", "")
    error: Exception | None = None
    if state is StateType.FAILED and error_type:
        error = rebuild(error_type, record.get("error_text", ""))
    elif state is StateType.TIMED_OUT:  # a TimeoutError, as the same read raises in-process
        error = TaskTimedOut(f"task run {label} ({task_run_id}) ended {state.value}: {message}")
    if error is None:
        error = TaskRunFailed(f"task run {label} ({task_run_id}) ended {state.value}: {message}")
    annotate(error, task_run_id=task_run_id, flow_run_id=flow_run_id, label=label, state=state)
    return error
