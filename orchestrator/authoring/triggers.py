"""Trigger rules: when a task whose upstreams did not all complete runs anyway.

``all_successful`` (the default) runs only when every upstream completed; a skipped
upstream skips it, a failed one makes it UpstreamFailed. ``all_finished`` runs once
every upstream is final, whatever its state; ``any_failed`` and ``all_failed`` run
cleanup and alert tasks (as in Prefect 1 and Airflow). An upstream wrapped in
``allow_failure()`` (or waited on with ``wait()``) is tolerated under any rule.
"""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator.errors import DefinitionError
from orchestrator.states import StateType

TRIGGERS = ("all_successful", "all_finished", "any_failed", "all_failed")
DEFAULT_TRIGGER = "all_successful"


def check_trigger(trigger: str, where: str) -> str:
    """Refuse an unknown trigger rule when a task is declared."""
    if trigger not in TRIGGERS:
        raise DefinitionError(f"{where}: unknown trigger {trigger!r}; use one of {', '.join(TRIGGERS)}.")
    return trigger


@dataclass(frozen=True)
class Verdict:
    """Whether a task runs, and if not, the state it ends in and why."""

    run: bool
    state: StateType = StateType.COMPLETED
    message: str = ""


def verdict(trigger: str, upstream: dict[str, tuple[str, StateType]], allowed: set[str]) -> Verdict:
    """Decide from the final states of the upstreams (id -> (label, state))."""
    strict = {i: v for i, v in upstream.items() if i not in allowed}
    if trigger == DEFAULT_TRIGGER:
        for label, state in strict.values():
            if state is StateType.SKIPPED:
                return Verdict(False, StateType.SKIPPED, f"not run: upstream {label} was skipped")
        for label, state in strict.values():
            if state is not StateType.COMPLETED:
                return Verdict(False, StateType.UPSTREAM_FAILED, f"not run: upstream {label} ended {state.value}")
        return Verdict(True)
    failed = [label for label, state in upstream.values() if state.is_failed]
    if trigger == "any_failed" and not failed:
        return Verdict(False, StateType.SKIPPED, "not run: trigger any_failed and no upstream failed")
    if trigger == "all_failed" and len(failed) < len(upstream):
        return Verdict(False, StateType.SKIPPED, "not run: trigger all_failed and not every upstream failed")
    return Verdict(True)
