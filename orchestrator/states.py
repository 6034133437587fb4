"""The state model shared by the local runner, the workers and the API.

One home for the states, which of them are final, and the rule that refuses a
transition that would move a run backwards (late or duplicate events).
"""

from __future__ import annotations

from enum import StrEnum


class StateType(StrEnum):
    """Every state a flow run or task run can be in."""

    SCHEDULED = "Scheduled"  # created, waiting for its start time
    LATE = "Late"  # still Scheduled well after its start time
    PENDING = "Pending"  # sent to the fleet, not started yet
    AWAITING_CONCURRENCY_SLOT = "AwaitingConcurrencySlot"  # waiting for a tag slot
    RUNNING = "Running"  # user code is executing
    AWAITING_RETRY = "AwaitingRetry"  # failed an attempt, next one scheduled
    RETRYING = "Retrying"  # running again after a failed attempt
    COMPLETED = "Completed"  # finished and its result is stored
    FAILED = "Failed"  # user code raised (or FAIL was raised)
    TIMED_OUT = "TimedOut"  # ran past its timeout_seconds
    CRASHED = "Crashed"  # the worker was lost while it ran
    UPSTREAM_FAILED = "UpstreamFailed"  # not run because an upstream did not complete
    SKIPPED = "Skipped"  # SKIP was raised, or skipped by an upstream skip
    CANCELLING = "Cancelling"  # cancel asked, tasks being revoked
    CANCELLED = "Cancelled"  # cancelled before finishing

    @property
    def is_final(self) -> bool:
        """True for states a run never leaves."""
        return self in FINAL_STATES

    @property
    def is_failed(self) -> bool:
        """True for final states that mean the work did not succeed."""
        return self in FAILED_STATES


FINAL_STATES = frozenset(
    {
        StateType.COMPLETED,
        StateType.FAILED,
        StateType.TIMED_OUT,
        StateType.CRASHED,
        StateType.UPSTREAM_FAILED,
        StateType.SKIPPED,
        StateType.CANCELLED,
    }
)

FAILED_STATES = frozenset(
    {
        StateType.FAILED,
        StateType.TIMED_OUT,
        StateType.CRASHED,
        StateType.UPSTREAM_FAILED,
        StateType.CANCELLED,
    }
)


NOT_STARTED_STATES = frozenset(
    {StateType.SCHEDULED, StateType.LATE, StateType.PENDING, StateType.AWAITING_CONCURRENCY_SLOT}
)

REOPEN_STATES = frozenset({StateType.SCHEDULED, StateType.PENDING, StateType.AWAITING_RETRY, StateType.RETRYING})


def can_transition(current: StateType | None, new: StateType, *, reopen: bool = False) -> bool:
    """Whether a run in ``current`` may move to ``new``.

    - Final states are never left: a redelivered message or an event that arrives
      after the run ended must not rewrite history. The one exception is an explicit
      retry (``reopen``), which may only move a run back to Scheduled, Pending,
      AwaitingRetry or Retrying.
    - A run that has started never goes back to a not-started state (a late Pending
      event after Running), except by the same explicit retry.
    - Late only follows Scheduled or Pending (a run that should have started and has
      not), and a Late run only moves on (to Running, or an end), never back to
      Scheduled or Pending; Cancelling only leads to a final state.
    """
    if current is None:
        return True
    if reopen:
        return new in REOPEN_STATES
    if current.is_final:
        return False
    if new is StateType.LATE:
        return current in (StateType.SCHEDULED, StateType.PENDING, StateType.LATE)
    if current is StateType.LATE and new in (StateType.SCHEDULED, StateType.PENDING):
        return False
    if current is StateType.CANCELLING:
        return new.is_final or new is StateType.CANCELLING
    if new in NOT_STARTED_STATES and current not in NOT_STARTED_STATES:
        return new is StateType.AWAITING_CONCURRENCY_SLOT and current in (
            StateType.AWAITING_RETRY,
            StateType.RETRYING,
        )
    return True
