"""Runs created by name or over HTTP (``send_new_runs``): their start messages go in the records' round trip.

Where the broker is the run store's Redis, the start messages are captured (``captured_starts``)
and pushed in the pipeline that writes the records, after them: they must be the messages kombu
sends for ``send_starts`` (byte for byte but for the random delivery tag), in the same order, and
nothing may go through kombu besides. That a worker runs them is shown end to end by
tests/test_api.py (runs created over HTTP complete) and tests/test_fleet.py (``submit_by_name``).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator, Sequence

import pytest
import redis

from orchestrator.runs.create import captured_starts, send_new_runs
from orchestrator.runstate.records import NewFlowRun
from orchestrator.runstate.store import get_store, now
from orchestrator.states import StateType
from orchestrator.transport.messaging import CeleryMessaging, Start, sender_messaging
from tests.conftest import TEST_BROKER

pytestmark = pytest.mark.skipif(TEST_BROKER != "redis", reason="captures need the run store's Redis as broker")

TAG = re.compile(r'"delivery_tag": "[0-9a-f-]{36}"')


@pytest.fixture
def queue(redis_url: str) -> Iterator[str]:
    name = f"starts-{uuid.uuid4().hex[:8]}"
    yield name
    redis.Redis.from_url(redis_url).delete(name)


def pushed(redis_url: str, queue: str) -> list[str]:
    """The messages in ``queue``, oldest first (LPUSH puts the newest at the head), delivery tags blanked."""
    texts = redis.Redis.from_url(redis_url, decode_responses=True).lrange(queue, 0, -1)
    return [TAG.sub('"delivery_tag": ""', text) for text in reversed(texts)]


def new_run(queue: str) -> NewFlowRun:
    stamp = now()
    return NewFlowRun(
        id=str(uuid.uuid4()),
        flow="some-flow",
        name="a-run",
        name_given=True,
        queue=queue,
        parameters={"x": 1},
        created=stamp,
        scheduled_start=stamp,
    )


class KombuRefused(CeleryMessaging):
    """The API's messaging, whose kombu path fails the test: only the captured path may send."""

    def send_starts(self, starts: Sequence[Start]) -> None:
        raise AssertionError(f"sent through kombu: {starts}")


def test_captured_starts_are_the_messages_send_starts_pushes(redis_url: str, queue: str) -> None:
    messaging = sender_messaging()
    starts = [Start("flow-a", str(uuid.uuid4()), queue), Start("flow-b", str(uuid.uuid4()), queue)]
    messaging.send_starts(starts)  # kombu's own path (it also opens the producer's connection)
    by_kombu = pushed(redis_url, queue)
    redis.Redis.from_url(redis_url).delete(queue)

    writes = captured_starts(messaging, starts, get_store().server())

    assert writes is not None and [w[:2] for w in writes] == [("lpush", queue)] * 2
    assert [TAG.sub('"delivery_tag": ""', w[2]) for w in writes] == by_kombu
    assert pushed(redis_url, queue) == []  # captured, not sent
    assert [json.loads(text)["headers"]["id"] for text in by_kombu] == [f"start-{s.run_id}" for s in starts]


def test_send_new_runs_writes_the_records_then_pushes_the_captured_messages(redis_url: str, queue: str) -> None:
    opened = sender_messaging()
    opened.send_starts([Start("warm-up", str(uuid.uuid4()), queue)])  # a first send opens the connection
    redis.Redis.from_url(redis_url).delete(queue)
    runs = [new_run(queue) for _ in range(3)]

    send_new_runs(runs, KombuRefused(opened.app))

    messages = [json.loads(text) for text in pushed(redis_url, queue)]
    assert [m["headers"]["id"] for m in messages] == [f"start-{run.id}" for run in runs]
    store = get_store()
    for run in runs:
        assert store.flow_runs.read(run.id)["state"] == StateType.PENDING.value


def test_a_messaging_that_cannot_be_captured_sends_through_kombu_after_the_records(redis_url: str, queue: str) -> None:
    sent: list[tuple[Start, str]] = []
    store = get_store()

    class Elsewhere:  # not the Celery seam's messaging (a broker of its own, say): nothing to capture
        def send_starts(self, starts: Sequence[Start]) -> None:
            sent.extend((start, store.flow_runs.read(start.run_id)["state"]) for start in starts)

    runs = [new_run(queue), new_run(queue)]
    assert captured_starts(Elsewhere(), [Start("f", runs[0].id, queue)], store.server()) is None  # type: ignore[arg-type]

    send_new_runs(runs, Elsewhere())  # type: ignore[arg-type]

    assert [(start.run_id, state) for start, state in sent] == [(run.id, StateType.PENDING.value) for run in runs]
    assert pushed(redis_url, queue) == []
