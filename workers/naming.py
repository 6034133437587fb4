"""A task run's ``task_run_name``, made on the worker once its inputs are resolved.

See :mod:`orchestrator.authoring.task_run_names`: a name the planner could already make is
in the message's label; otherwise it is made here, written as the task run's label, and
sent to the API with a Running event the recorder merges (same state: no new history entry).
"""

from __future__ import annotations

from typing import Any

from orchestrator.authoring.task_run_names import render
from orchestrator.authoring.tasks import Task
from orchestrator.runstate.store import RunStore
from orchestrator.runtime.context import RunInfo, using
from orchestrator.states import StateType


def named_run(
    store: RunStore, task: Task, run: dict[str, Any], arguments: dict[str, Any], info: RunInfo
) -> dict[str, Any]:
    """``run`` with its label made from ``task.task_run_name`` (recorded when it changed)."""
    assert task.task_run_name is not None
    where = f"task {run.get('label', task.name)} ({task.name})"
    named = RunInfo(info.flow_run_id, info.flow_name, info.task_run_id, info.task_name, info.attempt)
    named.extra["parameters"] = arguments
    with using(None, named):
        name = render(task.task_run_name, arguments, where)
    if name is None or name == run.get("label"):
        return run
    state = StateType.RUNNING if info.attempt == 1 else StateType.RETRYING
    fields = {"state": state.value, "label": name, "flow_run_id": run["flow_run_id"], "root": run["root"]}
    store.task_runs.progress(run["task_run_id"], fields | {"name": task.name})
    return run | {"label": name}
