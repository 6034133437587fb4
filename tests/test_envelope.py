"""A captured send written by ``transport.envelope`` is the one kombu would have written, byte for byte.

Each case sends a real Celery message twice through ``captured_sends``: once with kombu's producer
writing the commands (``envelope=False``), once with the envelope producer. Only what is random or
a clock may differ: the message's ``delivery_tag`` and the task-sent event's ``clock`` and
``timestamp``. Cases outside the plain case must be handed to kombu (``passed``), and still come out
the same. That a worker runs such messages is shown by the fleet's tests (tests/test_fleet.py:
every W0-like run and chain there goes out this way).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from celery import Celery, group, signature
from celery.canvas import Signature
from celery.signals import before_task_publish
from kombu import Exchange, Queue

from orchestrator.config.settings import Settings
from orchestrator.planning.compiler import make_signature
from orchestrator.runstate.store import get_store
from orchestrator.transport.celery_app import make_celery_app, tolerate_redis_outages
from orchestrator.transport.envelope import EnvelopeProducer
from orchestrator.transport.messaging import BrokerWrite, captured_sends
from tests import flows
from tests.conftest import TEST_BROKER

pytestmark = pytest.mark.skipif(TEST_BROKER != "redis", reason="captures need the run store's Redis as broker")

NOW = dt.datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=dt.UTC)
TASK = "tests.envelope.unregistered"  # no worker knows it: nothing here is run
TAG = re.compile(r'"delivery_tag": "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"')
CLOCKS = re.compile(r'"(clock|timestamp|local_received)": [0-9.eE+-]+')


def normalised(write: BrokerWrite) -> BrokerWrite:
    """``write`` with its delivery tag (exactly one) and, in an event, its clock and time set to 0."""
    command, key, text = write
    text, tags = TAG.subn('"delivery_tag": ""', text)
    assert tags == 1, text
    if command == "publish":
        body = json.loads(text)["body"]
        event = CLOCKS.sub(r'"\1": 0', base64.b64decode(body).decode())
        text = text.replace(body, base64.b64encode(event.encode()).decode())
    return command, key, text


@pytest.fixture
def server(redis_url: str) -> tuple[Any, ...]:
    return get_store().server()


@pytest.fixture
def queue(redis_url: str) -> Iterator[str]:
    name = f"envelope-{uuid.uuid4().hex[:8]}"
    yield name
    redis.Redis.from_url(redis_url).delete(name, *(f"{name}\x06\x16{step}" for step in (3, 6, 9)))  # priority lists


def app_for(redis_url: str, monkeypatch: pytest.MonkeyPatch, **options: Any) -> Celery:
    """An app like the client's (``send_only``) or a worker's, whose clock stands still: an ETA or
    an expiry made from a countdown is then the same in both sends."""
    app = make_celery_app("envelope-test", Settings(redis_url=redis_url), **options)
    monkeypatch.setattr(app, "now", lambda: NOW)
    return app


@pytest.fixture
def client(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Celery:
    return app_for(redis_url, monkeypatch, send_only=True)


class Compared:
    """Both captures of one send, normalised, and how many messages the envelope built and passed."""

    def __init__(self, kombu: list[BrokerWrite] | None, envelope: list[BrokerWrite] | None, producer: Any) -> None:
        self.kombu = kombu
        self.envelope = envelope
        self.built: int = producer.built
        self.passed: int = producer.passed

    def same(self) -> list[BrokerWrite]:
        assert self.kombu is not None and self.envelope is not None
        kombu, envelope = [normalised(w) for w in self.kombu], [normalised(w) for w in self.envelope]
        assert envelope == kombu
        return envelope


def compare(app: Celery, send: Callable[[Any], None], server: tuple[Any, ...]) -> Compared:
    """Capture ``send`` with kombu's producer first (which declares what it sends to), then with
    the envelope producer."""
    kombu = captured_sends(app, send, server, envelope=False)
    used: list[Any] = []

    def recorded(producer: Any) -> None:
        assert isinstance(producer, EnvelopeProducer)
        used.append(producer)
        send(producer)

    envelope = captured_sends(app, recorded, server)
    return Compared(kombu, envelope, used[0])


def sending(sig: Any, **options: Any) -> Callable[[Any], None]:
    frozen = sig.freeze()  # the same task ids in both sends
    assert frozen is not None

    def send(producer: Any) -> None:
        sig.apply_async(producer=producer, **options)

    return send


def message(write: BrokerWrite) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(write[2])
    return data


def test_one_task_and_its_event_come_out_as_kombu_writes_them(
    client: Celery, queue: str, server: tuple[Any, ...]
) -> None:
    kwargs = {"run": {"flow_run_id": str(uuid.uuid4()), "label": "noop-0"}, "inputs": {"text": "é ✓ \x00 \U0001f600"}}
    sig = make_signature(TASK, kwargs, queue=queue, app=client)
    compared = compare(client, sending(sig, ignore_result=True), server)
    writes = compared.same()
    assert [(command, key) for command, key, _ in writes] == [("lpush", queue), ("publish", "/0.celeryev/task.sent")]
    assert (compared.built, compared.passed) == (2, 0)
    sent = message(writes[0])
    assert json.loads(base64.b64decode(sent["body"]))[1] == kwargs  # the NUL and the emoji travel as they are
    assert sent["properties"]["delivery_info"] == {"exchange": "", "routing_key": queue}


def test_a_group_comes_out_in_order(client: Celery, queue: str, server: tuple[Any, ...]) -> None:
    tasks = [make_signature(TASK, {"i": i}, queue=queue, app=client) for i in range(4)]
    compared = compare(client, sending(group(tasks, app=client), ignore_result=True), server)
    writes = compared.same()
    assert [command for command, _, _ in writes] == ["lpush", "publish"] * 4
    assert (compared.built, compared.passed) == (8, 0)
    assert [json.loads(base64.b64decode(message(w)["body"]))[1]["i"] for w in writes[::2]] == [0, 1, 2, 3]


def test_options_celery_puts_in_the_message_come_out_the_same(
    client: Celery, queue: str, server: tuple[Any, ...]
) -> None:
    """Countdown, ETA, expiry (seconds and a date), time limits, extra headers, root and parent ids."""
    cases: list[dict[str, Any]] = [
        {"countdown": 30},
        {"eta": NOW + dt.timedelta(minutes=5)},
        {"expires": 120},
        {"expires": NOW + dt.timedelta(hours=1), "countdown": 3},
        {"time_limit": 60, "soft_time_limit": 50},
        {"headers": {"tenant": "Zoë", "n": 3}},
        {"root_id": "root-1", "parent_id": "parent-1", "group_id": "g-1", "group_index": 2},
        {"shadow": "shown-as", "retries": 2},
    ]
    for options in cases:
        sig = make_signature(TASK, {"x": 1}, queue=queue, app=client)
        compared = compare(client, sending(sig, **options), server)
        writes = compared.same()
        assert (compared.built, compared.passed) == (2, 0), options
        properties = message(writes[0])["properties"]
        if "expires" in options:
            assert "expiration" in properties  # kombu's per-message TTL, in milliseconds
    eta = compare(client, sending(make_signature(TASK, {}, queue=queue, app=client), countdown=30), server).same()
    assert message(eta[0])["headers"]["eta"] == (NOW + dt.timedelta(seconds=30)).isoformat()


def test_a_chain_link_as_a_worker_sends_it_comes_out_the_same(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, queue: str, server: tuple[Any, ...]
) -> None:
    """The next link of a chain, sent with the arguments ``workers/celery_tasks.py``'s ``chained``
    gives it, from a worker-like app (Celery's own message builder, a publish retry policy)."""
    app = app_for(redis_url, monkeypatch)
    tolerate_redis_outages(app, 5)
    links = [make_signature(TASK, {"i": i}, queue=queue, app=app) for i in range(3)]
    for link in links:
        link.freeze()
    chain = [dict(link) for link in reversed(links[1:])]  # Celery keeps a chain's rest reversed
    following = signature(chain[-1], app=app)
    assert type(following) is Signature

    def send(producer: Any) -> None:
        following.apply_async(
            (None,), chain=chain[:-1], parent_id="upstream", root_id="root", priority=None, producer=producer
        )

    compared = compare(app, send, server)
    writes = compared.same()
    assert (compared.built, compared.passed) == (2, 0)
    headers = message(writes[0])["headers"]
    assert (headers["parent_id"], headers["root_id"]) == ("upstream", "root")
    body = json.loads(base64.b64decode(message(writes[0])["body"]))
    assert [link["kwargs"] for link in body[2]["chain"]] == [{"i": 2}]


def test_without_task_sent_events_only_the_push_comes_out(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, queue: str, server: tuple[Any, ...]
) -> None:
    app = app_for(redis_url, monkeypatch, send_only=True, sent_events=False)
    compared = compare(app, sending(make_signature(TASK, {"x": 1}, queue=queue, app=app)), server)
    assert [command for command, _, _ in compared.same()] == ["lpush"]
    assert (compared.built, compared.passed) == (1, 0)


def test_a_signal_receiver_still_runs_and_what_it_changes_is_sent(
    client: Celery, queue: str, server: tuple[Any, ...]
) -> None:
    """Celery sends ``before_task_publish`` around whichever producer it has: a receiver's header
    is in the envelope's message too."""
    seen: list[str] = []

    def stamp(sender: str | None = None, headers: dict[str, Any] | None = None, **_: Any) -> None:
        seen.append(str(sender))
        if headers is not None:
            headers["stamped-by"] = "receiver"

    before_task_publish.connect(stamp, weak=False)
    try:
        compared = compare(client, sending(make_signature(TASK, {}, queue=queue, app=client)), server)
    finally:
        before_task_publish.disconnect(stamp)
    writes = compared.same()
    assert seen == [TASK, TASK]
    assert message(writes[0])["headers"]["stamped-by"] == "receiver"
    assert (compared.built, compared.passed) == (2, 0)


def test_what_is_not_the_plain_case_is_handed_to_kombu(client: Celery, queue: str, server: tuple[Any, ...]) -> None:
    """A priority (kombu's priority list), compression, another serializer: kombu writes the task's
    message; the event, plain, is still built here. The result is the same either way."""
    for options in [{"priority": 5}, {"compression": "zlib"}, {"serializer": "pickle"}]:
        compared = compare(client, sending(make_signature(TASK, {"x": 1}, queue=queue, app=client), **options), server)
        writes = compared.same()
        assert (compared.built, compared.passed) == (1, 1), options
        command, key, _ = writes[0]
        assert command == "lpush" and (key == queue) is ("priority" not in options), key


def test_a_queue_first_sent_to_is_declared_by_kombu_then_built_here(
    client: Celery, queue: str, server: tuple[Any, ...]
) -> None:
    """kombu declares a queue on its first send (a Redis write of its own): the envelope leaves an
    undeclared queue to it, and builds the messages that follow."""
    first, second = (make_signature(TASK, {"x": i}, queue=queue, app=client) for i in range(2))
    used: list[Any] = []

    def recorded(sig: Signature) -> Callable[[Any], None]:
        def send(producer: Any) -> None:
            used.append(producer)
            sig.apply_async(producer=producer)

        return send

    assert captured_sends(client, recorded(first), server) is not None
    assert captured_sends(client, recorded(second), server) is not None
    assert [(p.built, p.passed) for p in used] == [(1, 1), (2, 0)]  # the event's exchange was declared already


def test_a_queue_through_a_topic_exchange_is_handed_to_kombu(
    client: Celery, server: tuple[Any, ...], redis_url: str
) -> None:
    """A queue bound through an exchange of its own: kombu looks its bindings up (here: the queue)."""
    name = f"envelope-topic-{uuid.uuid4().hex[:8]}"
    client.conf.task_queues = [Queue(name, Exchange(f"{name}-x", type="topic"), routing_key="orders.#")]
    try:
        compared = compare(client, sending(make_signature(TASK, {"x": 1}, queue=name, app=client)), server)
        writes = compared.same()
        assert writes[0][:2] == ("lpush", name)
        assert (compared.built, compared.passed) == (1, 1)
    finally:
        redis.Redis.from_url(redis_url).delete(name)


def test_a_queue_with_an_expiry_is_not_captured(client: Celery, server: tuple[Any, ...]) -> None:
    """kombu adds a PEXPIRE per priority list: no capture (None), with or without the envelope."""
    name = f"envelope-expiring-{uuid.uuid4().hex[:8]}"
    client.conf.task_queues = [Queue(name, expires=60)]
    sig = make_signature(TASK, {"x": 1}, queue=name, app=client)
    for _ in range(2):
        compared = compare(client, sending(sig), server)
        assert compared.kombu is None and compared.envelope is None
        assert compared.passed == 1


def test_a_prefixed_broker_is_not_captured(redis_url: str, server: tuple[Any, ...]) -> None:
    app = make_celery_app("envelope-prefixed", Settings(redis_url=redis_url), send_only=True)
    app.conf.broker_transport_options = dict(app.conf.broker_transport_options, global_keyprefix="other:")
    assert captured_sends(app, sending(make_signature(TASK, {}, queue="default", app=app)), server) is None


@pytest.mark.usefixtures("fleet")
def test_a_worker_runs_what_the_envelope_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end: a group's messages captured by ``.delay()`` are built here (none handed to
    kombu once the queue is declared) and the fleet's worker runs them."""
    producers: list[EnvelopeProducer] = []
    publish = EnvelopeProducer.publish

    def spied(self: EnvelopeProducer, *args: Any, **kwargs: Any) -> None:
        if self not in producers:
            producers.append(self)
        publish(self, *args, **kwargs)

    monkeypatch.setattr(EnvelopeProducer, "publish", spied)
    assert flows.many_returned_flow.delay(n=1).result(timeout=30) == [0]  # connects and declares
    producers.clear()
    assert flows.many_returned_flow.delay(n=4).result(timeout=30) == [0, 2, 4, 6]
    assert [(p.built, p.passed) for p in producers] == [(8, 0)]  # four messages, four task-sent events
