"""What a parent sees of a run of its own it started: its state, and its result as a node's value.

A ``flow_run`` node that waits for its child ends with the child's return value (the parent's
downstream tasks fetch it by reference like any task result); one that does not wait ends with
the child's run id. A dynamic body's future on a child reads the same outcome.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from orchestrator.data.references import returns_text
from orchestrator.runstate.store import RunStore
from orchestrator.states import StateType


@dataclass(frozen=True)
class LinkedOutcome:
    """A child run's final state, why, and (Completed) its return value as stored result text."""

    state: StateType
    message: str
    result_text: str | None


def linked_outcome(store: RunStore, run_id: str) -> LinkedOutcome | None:
    """The child's outcome once it is final (None before). A result that cannot be read fails the outcome."""
    outcome = store.flow_runs.read_outcome(run_id)
    state = outcome.state_type
    if state is None or not state.is_final:
        return None
    message = outcome.message or ""
    if state is not StateType.COMPLETED:
        return LinkedOutcome(state, message, None)
    returns = json.loads(outcome.returns or "null")
    try:
        text = returns_text(store, returns, f"flow run {run_id} result", prefetched=outcome.results)
    except Exception as exc:  # expired or refused: the parent must learn why, not hang
        return LinkedOutcome(StateType.FAILED, f"its result cannot be read: {exc}", None)
    return LinkedOutcome(state, message, text)
