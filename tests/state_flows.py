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


PLANNED_HERE: list[str] = []  # what bodies planned in this process appended (the test's process)


@flow(queue=QUEUE, log_prints=True)
def wires_and_logs(x: int) -> Any:
    """A body that only wires tasks, and logs and prints while it is planned."""
    from orchestrator import get_run_logger

    PLANNED_HERE.append("wires_and_logs")
    get_run_logger().info("planning with x=%s", x)
    print(f"printed while planned {x}")
    return double.submit(x)


@flow(queue=QUEUE, log_prints=True, plan_on_worker=True)
def planned_on_a_worker(x: int) -> Any:
    """The same body, planned by a worker of its queue (its side effects happen there)."""
    from orchestrator import get_run_logger

    PLANNED_HERE.append("planned_on_a_worker")
    get_run_logger().info("planning on a worker with x=%s", x)
    return double.submit(x)


@task
def countdown(n: int) -> Any:
    """A generator task: its values are collected into a list."""
    yield from range(n, 0, -1)


@flow(queue=QUEUE)
def yields_doubles(n: int) -> Any:
    """A generator flow body: it yields futures, traced like any body; its value is the list."""
    for value in range(n):
        yield double.submit(value)


@flow(queue=QUEUE)
def counts_down(n: int) -> list[int]:
    return countdown(n)  # type: ignore[no-any-return]


@task(timeout_seconds=1)
def oversleeps() -> None:
    import time

    time.sleep(5)


@flow(queue=QUEUE)
def catches_a_timeout() -> str:
    """``except TimeoutError`` around result() catches a task that ran past its timeout_seconds."""
    try:
        oversleeps.submit().result()
    except TimeoutError as exc:
        return type(exc).__name__
    return "not reached"
