"""A message written from its shape's template (``transport.message_templates``) is Celery's, byte for byte.

Each case lets Celery capture two messages of one shape (the template is learned from the first
and checked against the second), then captures a third both ways: from the template and from
Celery. Only the random delivery tags and the task-sent event's clock and time may differ. A shape
whose messages differ in more than their own fields, or a send somebody watches (a signal
receiver), stays Celery's. That a worker runs templated messages is shown at the end, and by
every W0-like run of the fleet's tests, which go out this way.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from typing import Any

import pytest
import redis
from celery import Celery, group, signature
from celery.signals import before_task_publish

from orchestrator.planning.compiler import make_signature
from orchestrator.runs.create import submit_by_name
from orchestrator.runstate.store import get_store
from orchestrator.transport.celery_app import client_app, tolerate_redis_outages
from orchestrator.transport.message_templates import MessageTemplates, templates_of
from orchestrator.transport.messaging import CANVAS_OPTIONS, BrokerWrite, CeleryMessaging, captured_sends
from tests import flows
from tests.conftest import TEST_BROKER
from tests.test_envelope import app_for, message, normalised

pytestmark = pytest.mark.skipif(TEST_BROKER != "redis", reason="templates are for the run store's Redis as broker")

TASK = "tests.templates.unregistered"  # no worker knows it: nothing here is run


@pytest.fixture
def server(redis_url: str) -> tuple[Any, ...]:
    return get_store().server()


@pytest.fixture
def client(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Celery:
    """A client-like app (its own templates: nothing learned elsewhere leaks in), connected."""
    app = app_for(redis_url, monkeypatch, send_only=True)
    connect(app, redis_url)
    return app


def connect(app: Celery, redis_url: str) -> None:
    """Open ``app``'s producer connection with one real send (a capture needs one), then drop that message."""
    CeleryMessaging(app).send_canvas(make_signature(TASK, {}, queue="templates-warm-up", app=app))
    redis.Redis.from_url(redis_url).delete("templates-warm-up")


def compiled(app: Celery, kwargs: Any, queue: str) -> Any:
    """A task's signature as the compiler makes it: its id given, its results ignored."""
    return make_signature(TASK, kwargs, queue=queue, task_id=str(uuid.uuid4()), app=app)


def by_celery(app: Celery, sig: Any, server: tuple[Any, ...], **options: Any) -> list[BrokerWrite]:
    def send(producer: Any) -> None:
        sig.apply_async((None,), **options, producer=producer)  # None: what an upstream returned (ignored)

    writes = captured_sends(app, send, server)
    assert writes is not None
    return writes


def taught(app: Celery, templates: MessageTemplates, server: tuple[Any, ...], kwargs: Any, **options: Any) -> None:
    """Two messages of the shape ``kwargs`` has, captured by Celery and shown to ``templates``."""
    for _ in range(2):
        sig = compiled(app, kwargs, "templates-q")
        assert templates.writes(sig, options, server) is None  # not trusted yet
        templates.learn(sig, options, by_celery(app, sig, server, **options), server)


def both_ways(
    app: Celery, templates: MessageTemplates, server: tuple[Any, ...], kwargs: Any, **options: Any
) -> tuple[list[BrokerWrite], list[BrokerWrite]]:
    sig = compiled(app, kwargs, "templates-q")
    direct = templates.writes(sig, options, server)
    assert direct is not None, "the shape should be trusted by now"
    return [normalised(w) for w in direct], [normalised(w) for w in by_celery(app, sig, server, **options)]


def run_kwargs(**inputs: Any) -> dict[str, Any]:
    return {"run": {"flow_run_id": str(uuid.uuid4()), "label": "t-0"}, "inputs": inputs}


