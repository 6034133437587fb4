"""Prefect-style flows and tasks, compiled to Celery canvas and run over Redis.

The public surface is what ``__all__`` lists; everything else may change.
"""

from .client import FlowRun
from .flows import Flow, flow
from .futures import Future, allow_failure, as_completed, unmapped, wait
from .logging import get_run_logger
from .naming import rename_flow_run
from .states import StateType
from .tasks import Task, exponential_backoff, task

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
