"""``run_deployment``: start a run of a deployment (the API keeps deployments) from code or from a flow body.

In a flow body traced into a plan it is a node of that plan: nothing is asked of the API while
tracing, and when the node runs the worker asks the API for the run (linked to the parent, the
same run for every delivery of the node's message). Elsewhere (a script, a dynamic body, an
in-process flow) the API is asked at once; inside a flow the new run is linked to it.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from orchestrator.runs.api_client import ApiClient
from orchestrator.runs.handle import FlowRun
from orchestrator.runtime.context import current_engine, current_run


def deployment_run_path(deployment: str) -> str:
    """The API route that runs ``deployment`` (``"flow/deployment"`` or a deployment's name) now."""
    return f"/api/deployments/{quote(deployment, safe='')}/runs"


def run_deployment(
    name: str,
    parameters: dict[str, Any] | None = None,
    *,
    wait: bool = True,
    timeout: float | None = None,
    idempotency_key: str | None = None,
) -> Any:
    """Run deployment ``name`` now with ``parameters`` over its own.

    ``wait=True`` returns the run's result (raising FlowRunFailed if it did not complete, RunTimeout
    after ``timeout`` seconds); ``wait=False`` returns its :class:`FlowRun` handle at once. In a body
    traced into a plan the call is a node: its value is the result (waited) or the run's id.
    """
    engine = current_engine()
    if engine is not None:
        planned = engine.run_deployment(name, dict(parameters or {}), wait=wait)
        if planned is not None:
            return planned
    body: dict[str, Any] = {"parameters": dict(parameters or {})}
    if idempotency_key is not None:
        body["idempotency_key"] = idempotency_key
    parent = current_run()
    if parent is not None and not parent.task_run_id and not parent.extra.get("local"):
        body["parent_flow_run_id"] = parent.flow_run_id
    created = ApiClient().request("POST", deployment_run_path(name), json=body)
    run = FlowRun(str(created["id"]))
    return run.result(timeout) if wait else run
