"""Flows and tasks of the soak test (tests/test_soak.py); its workers import this module with --flows.

Every execution of a task counts itself in Redis: ``INCR soak:<marker>:exec:<task run id>`` and
one line ``<task run id>|<worker>|<attempt>|<task>`` appended to ``soak:<marker>:log``, in one
round trip, before the task does anything else. The test compares those counts with the attempts
the API recorded. ``SOAK_MARKER`` and ``SOAK_WORKER`` (the worker's role: steady, doomed, spare)
come from the worker's environment.

Everything a task decides (fail or not, poke again or not) is derived from its parameters and its
attempt number, never from how often it ran, so a run's outcome is reproducible and an execution
repeated after a kill decides the same: the test predicts every task run's final state and
attempts from the seeds, with the helpers here.

The worker's Redis visibility timeout is short in the soak test (a task killed with its worker
before its first heartbeat comes back only through it), so kombu's sweep for unacknowledged
messages is scaled down with it here, as tests/short_visibility.py does (a test-only knob).
"""

from __future__ import annotations

import os
import random
import time

from orchestrator import flow, task
from orchestrator.runstate.store import get_store
from orchestrator.runtime.context import RunInfo, current_run
from orchestrator.runtime.signals import FAIL, RETRY
from workers.app import app

app.conf.broker_transport_options = dict(app.conf.broker_transport_options) | {
    "unacked_restore_interval": 1,
    "unacked_restore_throttle": 1,
}

MARKER = os.environ.get("SOAK_MARKER", "soak")
WORKER = os.environ.get("SOAK_WORKER", "local")
TASK_SECONDS = 0.01  # what every execution takes at least
FAIL_CHANCE = 0.35  # of one attempt of a flaky task
FLAKY_ITEMS = 3  # mapped flaky tasks per soak-flaky run
FLAKY_ATTEMPTS = 3  # retries=2


def exec_key(marker: str, task_run_id: str) -> str:
    return f"soak:{marker}:exec:{task_run_id}"


def log_key(marker: str) -> str:
    return f"soak:{marker}:log"


def faults_key(marker: str) -> str:
    return f"soak:{marker}:faults"


def by_worker_key(marker: str, worker: str) -> str:
    return f"soak:{marker}:by:{worker}"


def last_start_key(marker: str, worker: str) -> str:
    """The last execution that began on ``worker``: ``<task run id>|<task>|<epoch seconds>``."""
    return f"soak:{marker}:last:{worker}"


def napping_key(marker: str, worker: str) -> str:
    """Hash of the slow task runs sleeping on ``worker`` now: task run id -> start time."""
    return f"soak:{marker}:napping:{worker}"


def _executed(what: str) -> RunInfo:
    """Count this execution (first thing a task does), in one round trip."""
    run = current_run()
    assert run is not None and run.task_run_id, "a soak task runs inside a task run"
    pipe = get_store().redis.pipeline(transaction=False)
    pipe.incr(exec_key(MARKER, run.task_run_id))
    pipe.rpush(log_key(MARKER), f"{run.task_run_id}|{WORKER}|{run.attempt}|{what}")
    pipe.incr(by_worker_key(MARKER, WORKER))
    pipe.set(last_start_key(MARKER, WORKER), f"{run.task_run_id}|{what}|{time.time()!r}")
    pipe.execute()
    time.sleep(TASK_SECONDS)  # short, but long enough for the kill to catch one mid-way now and then
    return run


def attempt_fails(key: str, attempt: int) -> bool:
    """Whether attempt ``attempt`` of the flaky task keyed ``key`` fails (seeded: reproducible)."""
    return random.Random(f"{key}#{attempt}").random() < FAIL_CHANCE


def flaky_keys(seed: int) -> list[str]:
    return [f"{seed}:{i}" for i in range(FLAKY_ITEMS)] + [f"{seed}:later"]


def fan_width(seed: int) -> int:
    return 3 + seed % 4


def sensor_pokes(seed: int) -> int:
    return 1 + seed % 2


# -- tasks ------------------------------------------------------------------------------------------
@task
def step(x: int) -> int:
    _executed("step")
    return x + 1


