"""A chain's next link is captured while its task run's start is on its way, before the function runs
(``workers/executor.py``'s ``chained_ahead``), and sent only with a Completed end.

In process, on the session's real Redis, through Celery's own worker path: the first link's
message is a real one (sent with its chain, as a chain sends it, and captured), and a Celery
:class:`~celery.worker.request.Request` made from it runs it (``Request.execute``: Celery's tracer,
which sends the next link after the task returns unless the end sent it). No worker process:
what lands on the queue is read back.
"""

from __future__ import annotations

import base64
import copy
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.request import Request

from orchestrator import task
from orchestrator.config.settings import Settings
from orchestrator.planning.compiler import make_signature
from orchestrator.runstate import keys
from orchestrator.runstate.records import NewTaskRun
from orchestrator.runstate.store import RunStore, get_store
from orchestrator.states import StateType
from orchestrator.transport.celery_app import make_celery_app
from orchestrator.transport.messaging import BrokerWrite, captured_sends
from tests.conftest import TEST_BROKER
from tests.test_envelope import normalised
from workers import celery_tasks, executor
from workers.celery_tasks import CeleryAttempt, register_user_task

pytestmark = pytest.mark.skipif(TEST_BROKER != "redis", reason="captures need the run store's Redis as broker")


EVENTS: list[str] = []  # in order: "captured" (the next link), "ran" (the function)


@task(name="tests.chain_ahead.step")
def step(i: int) -> int:
    EVENTS.append("ran")
    return i + 1


@task(name="tests.chain_ahead.breaks")
def breaks(i: int) -> int:
    raise ValueError(f"link {i} breaks")


@task(name="tests.chain_ahead.retries", retries=1, retry_delay_seconds=0)
def retries(i: int) -> int:
    raise ValueError(f"link {i} breaks this time")


@pytest.fixture
def app(redis_url: str) -> Celery:
    """A worker's app (Celery's own message builder) with this module's tasks registered."""
    app = make_celery_app("chain-ahead-test", Settings(redis_url=redis_url))
    for one in (step, breaks, retries):
        register_user_task(app, one)
    return app


@pytest.fixture
def queue(redis_url: str) -> Iterator[str]:
    name = f"chain-ahead-{uuid.uuid4().hex[:8]}"
    yield name
    redis.Redis.from_url(redis_url).delete(name)


@pytest.fixture
def captures(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[list[BrokerWrite]]]:
    """What ``chained`` gave each time it was asked (``early``), and what it gives when asked again at
    the end, after the function ran, as the executor asked before (``late``)."""
    EVENTS.clear()
    seen: dict[str, list[list[BrokerWrite]]] = {"early": [], "late": []}
    asked = CeleryAttempt.chained

    def chained(self: CeleryAttempt) -> list[BrokerWrite]:
        writes = asked(self)
        EVENTS.append("captured")
        seen["early"].append(writes)
        return writes

    ended = executor.end_completed

    def end_completed(store: RunStore, run: dict[str, Any], attempt: Any, *args: Any, **kwargs: Any) -> Any:
        seen["late"].append(asked(attempt))
        return ended(store, run, attempt, *args, **kwargs)

    monkeypatch.setattr(CeleryAttempt, "chained", chained)
    monkeypatch.setattr(executor, "end_completed", end_completed)
    return seen


def _run(store: RunStore, name: str) -> dict[str, Any]:
    """A new task run of a tree of two (its end does not end the tree)."""
    root, trid = str(uuid.uuid4()), str(uuid.uuid4())
    store.task_runs.add_to_dynamic_tree(NewTaskRun(trid, "link-0", name, root, root), None)
    store.redis.incr(keys.remaining(root))
    return {"root": root, "flow_run_id": root, "task_run_id": trid, "label": "link-0"}


class Chain:
    """A chain of two links whose first one's message was sent as Celery sends a chain's first task."""

    def __init__(self, app: Celery, queue: str, first_task: str) -> None:
        store = get_store()
        self.store = store
        self.run = _run(store, first_task)
        nxt = {"run": {"flow_run_id": self.run["flow_run_id"], "label": "link-1"}, "inputs": {"i": 2}}
        self.next = make_signature(step.name, nxt, queue=queue, app=app)
        self.next.freeze()
        first = make_signature(
            first_task, {"run": self.run, "inputs": {"i": 1}}, queue=queue, task_id=self.run["task_run_id"], app=app
        )
        self.chain = [dict(self.next)]  # Celery keeps a chain's rest reversed

        def send(producer: Any) -> None:
            first.apply_async(chain=self.chain, producer=producer)

        writes = captured_sends(app, send, store.server(), envelope=False)
        assert writes is not None and writes[0][0] == "lpush"
        self.message = json.loads(writes[0][2])
        self.app, self.queue = app, queue

    def execute(self) -> None:
        """Run the first link as a worker does (Celery's request and tracer, no pool)."""
        with self.app.connection_for_write() as connection:
            channel = connection.default_channel
            message = channel.Message(self.message, channel=channel)
            name = self.message["headers"]["task"]
            Request(message, app=self.app, task=self.app.tasks[name], hostname="chain-ahead@test").execute()

    def queued(self) -> list[dict[str, Any]]:
        """The messages on the queue, oldest first."""
        return [json.loads(text) for text in reversed(self.store.redis.lrange(self.queue, 0, -1))]

    def state(self) -> StateType | None:
        trid = self.run["task_run_id"]
        return self.store.task_runs.final_states(self.run["root"], [trid])[trid]


