"""Flows for the visibility-timeout test; the worker imports this with a 2 s timeout.

Kombu's Redis transport checks for unacknowledged messages to redeliver only now and
then; the test scales that check down with the timeout (a test-only knob).
"""

from __future__ import annotations

import time

from orchestrator import flow, task
from orchestrator.runstate.store import get_store
from orchestrator.runtime.context import current_run
from orchestrator.runtime.signals import RETRY
from workers.app import app

app.conf.broker_transport_options = dict(app.conf.broker_transport_options) | {
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}


def _count(name: str) -> int:
    run = current_run()
    return int(get_store().redis.incr(f"test:executions:{name}:{run.flow_run_id if run else ''}"))


@task(retries=1, retry_delay_seconds=6)
def fails_once() -> str:
    if _count("fails_once") == 1:
        raise OSError("first attempt fails")
    return "second attempt"


@task
def pokes_twice() -> str:
    if _count("pokes_twice") < 2:
        raise RETRY("not there yet", delay=6)
    return "found"


@flow(queue="vis")
def long_delays() -> dict[str, str]:
    return {"retry": fails_once.submit(), "sensor": pokes_twice.submit()}  # type: ignore[dict-item]


@task(retries=1)
def killed_then_slow(marker: str) -> str:
    """Execution 1 hangs (the test kills its worker); any later one takes 8 s (less than the 10 s
    visibility timeout, so Redis never redelivers it), then says which it was."""
    count = int(get_store().redis.incr(f"test:executions:killed_then_slow:{marker}"))
    if count == 1:
        get_store().redis.set(f"test:crashy:{marker}", 1)
        time.sleep(120)
    time.sleep(8)
    run = current_run()
    return f"execution {count}, attempt {run.attempt if run else 0}"


@flow(queue="vis-crash")
def killed_then_slow_flow(marker: str) -> str:
    return killed_then_slow.submit(marker)  # type: ignore[no-any-return]


@task
def outlasts_the_timeout(marker: str) -> int:
    """Runs 6 s, three times the worker's 2 s visibility timeout; counts its executions."""
    count = int(get_store().redis.incr(f"test:executions:outlasts:{marker}"))
    time.sleep(6)
    return count


@flow(queue="vis")
def outlasts_the_timeout_flow(marker: str) -> int:
    return outlasts_the_timeout.submit(marker)  # type: ignore[no-any-return]
