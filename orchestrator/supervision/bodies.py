"""Dynamic bodies whose worker died: the crash detector starts them again elsewhere, replaying.

A dynamic flow body heartbeats like a running task (its worker takes it with ``claim_body``).
When its beats stop for the crash window, the worker is gone with the body's thread; the
run is not over, though: its task runs go on, and the body's journal holds every call it
made. The detector makes the next attempt of the body the live one (an old attempt that
was only cut off stops at its next call into the orchestrator) and sends the resume
message the worker left in the crash record to the body's queue, where a worker replays
the body. A body whose worker died more than ``max_body_resumes`` times is likely what
kills it (out of memory, say): the run ends Crashed and the flow's on_crashed hooks run
on a worker of its queue.
"""

from __future__ import annotations

import logging
from typing import Any

from orchestrator.config.settings import get_settings
from orchestrator.runs.lifecycle import stop_flow_run
from orchestrator.runstate.store import RunStore
from orchestrator.states import StateType
from orchestrator.transport.messaging import Messaging

log = logging.getLogger("orchestrator.crashes")


def resume_body(store: RunStore, messaging: Messaging, record: dict[str, Any], why: str) -> bool:
    """Start the next attempt of a body whose worker stopped heartbeating; True if one was sent."""
    run_id = record["flow_run_id"]
    state, live = store.flow_runs.state_and_body_attempt(run_id)
    if state is None or state.is_final or live != int(record.get("attempt", 1)):
        return False  # it ended, or was handed over meanwhile
    resumes = get_settings().max_body_resumes
    if store.flow_runs.count_body_crash(run_id) > resumes:
        message = (
            f"its body's worker died {resumes + 1} time{'s' if resumes else ''} (last: {why}); the body itself "
            "may be what "
            "kills it (memory?). It is not resumed again: see the workers' logs, fix, and start a new run "
            "(or raise ORCHESTRATOR_MAX_BODY_RESUMES)."
        )
        stop_flow_run(store, messaging, run_id, StateType.CRASHED, message)
        hooks = record.get("on_crashed")
        if hooks:
            messaging.send_signature(dict(hooks) | {"kwargs": {"run_id": run_id, "message": message}})
        log.warning("flow run %s crashed: %s", run_id, message)
        return False
    attempt = store.flow_runs.next_body_attempt(run_id)
    message = f"body attempt {attempt} resumes on a worker of its queue: {why}"
    store.flow_runs.write(run_id, {"body_status": message})
    messaging.send_signature(dict(record["again"]) | {"kwargs": {"run_id": run_id, "attempt": attempt}})
    log.warning("flow run %s: %s", run_id, message)
    return True
