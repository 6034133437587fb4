"""Prefect-style flows and tasks, compiled to Celery canvas and run over Redis.

The public surface is what ``__all__`` lists; everything else may change.
"""

from orchestrator.authoring.flows import Flow, flow
from orchestrator.authoring.naming import rename_flow_run
from orchestrator.authoring.tasks import Task, exponential_backoff, task
from orchestrator.runs.handle import FlowRun
from orchestrator.runtime.futures import Future, allow_failure, as_completed, unmapped, wait
from orchestrator.runtime.run_logger import get_run_logger
from orchestrator.states import StateType

__all__ = [
    "Flow",
    "FlowRun",
    "Future",
    "StateType",
    "Task",
    "allow_failure",
    "as_completed",
    "exponential_backoff",
    "flow",
    "get_run_logger",
    "rename_flow_run",
    "task",
    "unmapped",
    "wait",
]
