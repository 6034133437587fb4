"""Which deliveries of a task run's message the start script lets begin (``lua/start_task_run.lua``
through ``TaskRuns.started``), on the session's real Redis.

A message the broker delivered again (RabbitMQ gives back every unacknowledged message of a
connection it lost) must not start beside the execution that took it first and still runs: that
execution's heartbeat, fresher than the crash window, says it is alive. Without a fresh heartbeat
(none, or one the crash detector would call silent) the redelivery starts as before, and a first
delivery never reads the heartbeat at all.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from orchestrator.runstate import keys
from orchestrator.runstate.records import NewTaskRun
from orchestrator.runstate.store import RunStore, now
from orchestrator.states import StateType

WINDOW = 6.0  # the crash window these tests pretend to have


CREATED: list[str] = []  # task runs of these tests, whose heartbeats go when each test ends


@pytest.fixture
def store(redis_url: str) -> Iterator[RunStore]:
    """The session's run store. These task runs' heartbeats and crash records are made up (no worker
    ran them, the records name no root): they are taken off at the end, or a later test's crash
    detector, sharing the session's Redis, would find them silent and try to crash them."""
    store = RunStore(redis_url)
    yield store
    if CREATED:
        store.redis.zrem(keys.HEARTBEATS, *CREATED)
        store.redis.hdel(keys.HEARTBEAT_RECORDS, *CREATED)
        CREATED.clear()


def _task_run(store: RunStore, beat_age: float | None) -> tuple[str, str, dict[str, object]]:
    """A new task run whose last heartbeat is ``beat_age`` seconds old (None: it has none)."""
    root, trid = str(uuid.uuid4()), str(uuid.uuid4())
    CREATED.append(trid)
    store.task_runs.add_to_dynamic_tree(NewTaskRun(trid, "t", "t", root, root), None)
    if beat_age is not None:
        store.redis.zadd(keys.HEARTBEATS, {trid: now() - beat_age})
    fields = {"state": StateType.RUNNING.value, "attempts": 1, "flow_run_id": root, "root": root}
    return root, trid, fields


def _starts(store: RunStore, trid: str) -> int:
    return int(store.redis.hget(keys.task_run(trid), "starts") or 0)


def test_a_redelivered_message_whose_task_run_heartbeats_is_refused_and_changes_nothing(store: RunStore) -> None:
    root, trid, fields = _task_run(store, beat_age=1.0)
    events_before = store.redis.xlen(keys.EVENTS_STREAM)
    started = store.task_runs.started(root, trid, fields, crash_record={"attempt": 1}, alive_since=now() - WINDOW)
    assert started is not None and started.running_elsewhere and not started.stale
    assert _starts(store, trid) == 0  # not counted: the crash detector still sees the first execution
    assert store.redis.hget(keys.HEARTBEAT_RECORDS, trid) is None  # its crash record untouched
    assert store.redis.xlen(keys.EVENTS_STREAM) == events_before  # no Running event for it


@pytest.mark.parametrize("beat_age", [None, WINDOW + 1.0], ids=["no-heartbeat", "silent-heartbeat"])
def test_a_redelivered_message_starts_when_no_execution_of_it_heartbeats(
    store: RunStore, beat_age: float | None
) -> None:
    root, trid, fields = _task_run(store, beat_age)
    started = store.task_runs.started(root, trid, fields, crash_record={"attempt": 1}, alive_since=now() - WINDOW)
    assert started is not None and not started.running_elsewhere and started.start == 1
    assert _starts(store, trid) == 1


def test_a_first_delivery_starts_whatever_the_heartbeat_says(store: RunStore) -> None:
    """No redelivery flag, no heartbeat read: a retry or a resumed attempt is never refused."""
    root, trid, fields = _task_run(store, beat_age=0.0)
    started = store.task_runs.started(root, trid, fields, crash_record={"attempt": 1})
    assert started is not None and not started.running_elsewhere and started.start == 1


def test_final_and_stale_answers_come_before_the_heartbeat(store: RunStore) -> None:
    """A redelivery of a task run that is final, or of an attempt made stale, is answered as before
    (the executor finishes what a crash left, or stops) even while a heartbeat is fresh."""
    root, trid, fields = _task_run(store, beat_age=0.0)
    store.task_runs.finished(root, trid, StateType.COMPLETED, {}, '"v"')
    assert store.task_runs.started(root, trid, fields, alive_since=now() - WINDOW) is None
    root, trid, fields = _task_run(store, beat_age=0.0)
    store.task_runs.supersede(trid, 2)
    started = store.task_runs.started(root, trid, fields, alive_since=now() - WINDOW)
    assert started is not None and started.stale
