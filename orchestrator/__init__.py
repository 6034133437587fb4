"""Prefect-style flows and tasks, compiled to Celery canvas and run over Redis.

The public surface is what ``__all__`` lists; everything else may change.
``import orchestrator`` loads neither Celery nor Redis: a flow called in-process runs
without them. :class:`FlowRun` (the handle of a run sent to the fleet) is imported
on first use, with the run store and the Celery seam behind it.
"""

from typing import TYPE_CHECKING, Any

from orchestrator.authoring.caching import (
    FLOW_PARAMETERS,
    INPUTS,
    NO_CACHE,
    RUN_ID,
    TASK_SOURCE,
    CachePolicy,
    task_input_hash,
)
from orchestrator.authoring.flows import Flow, flow
from orchestrator.authoring.naming import rename_flow_run
from orchestrator.authoring.tags import tags
from orchestrator.authoring.tasks import Task, exponential_backoff, task
from orchestrator.runtime.annotations import opaque, quote
from orchestrator.runtime.futures import Future, allow_failure, as_completed, unmapped, wait
from orchestrator.runtime.run_logger import get_run_logger
from orchestrator.states import Cancelled, Completed, Crashed, Failed, Pending, Running, Scheduled, State, StateType

if TYPE_CHECKING:
    from orchestrator.runs.deployments import run_deployment
    from orchestrator.runs.handle import FlowRun


def _installed_version() -> str:
    """The installed distribution's version (``orchestrator.__version__``); "0+unknown" when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("celery-orchestrator")
    except PackageNotFoundError:
        return "0+unknown"


__version__ = _installed_version()

__all__ = [
    "FLOW_PARAMETERS",
    "INPUTS",
    "NO_CACHE",
    "RUN_ID",
    "TASK_SOURCE",
    "CachePolicy",
    "Cancelled",
    "Completed",
    "Crashed",
    "Failed",
    "Flow",
    "FlowRun",
    "Future",
    "Pending",
    "Running",
    "Scheduled",
    "State",
    "StateType",
    "Task",
    "allow_failure",
    "as_completed",
    "exponential_backoff",
    "flow",
    "get_run_logger",
    "opaque",
    "quote",
    "rename_flow_run",
    "run_deployment",
    "tags",
    "task",
    "task_input_hash",
    "unmapped",
    "wait",
]


def __getattr__(name: str) -> Any:
    """The names that bring the fleet's machinery with them, loaded when first asked for."""
    if name == "FlowRun":
        from orchestrator.runs.handle import FlowRun

        return FlowRun
    if name == "run_deployment":
        from orchestrator.runs.deployments import run_deployment

        return run_deployment
    raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
