"""Flows and tasks of tests/test_reliability.py (workers import this module with --flows).

Every execution of :func:`step` is counted in Redis (``test:count:<key>``), so a test can
tell how many times a task really ran, whatever the recorded states say.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from orchestrator import flow, get_run_logger, task
from orchestrator.runstate.store import get_store
from orchestrator.runtime.context import current_run


@task
def step(key: str, seconds: float, again_seconds: float = 0.0) -> str:
    """Count this execution, record its process id and task run id; sleep ``seconds`` on the
    first execution and ``again_seconds`` on any later one (a redelivery after a kill)."""
    redis = get_store().redis
    count = int(redis.incr(f"test:count:{key}"))
    run = current_run()
    redis.set(f"test:trid:{key}", run.task_run_id if run else "")
    redis.set(f"test:pid:{key}", os.getpid())
    time.sleep(seconds if count == 1 else again_seconds)
    return f"{key}#{count}"


@flow(name="reliable-pair")
def reliable_pair(marker: str, seconds: float = 3.0, again_seconds: float = 0.0) -> str:
    """``first`` (long) then ``second`` (short): a chain, so a message must still be sent after ``first``."""
    first = step.submit(f"{marker}-first", seconds, again_seconds)
    return step.submit(f"{marker}-second", 0.1, wait_for=[first])  # type: ignore[no-any-return]


GATED_TAG = "rel-gated"  # a test may put a concurrency limit on it


def wait_for_gate(redis: Any, key: str, cap: float) -> None:
    """Wait until the test opens ``key``'s gate (sets ``test:gate:<key>``), at most ``cap`` seconds."""
    deadline = time.monotonic() + cap
    while not redis.exists(f"test:gate:{key}") and time.monotonic() < deadline:
        time.sleep(0.1)


@task(tags=[GATED_TAG])
def gated(key: str, cap: float = 240.0) -> str:
    """Count this execution and record its task run id, then wait until the test opens its gate
    (sets ``test:gate:<key>``), at most ``cap`` seconds: a task surely running through whatever the
    test does meanwhile, however long that takes."""
    redis = get_store().redis
    count = int(redis.incr(f"test:count:{key}"))
    run = current_run()
    redis.set(f"test:trid:{key}", run.task_run_id if run else "")
    wait_for_gate(redis, key, cap)
    return f"{key}#{count}"


@flow(name="reliable-gated")
def reliable_gated(marker: str) -> str:
    """``first`` waits for its gate, then ``second`` (a chain: a message is still sent after ``first``)."""
    first = gated.submit(f"{marker}-first")
    return step.submit(f"{marker}-second", 0.1, wait_for=[first])  # type: ignore[no-any-return]


@flow(name="reliable-diamond")
def reliable_diamond(marker: str, seconds: float = 1.0) -> str:
    """Two parallel sleepy tasks, then one that waits for both (a chord across a restart)."""
    left = step.submit(f"{marker}-left", seconds)
    right = step.submit(f"{marker}-right", seconds)
    return step.submit(f"{marker}-last", seconds / 2, wait_for=[left, right])  # type: ignore[no-any-return]


@flow(name="reliable-backlog")
def reliable_backlog(marker: str, seconds: float = 60.0, pads: int = 3, pad_seconds: float = 2.0) -> str:
    """``first`` and ``pads`` other tasks at once: on a worker of concurrency 1 the others wait
    in the queue while ``first`` runs, and ahead of ``first`` once it is requeued."""
    first = step.submit(f"{marker}-first", seconds, 0.2)
    for i in range(pads):
        step.submit(f"{marker}-pad{i}", pad_seconds)
    return first  # type: ignore[return-value]


@task
def talks(key: str, lines: int, pause: float) -> int:
    """Log ``lines`` numbered lines, ``pause`` seconds apart (counted like :func:`step`)."""
    get_store().redis.incr(f"test:count:{key}")
    logger = get_run_logger()
    for i in range(lines):
        logger.info("%s line %d of %d", key, i + 1, lines)
        time.sleep(pause)
    return lines


@flow(name="reliable-talk")
def reliable_talk(marker: str, lines: int = 10, pause: float = 0.4) -> list[int]:
    """Two tasks that log while the API is away."""
    return [talks.submit(f"{marker}-{side}", lines, pause) for side in ("a", "b")]