def test_a_compiled_task_and_its_event_come_out_as_celery_writes_them(client: Celery, server: tuple[Any, ...]) -> None:
    templates = MessageTemplates(client)
    taught(client, templates, server, run_kwargs(x=1), **CANVAS_OPTIONS)
    cases = [
        run_kwargs(x=2),
        run_kwargs(x="é ✓ \x00 \U0001f600", y=[1, 2.5, None, True], z={"nested": {"deep": "Zoë"}}),
        run_kwargs(x="long " * 500),  # the kwargsrepr is cut at Celery's length
        run_kwargs(),
    ]
    for kwargs in cases:
        direct, celery = both_ways(client, templates, server, kwargs, **CANVAS_OPTIONS)
        assert direct == celery
        assert [(command, key) for command, key, _ in direct] == [
            ("lpush", "templates-q"),
            ("publish", "/0.celeryev/task.sent"),
        ]
    assert templates.direct == len(cases)
    sent = message(direct[0])
    elsewhere: list[Any] = []  # another thread: Celery's reply_to is that thread's own
    thread = threading.Thread(
        target=lambda: elsewhere.append(both_ways(client, templates, server, run_kwargs(x=3), **CANVAS_OPTIONS))
    )
    thread.start()
    thread.join()
    assert elsewhere[0][0] == elsewhere[0][1]
    assert message(elsewhere[0][0][0])["properties"]["reply_to"] != sent["properties"]["reply_to"]
    assert sent["headers"]["ignore_result"] is True and sent["headers"]["root_id"] == sent["headers"]["id"]


def test_a_start_message_without_an_event_comes_out_the_same(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, server: tuple[Any, ...]
) -> None:
    """The API's app sends no task-sent event: a start message is its LPUSH alone."""
    app = app_for(redis_url, monkeypatch, send_only=True, sent_events=False)
    connect(app, redis_url)
    messaging = CeleryMessaging(app)
    templates = templates_of(app)
    starts = [messaging.start_signature("some-flow", str(uuid.uuid4()), "templates-q", dynamic=False) for _ in range(4)]
    writes = messaging.captured_signatures(starts, {}, server)
    assert writes is not None and [w[:2] for w in writes] == [("lpush", "templates-q")] * 4
    assert templates.direct == 2  # the first two taught the template
    celery = [w for sig in starts for w in by_celery(app, sig, server)]
    assert [normalised(w) for w in writes] == [normalised(w) for w in celery]


def test_task_options_celery_merges_in_are_carried(client: Celery, server: tuple[Any, ...]) -> None:
    """A task registered with time limits and a queue of its own: Celery puts them in every message."""

    @client.task(name=TASK, time_limit=60, soft_time_limit=50, shared=False)
    def limited(**kwargs: Any) -> None:
        """Never run."""

    templates = MessageTemplates(client)
    taught(client, templates, server, run_kwargs(x=1), **CANVAS_OPTIONS)
    direct, celery = both_ways(client, templates, server, run_kwargs(x=2), **CANVAS_OPTIONS)
    assert direct == celery
    assert message(direct[0])["headers"]["timelimit"] == [60, 50]