@task
def numbers(n: int) -> list[int]:
    _executed("numbers")
    return list(range(n))


@task
def square(x: int) -> int:
    _executed("square")
    return x * x


@task
def total(values: list[int]) -> int:
    _executed("total")
    return sum(values)


@task
def add(a: int, b: int) -> int:
    _executed("add")
    return a + b


@task
def sensor(seed: int, pokes: int) -> int:
    """Not ready for its first ``pokes`` attempts (each poke is a new attempt, retries untouched)."""
    run = _executed("sensor")
    if run.attempt <= pokes:
        raise RETRY("not yet", delay=0.2 + (seed % 4) * 0.1)
    return seed


def _flaky(key: str, what: str) -> int:
    run = _executed(what)
    if attempt_fails(key, run.attempt):
        get_store().redis.incr(faults_key(MARKER))
        raise OSError(f"seeded failure of {key} at attempt {run.attempt}")
    return 1


@task(retries=FLAKY_ATTEMPTS - 1)
def flaky_now(key: str) -> int:
    """Fails at random (seeded by ``key`` and the attempt); retried at once (a Celery retry)."""
    return _flaky(key, "flaky_now")


@task(retries=FLAKY_ATTEMPTS - 1, retry_delay_seconds=0.2)
def flaky_later(key: str) -> int:
    """The same, retried after a delay (the retry waits in Redis)."""
    return _flaky(key, "flaky_later")


@task
def broken(x: int) -> int:
    """Fails for good, no retries: with FAIL or with an exception."""
    _executed("broken")
    if x % 2:
        raise FAIL("broken for good")
    raise ValueError("broken for good")


@task(retries=1)
def nap(seconds: float) -> float:
    """Long enough to heartbeat: a kill while it sleeps goes through the crash detector."""
    run = _executed("nap")
    redis = get_store().redis
    redis.hset(napping_key(MARKER, WORKER), run.task_run_id, time.time())
    time.sleep(seconds)
    redis.hdel(napping_key(MARKER, WORKER), run.task_run_id)
    return seconds


# -- flows ------------------------------------------------------------------------------------------
@flow(name="soak-chain")
def soak_chain(seed: int) -> int:
    a = step.submit(seed)
    b = step.submit(a)
    c = step.submit(b)
    return step.submit(c)  # type: ignore[return-value]


@flow(name="soak-fan")
def soak_fan(seed: int) -> int:
    """Fan-out over an upstream result (expanded at run time), fan-in."""
    nums = numbers.submit(fan_width(seed))
    squares = square.map(nums)
    return total.submit(squares)  # type: ignore[return-value]


@flow(name="soak-diamond")
def soak_diamond(seed: int) -> int:
    a = step.submit(seed)
    b = square.submit(a)
    c = step.submit(a)
    return add.submit(b, c)  # type: ignore[return-value]


@flow(name="soak-sensor")
def soak_sensor(seed: int) -> int:
    found = sensor.submit(seed, sensor_pokes(seed))
    return step.submit(found)  # type: ignore[return-value]


@flow(name="soak-flaky")
def soak_flaky(seed: int) -> int:
    *mapped, later_key = flaky_keys(seed)
    items = flaky_now.map(mapped)
    later = flaky_later.submit(later_key)
    return total.submit(items, wait_for=[later])  # type: ignore[return-value]


@flow(name="soak-broken")
def soak_broken(seed: int) -> dict[str, int]:
    a = step.submit(seed)
    bad = broken.submit(a)
    after = step.submit(bad)
    side = step.submit(a)
    return {"after": after, "side": side}  # type: ignore[dict-item]


@flow(name="soak-child")
def soak_child(seed: int) -> int:
    a = step.submit(seed)
    return step.submit(a)  # type: ignore[return-value]


@flow(name="soak-parent")
def soak_parent(seed: int) -> int:
    first = soak_child(seed)
    second = soak_child(seed + 10_000)
    return add.submit(first, second)  # type: ignore[return-value]


@flow(name="soak-slow")
def soak_slow(seed: int) -> int:
    slept = nap.submit(1.5)
    return step.submit(seed, wait_for=[slept])  # type: ignore[return-value]
