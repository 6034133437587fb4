"""The executor sends a task run's start before it decodes the inputs its message carries, and reads
the answer only then (``workers/executor.py``): a refused start must still run nothing of the task,
and inputs that cannot be decoded must end the run as they did when decoding came after the start.

In process, on the session's real Redis: the executor takes an :class:`Attempt` (no Celery), as
its module says, so a stub stands for the Celery task here and the function is called directly.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, NoReturn

import pytest

from orchestrator import task
from orchestrator.runstate import keys
from orchestrator.runstate.records import NewTaskRun
from orchestrator.runstate.store import RunStore, get_store, now
from orchestrator.states import StateType
from workers.executor import Ending, run_task

CALLS: list[int] = []


@task
def remember(i: int) -> int:
    """Record that it ran."""
    CALLS.append(i)
    return i


class StubAttempt:
    """The first attempt of a task run, delivered once (``redelivered``: again)."""

    number = 1
    worker = "test-early-start"

    def __init__(self, *, redelivered: bool = False) -> None:
        self.redelivered = redelivered

    def retry(self, delay: float, retries_used: int, record: Any = None) -> NoReturn:
        raise AssertionError("no retry expected")

    def send(self, signatures: list[dict[str, Any]]) -> None:
        assert not signatures

    def report(self, ends: Any) -> None:
        pass

    def is_timeout(self, exc: BaseException) -> bool:
        return False

    def again(self, retries_used: int) -> dict[str, Any]:
        return {}

    def hooks_message(self, fields: dict[str, Any]) -> dict[str, Any]:
        return {}

    def wait(self, delay: float, why: str) -> NoReturn:
        raise AssertionError("no wait expected")

    def hold_off_time_limit(self) -> None:
        pass

    def restore_time_limit(self) -> None:
        pass

    def chained(self) -> list[tuple[str, str, Any]]:
        return []

    def chained_sent(self) -> None:
        pass


CREATED: list[str] = []


@pytest.fixture
def store(redis_url: str) -> Iterator[RunStore]:
    """The run store; these made-up task runs leave the crash detector's set at the end (another
    test's detector, sharing the session's Redis, would find them silent)."""
    CALLS.clear()
    yield get_store()
    if CREATED:
        get_store().redis.zrem(keys.HEARTBEATS, *CREATED)
        get_store().redis.hdel(keys.HEARTBEAT_RECORDS, *CREATED)
        CREATED.clear()


def _run(store: RunStore) -> dict[str, Any]:
    """A new task run of a tree of two (its end does not end the tree)."""
    root, trid = str(uuid.uuid4()), str(uuid.uuid4())
    CREATED.append(trid)
    store.task_runs.add_to_dynamic_tree(NewTaskRun(trid, "remember-0", remember.name, root, root), None)
    store.redis.incr(keys.remaining(root))
    return {"root": root, "flow_run_id": root, "task_run_id": trid, "label": "remember-0"}


def test_a_start_let_through_runs_the_function_once_with_the_decoded_inputs(store: RunStore) -> None:
    run = _run(store)
    assert run_task(remember, run, {"i": 7}, StubAttempt()) is Ending.COMPLETED
    assert CALLS == [7]
    assert store.task_runs.final_states(run["root"], [run["task_run_id"]]) == {run["task_run_id"]: StateType.COMPLETED}
    assert store.redis.hget(keys.task_run(run["task_run_id"]), "starts") == "1"


def test_a_final_task_run_runs_nothing(store: RunStore) -> None:
    run = _run(store)
    store.task_runs.finished(run["root"], run["task_run_id"], StateType.COMPLETED, {}, "1")
    assert run_task(remember, run, {"i": 1}, StubAttempt(redelivered=True)) is Ending.DUPLICATE
    assert CALLS == []


def test_a_stale_attempt_runs_nothing(store: RunStore) -> None:
    run = _run(store)
    store.task_runs.supersede(run["task_run_id"], 2)  # the crash detector sent attempt 2
    assert run_task(remember, run, {"i": 1}, StubAttempt()) is Ending.STOPPED
    assert CALLS == []


def test_a_redelivery_whose_first_execution_heartbeats_runs_nothing(store: RunStore) -> None:
    run = _run(store)
    store.redis.zadd(keys.HEARTBEATS, {run["task_run_id"]: now()})
    assert run_task(remember, run, {"i": 1}, StubAttempt(redelivered=True)) is Ending.STOPPED
    assert CALLS == []


def test_inputs_that_cannot_be_decoded_end_the_run_failed_after_its_start(store: RunStore) -> None:
    """Decoded while the start was on its way, the error is raised where decoding used to be: the run
    started, then ends Failed saying why, and the function never runs."""
    run = _run(store)
    with pytest.raises(Exception, match="refused a pickle payload"):
        run_task(remember, run, {"i": {"__pickle__": "gASVAgAAAAAAAABLAS4="}}, StubAttempt())
    assert CALLS == []
    trid = run["task_run_id"]
    assert store.redis.hget(keys.task_run(trid), "starts") == "1"
    assert store.task_runs.final_states(run["root"], [trid]) == {trid: StateType.FAILED}
    assert "refused a pickle payload" in store.task_runs.read(trid)["message"]