def _kill_own_worker(task: object, run: object, state: object) -> None:
    """A failure hook that kills the whole worker (main process and pool) it runs in: the task
    run is final by now, and its flow run is not ended yet."""
    os.killpg(os.getpgid(0), signal.SIGKILL)


@task(on_failure=_kill_own_worker)
def fails_then_kills_its_worker(marker: str) -> str:
    get_store().redis.incr(f"test:count:{marker}")
    raise ValueError(f"planned failure {marker}")


@flow(name="reliable-stall")
def reliable_stall(marker: str) -> str:
    """One task that fails, then kills its worker before the flow run is ended."""
    return fails_then_kills_its_worker.submit(marker)  # type: ignore[no-any-return]


def first_attempt_fails(marker: str) -> str:
    """Raise on the first call for ``marker`` (counted in Redis), return ``marker`` on later ones."""
    if get_store().redis.incr(f"test:count:{marker}") == 1:
        raise ValueError(f"first attempt of {marker} fails")
    return marker


@task(retries=1, retry_delay_seconds=8)
def fails_once(marker: str) -> str:
    """Raises on its first attempt, returns on the second, 8 s later."""
    return first_attempt_fails(marker)


@flow(name="reliable-retry-later")
def reliable_retry_later(marker: str) -> str:
    """One task whose retry waits 8 s in Redis's delayed set."""
    return fails_once.submit(marker)  # type: ignore[no-any-return]


def slow_on_retry(task: Any, task_run: Any, state: Any) -> None:
    """An on_retry hook that takes a while: the moment between an attempt's end and its retry's
    keeping, where a worker can be killed."""
    time.sleep(1.5)


@task(retries=1, retry_delay_seconds=5, on_retry=[slow_on_retry])
def fails_once_slow_hook(marker: str) -> str:
    """:func:`fails_once` with a slow on_retry hook and a 5 s retry delay."""
    return first_attempt_fails(marker)


@flow(name="reliable-retry-slow-hook")
def reliable_retry_slow_hook(marker: str) -> str:
    return fails_once_slow_hook.submit(marker)  # type: ignore[no-any-return]


@task(retries=2, retry_delay_seconds=[0, 1])
def flags_deliveries(key: str) -> str:
    """Record whether the broker flagged this execution's message redelivered (``test:flags:<key>``,
    "1" or "0" per execution), then fail on the first two executions: the first retries at once
    (``task.retry(countdown=0)``), the second after a second (a message kept in Redis)."""
    from celery import current_task

    redis = get_store().redis
    flagged = bool((current_task.request.delivery_info or {}).get("redelivered"))
    count = redis.rpush(f"test:flags:{key}", "1" if flagged else "0")
    if count <= 2:
        raise RuntimeError(f"execution {count} fails, to be retried")
    return f"{key}#{count}"


@flow(name="reliable-redelivered-retries")
def reliable_redelivered_retries(marker: str) -> str:
    """:func:`flags_deliveries` on a queue of its own (``<marker>-probe``): the test flags its
    first message redelivered before any worker consumes that queue."""
    return flags_deliveries.with_options(queue=f"{marker}-probe").submit(marker)  # type: ignore[return-value]


STALE_TAG = "rel-stale"  # a test puts a concurrency limit of 1 on it


@task(tags=[STALE_TAG], retries=1)
def fails_then_gated(key: str, cap: float = 240.0) -> str:
    """Count this execution and record its task run id; the first fails (retried at once), a later
    one waits for its gate as :func:`gated`, holding its slot of ``STALE_TAG`` meanwhile."""
    redis = get_store().redis
    count = int(redis.incr(f"test:count:{key}"))
    run = current_run()
    redis.set(f"test:trid:{key}", run.task_run_id if run else "")
    if count == 1:
        raise RuntimeError("the first attempt fails")
    wait_for_gate(redis, key, cap)
    return f"{key}#{count}"


@flow(name="reliable-stale-slot")
def reliable_stale_slot(marker: str) -> str:
    """:func:`fails_then_gated` on a queue of its own (``<marker>-probe``), whose first message the
    test copies before a worker consumes that queue (to deliver it again, stale, later)."""
    return fails_then_gated.with_options(queue=f"{marker}-probe").submit(f"{marker}-first")  # type: ignore[return-value]
