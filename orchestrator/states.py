"""The state model shared by the local runner, the workers and the API.

One home for the states, which of them are final, and the rule that refuses a
transition that would move a run backwards (late or duplicate events).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from orchestrator.errors import FailedRun, RunError, describe


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


# -- Prefect's state objects ------------------------------------------------------------
# A run is recorded in one of the precise states above. Code written for Prefect reads a
# state object instead: a coarse ``type`` (the seven Prefect knows), a precise ``name``,
# a message, a timestamp and the data. ``State`` is that object; the precise state stays
# reachable as ``state.detail``.

_COARSE: dict[StateType, StateType] = {
    StateType.SCHEDULED: StateType.SCHEDULED,
    StateType.LATE: StateType.SCHEDULED,
    StateType.PENDING: StateType.PENDING,
    StateType.AWAITING_CONCURRENCY_SLOT: StateType.SCHEDULED,
    StateType.RUNNING: StateType.RUNNING,
    StateType.AWAITING_RETRY: StateType.SCHEDULED,
    StateType.RETRYING: StateType.RUNNING,
    StateType.COMPLETED: StateType.COMPLETED,
    StateType.FAILED: StateType.FAILED,
    StateType.TIMED_OUT: StateType.FAILED,
    StateType.CRASHED: StateType.CRASHED,
    StateType.UPSTREAM_FAILED: StateType.FAILED,
    StateType.SKIPPED: StateType.COMPLETED,  # as Prefect 1's Skipped: a success that ran nothing
    StateType.CANCELLING: StateType.CANCELLING,
    StateType.CANCELLED: StateType.CANCELLED,
}


def coarse_type(state: StateType) -> StateType:
    """The Prefect state type ``state`` belongs to (TimedOut and UpstreamFailed are FAILED, Retrying RUNNING, ...)."""
    return _COARSE[state]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class State:
    """A run's state as Prefect code reads it: ``type``, ``name``, ``message``, ``timestamp``, ``data``.

    What futures' ``.state``, ``return_state=True`` and hooks give, and what a flow body may
    return to decide its own final state (``return Failed(message="no rows")``). ``result()``
    gives the run's value, or raises the error that ended it.
    """

    __slots__ = ("_resolve", "data", "detail", "message", "name", "timestamp", "type")

    def __init__(
        self,
        type: StateType,
        name: str | None = None,
        message: str | None = None,
        data: Any = None,
        timestamp: datetime | None = None,
        *,
        resolve: Callable[[bool], Any] | None = None,
    ) -> None:
        given = StateType(type)
        named = _precise(name)
        # a precise type given as ``type`` (State(StateType.TIMED_OUT)) keeps its name
        self.detail: StateType = named if named is not None and coarse_type(named) is coarse_type(given) else given
        self.type: StateType = coarse_type(given)
        self.name: str = name or self.detail.value
        self.message: str | None = message
        self.data: Any = data
        self.timestamp: datetime = timestamp or _utc_now()
        self._resolve = resolve  # set for a run's state: fetches its value or raises its error

    @classmethod
    def of(
        cls,
        state: StateType,
        message: str | None = None,
        *,
        data: Any = None,
        timestamp: datetime | None = None,
        resolve: Callable[[bool], Any] | None = None,
    ) -> State:
        """The state object of a run recorded in the precise ``state``."""
        return cls(state, state.value, message or None, data, timestamp, resolve=resolve)

    # -- what Prefect code asks of a state ---------------------------------------------
    def is_scheduled(self) -> bool:
        return self.type is StateType.SCHEDULED

    def is_pending(self) -> bool:
        return self.type is StateType.PENDING

    def is_running(self) -> bool:
        return self.type is StateType.RUNNING

    def is_completed(self) -> bool:
        return self.type is StateType.COMPLETED

    def is_failed(self) -> bool:
        return self.type is StateType.FAILED

    def is_crashed(self) -> bool:
        return self.type is StateType.CRASHED

    def is_cancelled(self) -> bool:
        return self.type is StateType.CANCELLED

    def is_cancelling(self) -> bool:
        return self.type is StateType.CANCELLING

    def is_paused(self) -> bool:
        """Always False: runs are never paused here (Prefect's pause/suspend is not supported)."""
        return False

    def is_final(self) -> bool:
        return self.type in (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)

    def result(self, raise_on_failure: bool = True) -> Any:
        """The value of a completed state; for a failed one, raise its error (or return it when
        ``raise_on_failure=False``). A state that is not final has no result yet."""
        if self._resolve is not None and self.is_final():
            return self._resolve(raise_on_failure)
        if self.is_completed():
            return self.data
        if not self.is_final():
            raise RunError(f"the state is {self.name}, not final: there is no result yet; wait for the run first.")
        error = self.data if isinstance(self.data, BaseException) else None
        if error is None:
            error = FailedRun(f"{self.name}: {self.message}" if self.message else self.name)
        if raise_on_failure:
            raise error
        return error

    def __repr__(self) -> str:
        shown = f", message={self.message!r}" if self.message else ""
        return f"{self.name}(type={self.type.name}{shown})"


def _precise(name: str | None) -> StateType | None:
    """The precise state a name stands for, if it is one of ours ("TimedOut", "Retrying", ...)."""
    try:
        return StateType(name) if name else None
    except ValueError:
        return None


def Scheduled(message: str | None = None, data: Any = None, name: str | None = None) -> State:  # noqa: N802
    """A Scheduled state (Prefect's constructor)."""
    return State(StateType.SCHEDULED, name, message, data)


def Pending(message: str | None = None, data: Any = None, name: str | None = None) -> State:  # noqa: N802
    """A Pending state (Prefect's constructor)."""
    return State(StateType.PENDING, name, message, data)


def Running(message: str | None = None, data: Any = None, name: str | None = None) -> State:  # noqa: N802
    """A Running state (Prefect's constructor)."""
    return State(StateType.RUNNING, name, message, data)


def Completed(message: str | None = None, data: Any = None, name: str | None = None) -> State:  # noqa: N802
    """A Completed state: returned by a flow body, the run completes with ``data`` as its value."""
    return State(StateType.COMPLETED, name, message, data)


def Failed(message: str | None = None, data: Any = None, name: str | None = None) -> State:  # noqa: N802
    """A Failed state: returned by a flow body, the run ends Failed with this message."""
    return State(StateType.FAILED, name, message, data)


def Crashed(message: str | None = None, data: Any = None, name: str | None = None) -> State:  # noqa: N802
    """A Crashed state (Prefect's constructor)."""
    return State(StateType.CRASHED, name, message, data)


def Cancelled(message: str | None = None, data: Any = None, name: str | None = None) -> State:  # noqa: N802
    """A Cancelled state (Prefect's constructor)."""
    return State(StateType.CANCELLED, name, message, data)


def state_of_call(call: Callable[[], Any]) -> State:
    """``call()``'s outcome as a state: Completed with its value, or Failed with the exception it raised."""
    try:
        value = call()
    except Exception as exc:
        return failed_with(exc)
    return Completed(data=value)


async def state_of_awaitable(awaitable: Awaitable[Any]) -> State:
    """The outcome of awaiting ``awaitable``, as :func:`state_of_call` gives a call's."""
    try:
        value = await awaitable
    except Exception as exc:
        return failed_with(exc)
    return Completed(data=value)


def failed_with(exc: BaseException) -> State:
    """The Failed state of an attempt that raised ``exc``: its ``result()`` raises it."""
    return Failed(message=describe(exc), data=exc)