def test_a_shape_whose_messages_differ_beyond_their_own_fields_stays_celerys(
    client: Celery, server: tuple[Any, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task whose messages expire a minute after they are sent: each message's expiry is its own."""

    @client.task(name=TASK, expires=60, shared=False)
    def expiring(**kwargs: Any) -> None:
        """Never run."""

    seconds = iter(range(10**6))
    monkeypatch.setattr(client, "now", lambda: dt.datetime.fromtimestamp(next(seconds), tz=dt.UTC))
    templates = MessageTemplates(client)
    for _ in range(3):
        sig = compiled(client, run_kwargs(x=1), "templates-q")
        assert templates.writes(sig, CANVAS_OPTIONS, server) is None
        templates.learn(sig, CANVAS_OPTIONS, by_celery(client, sig, server, **CANVAS_OPTIONS), server)
    assert templates.direct == 0


def test_a_watched_send_and_a_send_that_is_not_plain_go_through_celery(client: Celery, server: tuple[Any, ...]) -> None:
    templates = MessageTemplates(client)
    taught(client, templates, server, run_kwargs(x=1), **CANVAS_OPTIONS)

    def watcher(sender: Any = None, **kwargs: Any) -> None:
        """Watches: Celery must call it for every message."""

    before_task_publish.connect(watcher)
    try:
        sig = compiled(client, run_kwargs(x=2), "templates-q")
        assert templates.writes(sig, CANVAS_OPTIONS, server) is None
    finally:
        before_task_publish.disconnect(watcher)
    assert templates.writes(sig, CANVAS_OPTIONS, server) is not None  # unwatched again
    assert templates.writes(sig, {**CANVAS_OPTIONS, "countdown": 5}, server) is None
    assert templates.writes(sig, {"ignore_result": False}, server) is None  # another shape: results kept
    linked = compiled(client, run_kwargs(x=2), "templates-q")
    linked.link(compiled(client, {}, "templates-q"))
    assert templates.writes(linked, CANVAS_OPTIONS, server) is None
    other_queue = compiled(client, run_kwargs(x=2), "templates-other")
    assert templates.writes(other_queue, CANVAS_OPTIONS, server) is None


@pytest.mark.usefixtures("fleet")
def test_runs_sent_from_templates_complete_on_a_real_worker() -> None:
    """``.delay()`` of a one-task flow and runs created by name, enough of each for the templates to
    be trusted: every run completes with its value, and the client's templates wrote some."""
    templates = templates_of(client_app())
    before = templates.direct
    runs = [flows.one_task_flow.delay(x=i) for i in range(5)]
    assert [run.result(timeout=30) for run in runs] == [i + 1 for i in range(5)]
    assert templates.direct > before
    named = [submit_by_name(flows.one_task_flow.name, {"x": i}) for i in range(4)]
    assert [run.result(timeout=30) for run in named] == [i + 1 for i in range(4)]


def test_a_chain_link_as_a_worker_sends_it_comes_out_the_same(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, server: tuple[Any, ...]
) -> None:
    """The next link of a chain, sent as ``workers/celery_tasks.py``'s ``chained`` sends it, from a
    worker-like app (Celery's own message builder, ``saferepr``; a publish retry policy): its ids,
    the chain's rest and the client's reply_to are the message's own."""
    app = app_for(redis_url, monkeypatch)
    tolerate_redis_outages(app, 5)
    messaging = CeleryMessaging(app)
    connect(app, redis_url)
    templates = templates_of(app)

    def link(n: int, reply_to: str) -> tuple[Any, dict[str, Any]]:
        """The next link of an n-link chain, and the options its upstream sends it with."""
        links = [
            compiled(
                app,
                {"run": {"flow_run_id": "r", "label": f"inc-{i}"}, "inputs": {"x": {"__ref__": str(i)}}},
                "templates-q",
            )
            for i in range(n)
        ]
        for each in links:
            each.freeze(root_id="root-" + reply_to, parent_id=None)
            each.options["reply_to"] = reply_to
        rest = [dict(each) for each in reversed(links)]
        following = signature(rest[-1], app=app)
        options = {"chain": rest[:-1], "parent_id": str(uuid.uuid4()), "root_id": "root-" + reply_to, "priority": None}
        return following, options

    for n in (3, 5):  # taught by Celery's own sends
        following, options = link(n, "client-a")
        assert templates.writes(following, options, server, (None,)) is None
        assert messaging.captured_signatures([following], options, server, (None,)) is not None
    for n, reply_to in ((4, "client-a"), (2, "client-b"), (6, "client-c")):
        following, options = link(n, reply_to)
        direct = templates.writes(following, options, server, (None,))
        assert direct is not None
        celery = by_celery(app, following, server, **options)  # as chained's fallback sends it
        assert [normalised(w) for w in direct] == [normalised(w) for w in celery]
        headers = message(direct[0])["headers"]
        assert (headers["parent_id"], headers["root_id"]) == (options["parent_id"], "root-" + reply_to)
        assert message(direct[0])["properties"]["reply_to"] == reply_to


def test_a_group_comes_out_as_celery_sends_it(client: Celery, server: tuple[Any, ...]) -> None:
    """W3's canvas: a group's members, frozen as Celery's group freezes them (its id, their places),
    each from its template once one group taught it; the same bytes as Celery's send of that group."""
    messaging = CeleryMessaging(client)
    templates = templates_of(client)

    def independent(n: int) -> Any:
        return group([compiled(client, run_kwargs(i=i), "templates-q") for i in range(n)], app=client)

    assert messaging.captured_canvas(independent(4), server) is not None  # Celery's: it teaches
    before = templates.direct
    canvas = independent(5)
    direct = messaging.captured_canvas(canvas, server)
    assert direct is not None and templates.direct == before + 5

    def send(producer: Any) -> None:  # the same group again, by Celery: same group id, same members
        canvas.apply_async(**CANVAS_OPTIONS, producer=producer)

    celery = captured_sends(client, send, server)
    assert celery is not None
    assert [normalised(w) for w in direct] == [normalised(w) for w in celery]
    headers = [message(w)["headers"] for w in direct[::2]]
    assert [h["group_index"] for h in headers] == list(range(5))
    assert {h["group"] for h in headers} == {canvas.options["task_id"]}
