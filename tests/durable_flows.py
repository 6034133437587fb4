"""Dynamic flow bodies whose worker is killed or stopped mid-body (tests/test_durable_bodies.py).

The bodies run on one queue and their tasks on another, so a test can kill the worker that
drives a body while the task the body waits for goes on running elsewhere (and is re-attached
to, never started again). Every execution of a step counts itself in the test's Redis.
"""

from __future__ import annotations

import time
from pathlib import Path

from orchestrator import as_completed, flow, task
from orchestrator.runstate.store import get_store

BODIES = "durable-bodies"
STEPS = "durable-steps"


def executions_key(marker: str) -> str:
    """Hash: step index -> how many times a step with that index began executing."""
    return f"test:durable:executions:{marker}"


@task(queue=STEPS)
def step(marker: str, i: int, seconds: float) -> int:
    get_store().redis.hincrby(executions_key(marker), str(i), 1)
    time.sleep(seconds)
    return i * 2


@task(queue=STEPS)
def other_step(marker: str, i: int, seconds: float) -> int:
    get_store().redis.hincrby(executions_key(marker), f"other-{i}", 1)
    time.sleep(seconds)
    return i


@flow(queue=BODIES)
def long_loop(marker: str, n: int, seconds: float = 0.3) -> int:
    """n steps one after another, each result read before the next is sent."""
    total = 0
    for i in range(n):
        total += step.submit(marker, i, seconds).result()
    return total


@flow(queue=BODIES)
def fickle(marker: str, n: int, switch: str) -> int:
    """Which task it calls depends on a file the body reads itself: not deterministic on replay."""
    total = 0
    for i in range(n):
        chosen = step if Path(switch).read_text() == "steps" else other_step
        total += chosen.submit(marker, i, 0.3).result()
    return total


def flow_crashed_key(marker: str) -> str:
    """A list the flow's on_crashed hook appends to, once per call."""
    return f"test:durable:flow-crashed:{marker}"


def remember_flow_crash(flow_: object, flow_run: object, state: object) -> None:
    """The flow's on_crashed hook: which state and run it was called for."""
    marker = str(getattr(flow_run, "name", "")).removeprefix("unlucky-")
    get_store().redis.rpush(flow_crashed_key(marker), f"{getattr(state, 'name', '')}:{getattr(flow_run, 'id', '')}")


@flow(queue=BODIES, on_crashed=[remember_flow_crash], flow_run_name="unlucky-{marker}")
def unlucky(marker: str, n: int) -> int:
    """A body whose worker dies more often than the services resume it."""
    total = 0
    for i in range(n):
        total += step.submit(marker, i, 0.4).result()
    return total


@flow(queue=BODIES)
def inner(marker: str, base: int) -> int:
    """An in-process subflow whose body reads values (dynamic): two steps, one after the other."""
    return step.submit(marker, base, 0.3).result() + step.submit(marker, base + 1, 0.3).result()


@flow(queue=BODIES)
def own_run(marker: str, base: int) -> int:
    """Started with ``.submit()`` from a body: a run of its own."""
    return step(marker, base, 0.3)  # type: ignore[no-any-return]


@flow(queue=BODIES)
def mixed(marker: str) -> int:
    """Every kind of call a journal records: subflows in-process, a run of its own, tasks, an
    as_completed order; the test kills the body's worker in the middle."""
    first = inner(marker, 0)
    linked = own_run.submit(marker, 10)
    futures = [step.submit(marker, 20 + i, 0.3 * (3 - i)) for i in range(3)]
    seen = [f.result() for f in as_completed(futures)]
    second = inner(marker, 30)
    return first + linked.result() + sum(seen) + second
