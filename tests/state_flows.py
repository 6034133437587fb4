"""Flows that read and return Prefect-style states (tests/test_state_objects.py), in-process and on the fleet."""

from __future__ import annotations

from typing import Any

from orchestrator import Completed, Failed, flow, task

QUEUE = "states"


class QuotaExceeded(Exception):
    """A user's own exception class: the fleet must give it back as itself."""


@task
def double(x: int) -> int:
    return x * 2


@task
def refuse(x: int) -> int:
    raise ValueError(f"no {x}")


@task
def over_quota(x: int) -> int:
    raise QuotaExceeded(f"quota hit at {x}")


@flow(queue=QUEUE)
def reads_states(x: int) -> dict[str, Any]:
    """return_state=True on good and failing calls, and a future's .state."""
    good = double(x, return_state=True)
    bad = refuse(x, return_state=True)
    future = double.submit(x + 1)
    future.wait()
    return {
        "good": [good.is_completed(), good.name, good.type.value, good.result()],
        "bad": [bad.is_failed(), bad.name, bad.type.value, type(bad.result(raise_on_failure=False)).__name__],
        "future": [future.state.is_completed(), future.state.result()],
    }


@flow(queue=QUEUE)
def catches_own_exceptions(x: int) -> list[str]:
    """``except ValueError`` / ``except QuotaExceeded`` around result() catch the tasks' errors; it completes."""
    caught = []
    try:
        refuse.submit(x).result()
    except ValueError as exc:
        caught.append(f"ValueError: {exc}")
    try:
        over_quota.submit(x).result()
    except QuotaExceeded as exc:
        caught.append(f"QuotaExceeded: {exc}")
    return caught


@flow(queue=QUEUE)
def decides_its_state(ok: bool) -> Any:
    """A flow that returns a state: Completed gives its data as the run's value, Failed fails the run."""
    value = double(2)
    if ok:
        return Completed(message="all good", data=value)
    return Failed(message="not enough rows")


@flow(queue=QUEUE)
def returns_failed_directly() -> Any:
    """A body that only returns a state (nothing to trace): it decides the run's end."""
    return Failed(message="nothing to do today")


@flow(queue=QUEUE)
def fails_with_own_exception(x: int) -> int:
    """Leaves the failure unhandled: the run fails, and its error names QuotaExceeded."""
    return over_quota.submit(x)  # type: ignore[return-value]
