"""Dynamic bodies that a cancel or a timeout must stop (tests/test_stopping_bodies.py).

Each body catches every Exception and goes on: only a stop it cannot catch (FlowRunStopped,
a BaseException) ends it. What happens is written to a Redis list per run for the test to read.
"""

from __future__ import annotations

import time
from typing import Any

from orchestrator import flow, task
from orchestrator.runstate.store import get_store
from orchestrator.runtime.context import current_run

QUEUE = "stopping"
# The naps run on a worker of their own: a cancel terminates running tasks, and one running in
# the process that drives the body would take the body with it (bodies are not durable yet).
NAP_QUEUE = "stopping-naps"


def note(run_id: str, what: str) -> None:
    get_store().redis.rpush(f"test:stop:{run_id}", what)


def noted(run_id: str) -> list[str]:
    return [
        item.decode() if isinstance(item, bytes) else item
        for item in get_store().redis.lrange(f"test:stop:{run_id}", 0, -1)
    ]


def hook(obj: Any, run: Any, state: Any) -> None:
    note(run.id, f"hook:{state.name}")


@task(queue=NAP_QUEUE)
def nap(i: int, seconds: float) -> int:
    time.sleep(seconds)
    return i


def _keep_going(n: int, seconds: float) -> int:
    run = current_run()
    assert run is not None
    total = 0
    try:
        for i in range(n):
            try:
                total += nap.submit(i, seconds).result()
            except Exception as exc:  # a body that swallows errors: a stop must still end it
                note(run.flow_run_id, f"caught {type(exc).__name__}")
    finally:
        note(run.flow_run_id, "finally")
    return total


@flow(queue=QUEUE, on_cancellation=hook, on_failure=hook)
def keeps_going(n: int, seconds: float) -> int:
    """A long dynamic body (it reads each result): cancelled from outside in the test."""
    return _keep_going(n, seconds)


@flow(queue=QUEUE, timeout_seconds=2, on_cancellation=hook, on_failure=hook)
def too_slow(n: int, seconds: float) -> int:
    """The same body with a flow timeout it cannot meet."""
    return _keep_going(n, seconds)
