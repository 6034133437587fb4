"""Flows for tests/test_metrics.py; its worker imports this module with --flows tests.metrics_flows."""

from __future__ import annotations

import time

from orchestrator import flow, task
from orchestrator.runstate.store import get_store


@task
def measure(x: int) -> int:
    return x + 1


@task
def break_down(x: int) -> int:
    raise ValueError(f"metrics test: task fails on purpose with {x}")


@flow(name="metrics-ok")
def metrics_ok(x: int = 1) -> int:
    """Two task runs in a chain, both Completed."""
    return measure.submit(measure.submit(x))  # type: ignore[return-value]


@flow(name="metrics-bad")
def metrics_bad(x: int = 1) -> int:
    """One task run Failed, the one after it UpstreamFailed (it never starts: no duration)."""
    return measure.submit(break_down.submit(x))  # type: ignore[return-value]


@flow(name="metrics-idle")
def metrics_idle(x: int = 1) -> int:
    """Sent by the test to a queue no worker consumes: it waits there."""
    return measure.submit(x)  # type: ignore[return-value]


@task
def hold(key: str) -> str:
    """Runs until the test sets ``test:release:<key>`` (at most a minute): a task run seen Running."""
    deadline = time.monotonic() + 60
    while not get_store().redis.exists(f"test:release:{key}") and time.monotonic() < deadline:
        time.sleep(0.1)
    return key


@flow(name="metrics-held")
def metrics_held(key: str) -> str:
    """One task run that runs until the test releases it."""
    return hold.submit(key)  # type: ignore[return-value]
