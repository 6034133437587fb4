"""``rename_flow_run("...")``: rename the flow run the calling code belongs to."""

from __future__ import annotations

from .context import current_run
from .errors import OrchestratorError


def rename_flow_run(name: str) -> None:
    """Give the current flow run a new name (from its flow body or any of its tasks).

    In an in-process run the name is kept on the run's context only; on the fleet
    the run record is updated and a ``rename`` event is emitted for the API.
    """
    run = current_run()
    if run is None:
        raise OrchestratorError("rename_flow_run() was called outside a flow or task run; call it inside one.")
    if not name or not name.strip():
        raise OrchestratorError("rename_flow_run() needs a non-empty name.")
    run.extra["flow_run_name"] = name
    if run.extra.get("local"):
        return
    from .store import get_store

    get_store().rename_flow_run(run.flow_run_id, name, cause="rename_flow_run()")
