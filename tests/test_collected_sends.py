"""A chord's header collected for the end of the task before it (``collected_sends.py``), held
against Celery's own send of the same chord; and the argument texts a worker's templates write,
held against Celery's ``saferepr``."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from celery import Celery, chord, group, signature
from celery.utils.saferepr import saferepr
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.planning.compiler import make_signature
from orchestrator.runstate.store import get_store
from orchestrator.states import StateType
from orchestrator.transport.celery_app import tolerate_redis_outages
from orchestrator.transport.collected_sends import CHORD_LIMIT, captured_chord
from orchestrator.transport.message_templates import celery_repr, templates_of
from tests import flows
from tests.conftest import TEST_BROKER
from tests.test_envelope import app_for, normalised
from tests.test_message_templates import connect
from workers.celery_tasks import OrchestratorTask

pytestmark = pytest.mark.skipif(TEST_BROKER != "redis", reason="collected sends use the run store's Redis as broker")

QUEUE = "collected-q"
MEMBER, BODY, PLAIN = "tests.collected.member", "tests.collected.body", "tests.collected.plain"


def never_run(self: Any, **_: Any) -> None:
    """No worker runs these tasks: only their messages are looked at."""


@pytest.fixture
def app(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Celery:
    """A worker-like app (Celery's message builder, its Redis backend) whose tasks collect, connected."""
    app = app_for(redis_url, monkeypatch)
    tolerate_redis_outages(app, 5)
    for name in (MEMBER, BODY):
        app.task(name=name, bind=True, ignore_result=True, base=OrchestratorTask)(never_run)
    app.task(name=PLAIN, bind=True, ignore_result=True)(never_run)  # a plain Celery task: it does not collect
    connect(app, redis_url)
    return app


@pytest.fixture
def queue(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url)
    client.delete(QUEUE)
    yield client
    client.delete(QUEUE)


def compiled_chord(app: Celery, n: int) -> dict[str, Any]:
    """A chord as the compiler makes it and as it travels in its upstream's message (plain data)."""
    flow_run_id = str(uuid.uuid4())
    header = [
        make_signature(
            MEMBER,
            {"run": {"flow_run_id": flow_run_id, "label": f"work-{i}"}, "inputs": {"i": i}},
            queue=QUEUE,
            task_id=str(uuid.uuid4()),
            app=app,
        )
        for i in range(n)
    ]
    run = {"flow_run_id": flow_run_id, "label": "reduce-0"}
    body = make_signature(BODY, {"run": run}, queue=QUEUE, task_id=str(uuid.uuid4()), app=app)
    canvas = chord(group(header, app=app), body, app=app)
    canvas.set(task_id=str(uuid.uuid4()))  # the chain it is in froze it
    data: dict[str, Any] = json.loads(json.dumps(canvas))
    return data


def dispatch_options() -> dict[str, Any]:
    """What Celery's tracer sends a chain's last step with, after the task before it."""
    return {"chain": [], "parent_id": str(uuid.uuid4()), "root_id": str(uuid.uuid4()), "priority": None}


def pushed(queue: redis.Redis) -> list[str]:
    """The messages on the queue, first sent first, their delivery tags blanked; the queue emptied."""
    texts = [normalised(("lpush", QUEUE, raw.decode()))[2] for raw in reversed(queue.lrange(QUEUE, 0, -1))]
    queue.delete(QUEUE)
    return texts


def test_a_collected_header_is_the_header_celery_sends(app: Celery, queue: redis.Redis) -> None:
    """Each member's message as Celery's own chord send pushes it (ids, group, place, the body it
    carries); the header's size stored before any member can run; sent from templates once taught."""
    server = get_store().server()
    templates = templates_of(app)
    for n in (3, 6):  # the first chord teaches the shape (its first two members are Celery's own)
        data, options = compiled_chord(app, n), dispatch_options()
        direct_before = templates.direct
        writes = captured_chord(app, signature(data, app=app), (None,), options, server)
        assert writes is not None
        assert queue.llen(QUEUE) == 0, "collected, not sent"
        if n == 6:
            assert templates.direct - direct_before == n, "every member of a taught shape comes from its template"
        group_id = data["options"]["task_id"]
        size_key = app.backend.get_key_for_group(group_id, ".s")
        assert int(queue.get(size_key) or 0) == n, "the chord's size is stored for its members' ends"
        collected = [normalised(write)[2] for write in writes if write[0] == "lpush"]
        assert [command for command, _, _ in writes] == ["lpush", "publish"] * n  # each with its task-sent event

        signature(data, app=app).apply_async((None,), **options)  # Celery's own send of the same chord
        assert collected == pushed(queue)
        bodies = [json.loads(text) for text in collected]
        assert [b["headers"]["group_index"] for b in bodies] == list(range(n))
        assert {b["headers"]["group"] for b in bodies} == {group_id}


def with_a_link(data: dict[str, Any]) -> None:
    data["kwargs"]["header"][1]["options"]["link"] = [dict(data["kwargs"]["body"])]


def given_arguments(data: dict[str, Any]) -> None:
    data["kwargs"]["header"][2]["args"] = [1]


def of_a_plain_task(data: dict[str, Any]) -> None:
    data["kwargs"]["header"][0]["task"] = PLAIN


@pytest.mark.parametrize("spoil", [with_a_link, given_arguments, of_a_plain_task])
def test_a_chord_that_cannot_be_collected_whole_is_left_to_celery_and_nothing_goes_out(
    app: Celery, queue: redis.Redis, spoil: Any
) -> None:
    server = get_store().server()
    data = compiled_chord(app, 4)
    spoil(data)
    assert captured_chord(app, signature(data, app=app), (None,), dispatch_options(), server) is None
    assert queue.llen(QUEUE) == 0, "no member may go out before the task before the chord has ended"


def test_a_header_wider_than_the_limit_is_left_to_celery(app: Celery, queue: redis.Redis) -> None:
    data = compiled_chord(app, CHORD_LIMIT + 1)
    assert captured_chord(app, signature(data, app=app), (None,), dispatch_options(), get_store().server()) is None
    assert queue.llen(QUEUE) == 0


@pytest.mark.usefixtures("fleet")
def test_a_fan_out_after_its_source_runs_on_the_fleet_with_the_sources_result() -> None:
    """Every member adds the source's result, so none ran before the source's end sent it; the
    later runs' headers come from templates the first taught."""
    widths = (3, 8, 8, 30)
    runs = [flows.source_fan_flow.delay(n=n) for n in widths]
    assert [run.result(timeout=60) for run in runs] == [2 * n + n * (n - 1) // 2 for n in widths]


@pytest.mark.usefixtures("fleet")
def test_a_fan_out_whose_source_fails_never_runs() -> None:
    run = flows.failing_source_fan_flow.delay(n=3)
    assert run.wait(timeout=60) is StateType.FAILED
    members = [row for row in run.task_runs() if row["label"].startswith("add")]
    assert len(members) == 3
    assert all(not row.get("started") for row in members), members
    assert all(row["state"] is not StateType.COMPLETED for row in members), members


_text = st.text(st.characters(codec="utf-8"), max_size=12) | st.sampled_from(["it's", "a\\b", "tab\t", "plain-id_0"])
_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None)
@given(value=_values, limit=st.sampled_from([8, 40, 1024]), levels=st.sampled_from([0, 1, 3]))
def test_argument_texts_are_celerys_saferepr(value: Any, limit: int, levels: int) -> None:
    """The fast text (the builtin ``repr``) is used only where it is Celery's; anything else
    (quotes, escapes, depth past ``levels``, a text past ``limit``) is Celery's ``saferepr``."""
    assert celery_repr(value, limit, levels) == saferepr(value, limit, maxlevels=levels)
