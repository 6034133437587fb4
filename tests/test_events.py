"""What Flower sees (Celery task events) and what the orchestrator records, attempt by attempt."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator import StateType
from orchestrator.runstate import keys
from orchestrator.runstate.store import get_store
from tests import flows
from tests.event_receiver import receiving

pytestmark = pytest.mark.usefixtures("fleet")


@pytest.fixture
def celery_events(redis_url: str) -> Iterator[dict[str, list[tuple[float, str]]]]:
    """Celery task events by task id (time stamp, type), received as Flower receives them."""
    seen: dict[str, list[tuple[float, str]]] = defaultdict(list)
    with receiving(redis_url, {"*": lambda e: seen[e.get("uuid", "")].append((e.get("timestamp", 0.0), e["type"]))}):
        yield seen


def wait_for_events(seen: dict[str, list[tuple[float, str]]], task_id: str, final: str) -> list[str]:
    """The task's event types in time-stamp order (as Flower orders them: events sent by
    different processes can arrive out of order), once ``final`` has arrived."""
    deadline = time.monotonic() + 10
    while final not in [kind for _, kind in seen.get(task_id, [])] and time.monotonic() < deadline:
        time.sleep(0.1)
    return [kind for _, kind in sorted(seen.get(task_id, []))]


def test_flower_sees_failure_retry_and_success_for_each_attempt(
    celery_events: dict[str, list[tuple[float, str]]],
) -> None:
    run = flows.trigger_flow.delay()
    run.wait(timeout=30)
    rows = {r["label"]: r for r in run.task_runs()}
    assert "task-failed" in wait_for_events(celery_events, rows["explode-0"]["id"], "task-failed")
    assert "task-succeeded" in wait_for_events(celery_events, rows["inc-0"]["id"], "task-succeeded")

    retried = flows.retry_flow.delay()
    assert retried.result(timeout=30) == 3
    (row,) = retried.task_runs()
    events = wait_for_events(celery_events, row["id"], "task-succeeded")
    assert events.count("task-retried") == 2 and events[-1] == "task-succeeded"


def test_each_attempt_is_recorded_in_the_state_events() -> None:
    run = flows.retry_flow.delay()
    assert run.result(timeout=30) == 3
    (row,) = run.task_runs()
    history = []
    for _, fields in get_store().redis.xrange(keys.EVENTS_STREAM):
        event = json.loads(fields["event"])
        if event["id"] == row["id"]:
            history.append(event["state"])
    assert history == [
        StateType.RUNNING.value,
        StateType.AWAITING_RETRY.value,
        StateType.RETRYING.value,
        StateType.AWAITING_RETRY.value,
        StateType.RETRYING.value,
        StateType.COMPLETED.value,
    ]


def quiet_event_connections(redis: Any) -> list[str]:
    """Addresses of the no-reply connections the fleet publishes its events on
    (``workers/quiet_events.py``): the ones whose last command was an event's PUBLISH."""
    return [c["addr"] for c in redis.client_list() if c.get("cmd") == "publish"]


def test_the_worker_publishes_its_events_without_waiting_and_recovers_a_lost_connection(
    celery_events: dict[str, list[tuple[float, str]]],
) -> None:
    """The worker's event publishes go out on connections told not to reply (nothing waits for a
    subscriber count); killing them loses no later event: the next publish goes the ordinary way
    and a new quiet connection follows."""
    redis = get_store().redis

    def reply_offs() -> int:
        return int(redis.info("commandstats").get("cmdstat_client|reply", {}).get("calls", 0))

    first = flows.chain_flow.delay(x=1)
    assert first.result(timeout=30) == 6
    for row in first.task_runs():
        assert wait_for_events(celery_events, row["id"], "task-succeeded")[-1] == "task-succeeded"
    made = reply_offs()
    assert made > 0  # the worker's processes told Redis not to reply on their event connections
    quiet = quiet_event_connections(redis)
    assert quiet, redis.client_list()

    for address in quiet:
        redis.client_kill(address)
    for attempt in range(3):  # each run's events need a connection: the first after the kill rebuilds it
        run = flows.chain_flow.delay(x=attempt)
        assert run.result(timeout=30) == 2 * (attempt + 2)
        for row in run.task_runs():  # as a set: the sender's and the worker's clocks order sent and received
            assert {"task-received", "task-started", "task-succeeded"} <= set(
                wait_for_events(celery_events, row["id"], "task-succeeded")
            )
    assert reply_offs() > made  # a new quiet connection took over