def test_the_next_link_captured_ahead_is_the_one_captured_at_the_end_and_goes_out_once(
    app: Celery, queue: str, captures: dict[str, list[list[BrokerWrite]]]
) -> None:
    chain = Chain(app, queue, step.name)
    chain.execute()
    assert chain.state() is StateType.COMPLETED
    [early], [late] = captures["early"], captures["late"]
    assert EVENTS == ["captured", "ran"]  # before the function, while the start was on its way
    # the next link's send, then the acknowledgement of the message that ran this link, by its tag
    assert [command for command, _, _ in early] == ["lpush", "publish", "zrem", "hdel"]
    tag = chain.message["properties"]["delivery_tag"]
    assert early[2:] == late[2:] == [("zrem", "unacked_index", tag), ("hdel", "unacked", tag)]
    early, late = early[:2], late[:2]
    assert [normalised(w) for w in early] == [normalised(w) for w in late]  # only the tag and clocks differ
    [sent] = chain.queued()  # the end sent it; Celery's tracer did not send it again
    assert sent == json.loads(early[0][2])
    headers = sent["headers"]
    assert headers["id"] == chain.next.id and headers["task"] == step.name
    assert (headers["parent_id"], headers["root_id"]) == (chain.run["task_run_id"], chain.run["task_run_id"])


def test_asking_for_the_next_link_changes_nothing_of_the_request(app: Celery, queue: str) -> None:
    """A retry's message is made from the same request, after the capture: it must find it as it was."""
    chain = Chain(app, queue, step.name)
    celery_task = app.tasks[step.name]
    request = {
        "id": chain.run["task_run_id"],
        "root_id": chain.run["task_run_id"],
        "chain": chain.chain,
        "delivery_info": {"priority": 3, "routing_key": queue},
        "kwargs": {"run": chain.run, "inputs": {"i": 1}},
    }
    before = copy.deepcopy(request)
    celery_task.push_request(**request)
    try:
        first, second = CeleryAttempt(celery_task).chained(), CeleryAttempt(celery_task).chained()
        assert first and [normalised(w) for w in first] == [normalised(w) for w in second]
        assert {k: celery_task.request.get(k) for k in before} == before
    finally:
        celery_task.pop_request()


def test_a_link_that_fails_does_not_send_the_next(
    app: Celery, queue: str, captures: dict[str, list[list[BrokerWrite]]]
) -> None:
    chain = Chain(app, queue, breaks.name)
    chain.execute()
    assert chain.state() is StateType.FAILED
    assert len(captures["early"]) == 1 and captures["early"][0]  # captured ahead, then dropped unsent
    assert captures["late"] == []
    assert chain.queued() == []


def test_a_link_that_retries_sends_its_next_attempt_not_the_next_link(
    app: Celery, queue: str, captures: dict[str, list[list[BrokerWrite]]]
) -> None:
    chain = Chain(app, queue, retries.name)
    chain.execute()
    assert chain.state() is None  # awaiting its retry
    [again] = chain.queued()
    assert again["headers"]["id"] == chain.run["task_run_id"] and again["headers"]["retries"] == 1
    body = json.loads(base64.b64decode(again["body"]))
    assert [link["options"]["task_id"] for link in body[2]["chain"]] == [chain.next.id]  # the chain goes on after it


@pytest.mark.parametrize("where", ["capture", "chained"])
def test_a_capture_that_raises_is_not_in_the_way(
    app: Celery, queue: str, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Raised by the capture or by ``chained`` itself (``chained_ahead`` catches both):
    the task runs and completes, and Celery's tracer sends the link after it returns, as before."""
    chain = Chain(app, queue, step.name)

    def broken(*_: Any, **__: Any) -> Any:
        raise RuntimeError("no capture today")

    if where == "capture":
        monkeypatch.setattr(celery_tasks.CeleryMessaging, "captured_signatures", broken)
    else:
        monkeypatch.setattr(CeleryAttempt, "chained", broken)
    chain.execute()
    assert chain.state() is StateType.COMPLETED
    [sent] = chain.queued()
    assert sent["headers"]["id"] == chain.next.id


def test_a_time_limit_during_the_capture_ends_the_run_timed_out_without_running_it(
    app: Celery, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The soft time limit is not swallowed as a failed capture: raised again where the function would
    run, the run ends TimedOut, the function never runs and the next link is not sent."""

    def interrupted(*_: Any, **__: Any) -> Any:
        raise SoftTimeLimitExceeded()

    EVENTS.clear()
    chain = Chain(app, queue, step.name)
    monkeypatch.setattr(celery_tasks.CeleryMessaging, "captured_signatures", interrupted)
    chain.execute()
    assert chain.state() is StateType.TIMED_OUT
    assert EVENTS == []
    assert chain.queued() == []
