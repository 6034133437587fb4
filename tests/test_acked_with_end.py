"""A user task's message acknowledged by its end script, in the same step as its end, and the worker's
main process forgetting it with no second acknowledgement (``CeleryAttempt._acknowledgement``,
``OrchestratorRequest``); every other message acknowledged by the main process as before."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import kombu
import pytest
import redis
from celery import Celery
from celery.worker.request import create_request_cls
from kombu.transport import redis as kombu_redis

from orchestrator.runstate.store import get_store
from orchestrator.states import StateType
from orchestrator.transport.messaging import acknowledgement
from tests import flows
from tests.conftest import TEST_BROKER
from tests.redis_monitor import monitoring
from tests.test_envelope import app_for
from workers import redis_transport
from workers.celery_tasks import ACKED_WITH_END, OrchestratorRequest, OrchestratorTask

pytestmark = pytest.mark.skipif(TEST_BROKER != "redis", reason="only a Redis broker shared with the run store")


class SurvivingTransport(kombu_redis.Transport):  # type: ignore[misc]
    """kombu's Redis transport with the worker's channel, for this connection only."""

    Channel = redis_transport.Channel


def never_run(self: Any, **_: Any) -> None:
    """No worker runs this task: only its messages are taken."""


def test_the_acknowledgement_is_the_brokers_unacked_entries_when_it_is_the_run_stores_redis(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = get_store().server()
    assert server is not None
    app = app_for(redis_url, monkeypatch)
    assert acknowledgement(app, "tag-1", server) == [("zrem", "unacked_index", "tag-1"), ("hdel", "unacked", "tag-1")]
    assert acknowledgement(app, None, server) == []  # no delivery tag: the main process acknowledges
    other_database = (*server[:2], server[2] + 1, server[3])
    assert acknowledgement(app, "tag-1", other_database) == []
    renamed = app_for(redis_url, monkeypatch)
    renamed.conf.broker_transport_options = {"unacked_key": "held", "unacked_index_key": "held_index"}
    assert acknowledgement(renamed, "t", server) == [("zrem", "held_index", "t"), ("hdel", "held", "t")]
    prefixed = app_for(redis_url, monkeypatch)
    prefixed.conf.broker_transport_options = {"global_keyprefix": "tenant:"}
    assert acknowledgement(prefixed, "t", server) == []  # its keys are not where a script would write


@pytest.fixture
def taken(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Celery, Any, list[Any]]]:
    """An app, a task of ours, and two of its messages taken from a real Redis queue through the
    worker's channel (held in kombu's unacked index and record, as a worker holds them)."""
    app = app_for(redis_url, monkeypatch)
    task = app.task(name=f"tests.acked.{uuid.uuid4()}", bind=True, ignore_result=True, base=OrchestratorTask)(never_run)
    task.acks_late = True
    queue = f"acked-{uuid.uuid4()}"
    for _ in range(2):
        task.apply_async(queue=queue)
    with kombu.Connection(redis_url, transport=SurvivingTransport) as connection:
        channel = connection.default_channel
        messages = [channel.basic_get(queue, no_ack=False) for _ in range(2)]
        try:
            yield app, task, messages
        finally:
            client = redis.Redis.from_url(redis_url)
            for message in messages:
                client.zrem("unacked_index", message.delivery_tag)
                client.hdel("unacked", message.delivery_tag)
            client.delete(queue)


def test_the_main_process_forgets_a_message_its_end_acknowledged_and_acknowledges_any_other(
    redis_url: str, taken: tuple[Celery, Any, list[Any]]
) -> None:
    app, task, (ended, plain) = taken
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert client.hexists("unacked", ended.delivery_tag) and client.hexists("unacked", plain.delivery_tag)
    events: list[tuple[str, dict[str, Any]]] = []
    eventer = SimpleNamespace(enabled=True, send=lambda kind, **fields: events.append((kind, fields)))
    # the request class Celery's strategy builds for the task, with an on_success of its own
    request_class = create_request_cls(OrchestratorRequest, task, SimpleNamespace(apply_async=None), "w@h", eventer)
    requests = [
        request_class(message, on_ack=message.ack_log_error, app=app, hostname="w@h", eventer=eventer, task=task)
        for message in (ended, plain)
    ]

    requests[0].on_success((0, repr(ACKED_WITH_END), 0.01))  # the pool's text of what the task returned
    assert requests[0].acknowledged and ended.acknowledged
    qos = ended.channel.qos
    qos._flush()
    assert ended.delivery_tag not in qos._delivered  # no longer counted against the prefetch
    # the main process did not acknowledge in Redis (the end script does, which did not run here)
    assert client.hexists("unacked", ended.delivery_tag)
    assert client.zscore("unacked_index", ended.delivery_tag) is not None

    requests[1].on_success((0, "None", 0.01))  # an ending that did not acknowledge: as Celery does
    assert requests[1].acknowledged
    assert not client.hexists("unacked", plain.delivery_tag)
    assert client.zscore("unacked_index", plain.delivery_tag) is None
    # Flower sees what it always saw of an orchestrator task's return
    assert [(kind, fields["result"]) for kind, fields in events] == [("task-succeeded", "None")] * 2


def _monitored(redis_url: str, run_flows: Any) -> list[dict[str, Any]]:
    """Redis's MONITOR lines while ``run_flows()`` runs, and until every task message it pushed is
    acknowledged (the main process acknowledges after a flow run's end may be known)."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with monitoring(redis_url) as lines:
        run_flows()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(client.hexists("unacked", tag) for tag in _messages(list(lines))):
            time.sleep(0.05)
    return lines


def _messages(lines: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Delivery tag -> (flow run id, task run label's task name) of each orchestrator task message pushed."""
    found = {}
    for line in lines:
        parts = line["command"].split(" ", 2)
        if parts[0].upper() != "LPUSH" or len(parts) < 3 or not parts[2].startswith("{"):
            continue  # not a message (a wake-up, a list of the run store's)
        message = json.loads(parts[2])
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        if isinstance(kwargs, dict) and isinstance(kwargs.get("run"), dict):
            found[message["properties"]["delivery_tag"]] = (kwargs["run"]["flow_run_id"], message["headers"]["task"])
    return found


def _acknowledgers(lines: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Delivery tag -> who took it out of the unacked index, each time ('lua' or 'tcp')."""
    who: dict[str, list[str]] = {}
    for line in lines:
        parts = line["command"].split(" ")
        if parts[0].upper() == "ZREM" and parts[1] == "unacked_index":
            for tag in parts[2:]:
                who.setdefault(tag, []).append(line.get("client_type") or "")
    return who


@pytest.mark.usefixtures("fleet")
def test_a_completed_task_runs_message_is_acknowledged_by_its_end_script_alone(redis_url: str) -> None:
    """On the fleet: the tasks of a chain and of a group of independent tasks, and a chord's body,
    are acknowledged once, inside their end script, and never by the worker's main process. A
    chord's members (Celery counts their part after they return), a failed task and the flow's
    start are acknowledged by the main process, as Celery does. Nothing stays unacknowledged."""
    runs: list[Any] = []

    def run_flows() -> None:
        runs.append(flows.chain_flow.delay(x=3))
        runs.append(flows.many_returned_flow.delay(n=4, fail_at=1))
        runs.append(flows.fan_flow.delay(n=3))
        assert runs[0].result(timeout=60) == 10
        assert runs[1].wait(timeout=60) is StateType.FAILED
        assert runs[2].result(timeout=60) == 6

    lines = _monitored(redis_url, run_flows)
    messages = _messages(lines)
    acks = _acknowledgers(lines)
    run_index = {run.id: index for index, run in enumerate(runs)}
    by_end, by_main = [], []
    for tag, (run_id, task_name) in messages.items():
        assert len(acks.get(tag, [])) == 1, (task_name, acks.get(tag))  # acknowledged, once
        who = by_end if acks[tag] == ["lua"] else by_main
        who.append((run_index[run_id], task_name.rsplit(".", 1)[-1]))
    chain, group, body = [(0, "double"), (0, "inc"), (0, "inc")], [(1, "double")] * 3, [(2, "total")]
    assert sorted(by_end) == chain + group + body
    assert sorted(by_main) == [(1, "explode"), (2, "double"), (2, "double"), (2, "double")]
    client = redis.Redis.from_url(redis_url)
    assert not [tag for tag in messages if client.hexists("unacked", tag)]


@pytest.mark.usefixtures("fleet")
def test_a_pool_process_killed_after_its_tasks_end_never_has_that_message_delivered_again(redis_url: str) -> None:
    """The task's on_completion hook kills its pool process: its end (and the next link's send) and
    its acknowledgement were one step, so Celery's requeue of a lost process's message finds nothing
    to give back. The task ran once and the run completes; before, its message went back to the
    queue and a second delivery found the task run final."""
    marker = uuid.uuid4().hex
    runs: list[Any] = []

    def run_flow() -> None:
        runs.append(flows.dies_after_end_flow.delay(marker=marker))
        assert runs[0].result(timeout=60) == 2

    lines = _monitored(redis_url, run_flow)
    client = redis.Redis.from_url(redis_url)
    assert int(client.get(f"test:count:{marker}") or 0) == 1
    died = [tag for tag, (run, name) in _messages(lines).items() if run == runs[0].id and "ends_then_dies" in name]
    assert len(died) == 1
    pushes = [x for x in lines if x["command"].split(" ")[0] in ("LPUSH", "RPUSH") and died[0] in x["command"]]
    assert len(pushes) == 1  # pushed once, by the client: never given back
    assert _acknowledgers(lines).get(died[0]) == ["lua"]
    client.delete(f"test:count:{marker}")
