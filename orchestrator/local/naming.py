"""``task_run_name`` in an in-process run: made from the arguments when the run starts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from orchestrator.authoring.task_run_names import render
from orchestrator.runtime.context import RunInfo, using

if TYPE_CHECKING:
    from orchestrator.authoring.tasks import Task
    from orchestrator.runtime.futures import Future


def local_run_name(task: Task, future: Future[Any], run_id: str, flow_name: str, arguments: dict[str, Any]) -> str:
    """The task run's label: its ``task_run_name`` made from ``arguments``, else the label it has."""
    assert task.task_run_name is not None
    info = RunInfo(run_id, flow_name, future.task_run_id, task.name, extra={"local": True, "parameters": arguments})
    with using(None, info):
        name = render(task.task_run_name, arguments, f"task {future.label} ({task.name})")
    return name or future.label
