"""A flow for tests/test_delays.py's stale-message test: its task's first execution hangs until the
test kills its worker, and every later execution waits, after counting itself, until the test
opens a gate. The retry is thus still running when the dead worker's own message comes back
after the visibility timeout, however slow the machine: that message can only run beside it.

Importing tests.short_visibility gives the worker its broker knob (unacknowledged messages
looked at every second).
"""

from __future__ import annotations

import time

from orchestrator import flow, task
from orchestrator.runstate.store import get_store
from orchestrator.runtime.context import current_run
from tests import short_visibility  # noqa: F401  (the transport options it sets on the worker's app)

GATE_SECONDS = 120  # a test that never opens the gate leaves no task running for ever


def executions_key(marker: str) -> str:
    """Where :func:`killed_then_gated` counts its executions (each one as its body begins)."""
    return f"test:executions:killed_then_gated:{marker}"


def running_key(marker: str) -> str:
    """Set by the first execution once it runs (the test kills its worker then)."""
    return f"test:crashy:{marker}"


def gate_key(marker: str) -> str:
    """Set by the test to let the executions after the first one end."""
    return f"test:gate:{marker}"


@task(retries=1)
def killed_then_gated(marker: str) -> str:
    """Execution 1 hangs (the test kills its worker); any later one waits for the gate, then says which it was."""
    redis = get_store().redis
    count = int(redis.incr(executions_key(marker)))
    if count == 1:
        redis.set(running_key(marker), 1)
        time.sleep(GATE_SECONDS)
    deadline = time.monotonic() + GATE_SECONDS
    while not redis.exists(gate_key(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    run = current_run()
    return f"execution {count}, attempt {run.attempt if run else 0}"


@flow(queue="vis-crash")
def killed_then_gated_flow(marker: str) -> str:
    return killed_then_gated.submit(marker)  # type: ignore[no-any-return]
