"""Run names: the one rule every name must pass, and ``rename_flow_run("...")``.

A name given over HTTP, one a ``flow_run_name`` template makes from parameters (in the
API, in ``.delay()`` or on the worker) and one set with ``rename_flow_run()`` meet the
same check, so a name the database cannot store (too long; NUL, which PostgreSQL refuses)
or that would garble a terminal or a log line (control characters) is refused where it is
made, naming the rule, instead of failing some later write.
"""

from __future__ import annotations

import reprlib
import unicodedata

from orchestrator.errors import OrchestratorError
from orchestrator.runtime.context import current_run

MAX_RUN_NAME = 500  # the flow_run.name column's length
_REFUSED_CATEGORIES = ("Cc", "Zl", "Zp")  # control characters (NUL, tab, newline, escape...), line separators


def run_name_problem(name: str) -> str | None:
    """What is wrong with ``name`` as a flow run's name, or None when it is fine."""
    if not isinstance(name, str) or not name.strip():
        return "a run name must not be empty or blank"
    if len(name) > MAX_RUN_NAME:
        return f"a run name is at most {MAX_RUN_NAME} characters (this one has {len(name)})"
    bad = next((c for c in name if unicodedata.category(c) in _REFUSED_CATEGORIES), None)
    if bad is not None:
        return f"a run name must not contain control characters or line breaks (found {bad!r} in {reprlib.repr(name)})"
    return None


def rename_flow_run(name: str) -> None:
    """Give the current flow run a new name (from its flow body or any of its tasks).

    In an in-process run the name is kept on the run's context only; on the fleet
    the run record is updated and a ``rename`` event is emitted for the API.
    """
    run = current_run()
    if run is None:
        raise OrchestratorError("rename_flow_run() was called outside a flow or task run; call it inside one.")
    problem = run_name_problem(name)
    if problem:
        raise OrchestratorError(f"rename_flow_run({reprlib.repr(name)}): {problem}.")
    run.extra["flow_run_name"] = name
    if run.extra.get("local"):
        return
    from orchestrator.runstate.store import get_store

    get_store().flow_runs.rename(run.flow_run_id, name, cause="rename_flow_run()")
