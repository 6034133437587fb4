"""The messaging seam: only it talks Celery, and what it sends is what the product always sent.

The messages are read back from the real broker (a private redis-server): the task each
names, its task id, its queue, its keyword arguments and whether its result is ignored.
No worker consumes the queues used here, so every message sent is still there to read.
"""

from __future__ import annotations

import ast
import base64
import json
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.connection
from celery import group
from celery.utils.saferepr import saferepr

from orchestrator import FlowRun, StateType
from orchestrator.config.settings import Settings
from orchestrator.devstack.localstack import redis_server
from orchestrator.planning.compiler import (
    FLOW_DEADLINE_TASK,
    RETRY_FLOW_RUN_TASK,
    START_FLOW_RUN_TASK,
    make_signature,
)
from orchestrator.planning.tracer import trace_flow
from orchestrator.runstate import keys
from orchestrator.runstate.flow_runs import FlowRuns, LaunchWrites
from orchestrator.runstate.store import get_store
from orchestrator.transport.celery_app import make_celery_app
from orchestrator.transport.messaging import (
    CeleryMessaging,
    Messaging,
    Start,
    flow_deadline_message,
    retry_flow_run_message,
)
from tests import flows
from tests.api_support import sdk_settings
from tests.conftest import TEST_BROKER

redis_broker_only = pytest.mark.skipif(TEST_BROKER != "redis", reason="the broker is not the run store's Redis")

ROOT = Path(__file__).resolve().parent.parent
SEAM = ("orchestrator/transport/", "orchestrator/planning/compiler.py")  # the compiler builds canvas


def celery_imports(path: Path) -> list[str]:
    """Every import of celery (or of the seam's Celery app module) in one file, also under TYPE_CHECKING."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            if name == "celery" or name.startswith("celery.") or name == "orchestrator.transport.celery_app":
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    return found


def test_only_the_seam_imports_celery() -> None:
    offending = [
        hit
        for package in ("orchestrator", "api")
        for path in sorted((ROOT / package).rglob("*.py"))
        if not str(path.relative_to(ROOT)).startswith(SEAM)
        for hit in celery_imports(path)
    ]
    assert offending == []
    # the rule looks where imports are: the seam itself is seen to import celery
    assert celery_imports(ROOT / "orchestrator/transport/messaging.py")


@pytest.fixture
def messaging(redis_url: str) -> CeleryMessaging:
    return CeleryMessaging(make_celery_app("messaging-test", Settings(redis_url=redis_url), send_only=True))


@pytest.fixture
def queue(redis_url: str) -> Iterator[str]:
    """A queue of its own that no worker consumes; emptied afterwards."""
    name = f"messaging-{uuid.uuid4().hex[:8]}"
    yield name
    redis.Redis.from_url(redis_url).delete(name)


def sent(redis_url: str, queue: str) -> list[dict[str, Any]]:
    """The messages waiting in ``queue``, oldest first: task, id, queue, kwargs, ignore_result."""
    out = []
    for raw in reversed(redis.Redis.from_url(redis_url).lrange(queue, 0, -1)):  # kombu LPUSHes
        message = json.loads(raw)
        headers = message["headers"]
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        out.append(
            {
                "task": headers["task"],
                "id": headers["id"],
                "queue": message["properties"]["delivery_info"]["routing_key"],
                "kwargs": kwargs,
                "ignore_result": headers["ignore_result"],
            }
        )
    return out


def counting(acquire: Callable[..., AbstractContextManager[Any]], calls: list[int]) -> Callable[..., Any]:
    """``app.producer_or_acquire`` that counts the producers it acquires (not those it is handed back)."""

    @contextmanager
    def wrapped(producer: Any = None) -> Iterator[Any]:
        if producer is None:
            calls.append(1)
        with acquire(producer) as acquired:
            yield acquired

    return wrapped


def test_start_messages_carry_their_run_ids_and_a_batch_shares_one_producer(
    messaging: CeleryMessaging, queue: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(messaging, Messaging)
    runs = [str(uuid.uuid4()) for _ in range(3)]
    calls: list[int] = []
    monkeypatch.setattr(messaging.app, "producer_or_acquire", counting(messaging.app.producer_or_acquire, calls))
    messaging.send_starts([Start("etl", runs[0], queue), Start("etl", runs[1], queue, dynamic=True)])
    assert len(calls) == 1  # one producer (one connection, one pipeline) for the whole batch
    messaging.send_start("other", runs[2], queue, dynamic=False)
    messaging.send_starts([])
    assert sent(redis_url, queue) == [
        {
            "task": START_FLOW_RUN_TASK,
            "id": f"start-{run_id}",  # a start message sent twice is one task id: a worker starts the run once
            "queue": queue,
            "kwargs": {"flow": flow, "run_id": run_id, "dynamic": dynamic},
            "ignore_result": True,
        }
        for flow, run_id, dynamic in (("etl", runs[0], False), ("etl", runs[1], True), ("other", runs[2], False))
    ]


def test_retries_deadlines_resends_and_canvas_go_out_as_before(
    messaging: CeleryMessaging, queue: str, redis_url: str
) -> None:
    run_id = str(uuid.uuid4())
    messaging.send_retry_flow_run(run_id, 3, queue)
    # Delayed messages wait in Redis as JSON until a worker sends them as they are (workers/delayed.py).
    deadline = flow_deadline_message(run_id, 2.5, queue)
    retry = retry_flow_run_message(run_id, 4, queue)
    for data in (deadline, retry):
        assert data["immutable"] is True and data["options"] == {"queue": queue, "ignore_result": True}
        messaging.send_signature(json.loads(json.dumps(data)))
    # A resent message keeps the options it carries; messages that became ready never keep a result.
    carried = {
        "task": "tests.messaging.unregistered",
        "kwargs": {"x": 1},
        "options": {"queue": queue, "task_id": "keep"},
    }
    messaging.send_signature(carried)
    ready = [dict(carried, options={"queue": queue, "task_id": f"ready-{i}"}) for i in range(2)]
    messaging.send_signatures(ready)
    plan = trace_flow(flows.diamond_flow, {"x": 1}, run_id=run_id, queue=queue)
    compiled = messaging.compile(plan)
    messaging.send_canvas(compiled.canvas)
    first = next(node for node in plan.nodes.values() if not node.upstream)

    messages = sent(redis_url, queue)
    assert [(m["task"], m["queue"], m["kwargs"], m["ignore_result"]) for m in messages[:6]] == [
        (RETRY_FLOW_RUN_TASK, queue, {"run_id": run_id, "attempt": 3}, True),
        (FLOW_DEADLINE_TASK, queue, {"run_id": run_id, "timeout": 2.5}, True),
        (RETRY_FLOW_RUN_TASK, queue, {"run_id": run_id, "attempt": 4}, True),
        ("tests.messaging.unregistered", queue, {"x": 1}, None),  # the sender's default: Celery's
        ("tests.messaging.unregistered", queue, {"x": 1}, True),
        ("tests.messaging.unregistered", queue, {"x": 1}, True),
    ]
    assert [m["id"] for m in messages[3:6]] == ["keep", "ready-0", "ready-1"]
    canvas = messages[6:]
    assert [m["id"] for m in canvas] == [first.id]  # the diamond's first task; the rest follow it
    assert canvas[0]["task"] == first.name and canvas[0]["queue"] == queue and canvas[0]["ignore_result"] is True


def test_a_group_goes_out_in_a_few_round_trips_with_the_argument_text_celery_would_write(
    messaging: CeleryMessaging, queue: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery sends a group's messages (and their task-sent events) one round trip each; the
    seam pipelines them. Each message still carries the text of its arguments that Flower and
    the worker's log show, the same text Celery's ``saferepr`` gives."""
    writes: list[int] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        writes.append(1)
        send(self, command, check_health)

    plan = trace_flow(flows.fan_flow, {"n": 300}, run_id=str(uuid.uuid4()), queue=queue)
    canvas = group(messaging.compile(plan).canvas.tasks, app=messaging.app)  # the chord's header: 300 tasks
    messaging.send_canvas(group([], app=messaging.app))  # connect first: a connection's setup is not the sending
    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    messaging.send_canvas(canvas)
    monkeypatch.undo()
    assert len(writes) <= 4  # one pipeline per 1,000 operations (300 messages, 300 events)

    raw = [json.loads(m) for m in redis.Redis.from_url(redis_url).lrange(queue, 0, -1)]
    assert len(raw) == 300
    for message in raw:
        _, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert message["headers"]["kwargsrepr"] == saferepr(kwargs, 1024)
        assert message["headers"]["argsrepr"] == "()"
    long_text = {"run": {"flow_run_id": "r", "label": "x"}, "inputs": {"text": "y" * 900}, "options": {"z": "w" * 900}}
    messaging.send_signature(dict(make_signature("tests.messaging.unregistered", long_text, queue=queue)))
    newest = json.loads(redis.Redis.from_url(redis_url).lindex(queue, 0) or b"{}")
    assert len(newest["headers"]["kwargsrepr"]) == 1024 and newest["headers"]["kwargsrepr"].endswith("...")


def test_a_run_whose_messages_redis_refuses_ends_failed_with_that_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis out of memory between the run's records and its messages: the client gets the
    error and the run ends Failed saying why, never Running with nothing sent. A Redis of its
    own: one that refuses writes makes any worker on it stop (its acknowledgements fail).

    The records and the messages are written apart where the broker is not the run store's
    Redis (RabbitMQ) or the canvas is a chord: here made so by capturing nothing."""
    monkeypatch.setattr(CeleryMessaging, "captured_canvas", lambda *_: None)
    with redis_server() as url, sdk_settings(monkeypatch, ORCHESTRATOR_REDIS_URL=url):
        store = get_store()
        send = CeleryMessaging.send_canvas
        sent: list[Any] = []

        def send_with_redis_full(self: CeleryMessaging, canvas: Any) -> None:
            sent.append(canvas)
            store.redis.config_set("maxmemory", "1")  # every write refused (noeviction): OOM
            try:
                send(self, canvas)
            finally:
                store.redis.config_set("maxmemory", "0")

        monkeypatch.setattr(CeleryMessaging, "send_canvas", send_with_redis_full)
        with pytest.raises(Exception, match=r"(?i)maxmemory|memory|batch") as raised:
            flows.chain_flow.delay(x=3)
        run = FlowRun(sent[0].tasks[0].kwargs["run"]["flow_run_id"])  # the chain's first message names its run
        assert run.state is StateType.FAILED
        assert "sending the run's 3 task messages failed" in run.info["message"]
        assert type(raised.value).__name__ in run.info["message"]
        assert {row["state"] for row in run.task_runs()} == {"Cancelled"}


def counted_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count every write of a command or a pipeline on a Redis socket of this process from now on."""
    writes: list[int] = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(self: Any, command: Any, check_health: bool = True) -> None:
        writes.append(1)
        send(self, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    return writes


@redis_broker_only
def test_a_new_run_is_written_and_sent_in_one_round_trip_that_a_repeat_does_not_send_again(
    queue: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``.delay()`` of a flow traced here, the broker being the run store's Redis: the run's records
    and its first message go in one script (one round trip, one atomic step). redis-py sends a
    command again when its connection breaks before the reply: the script run a second time finds
    the run's record and sends nothing more (a pipeline would push the message twice)."""
    store = get_store()
    three = {"n": 3}  # three tasks that wait for nothing: a group
    flows.many_returned_flow.apply_async(three, queue=queue)  # connected and the script loaded: not the launch's cost
    launches: list[tuple[str, LaunchWrites, Any]] = []
    launch = FlowRuns.launch

    def kept(self: FlowRuns, root: str, writes: LaunchWrites, sends: Any) -> bool:
        launches.append((root, writes, sends))
        return launch(self, root, writes, sends)

    monkeypatch.setattr(FlowRuns, "launch", kept)
    writes = counted_writes(monkeypatch)
    run = flows.many_returned_flow.apply_async(three, queue=queue)
    monkeypatch.undo()
    assert len(writes) == 1
    assert [root for root, _, _ in launches] == [run.id]
    assert run.state is StateType.RUNNING
    assert [row["state"] for row in run.task_runs()] == ["Pending"] * 3
    messages = sent(redis_url, queue)
    assert len(messages) == 6 and {m["kwargs"]["run"]["flow_run_id"] for m in messages[3:]} == {run.id}

    root, records, sends = launches[0]
    args = [records.text, len(records.binary), *records.binary, *[part for send in sends for part in send]]
    again = store.scripts["launch_run"](keys=[keys.flow_run(root)], args=args)
    assert again == 0
    assert len(sent(redis_url, queue)) == 6


def test_a_launch_writes_what_the_pipeline_would_have_written_byte_for_byte(redis_url: str) -> None:
    """The launch script gets the records' commands as JSON text (binary ones apart): every value
    lands as the pipeline would have written it, whatever its characters, numbers and bytes."""
    store = get_store()
    raw = redis.Redis.from_url(redis_url)
    odd = "é 😀 \n \t \x00 \\ \" ' \u2028 end"
    roots = [f"launch-{uuid.uuid4().hex}" for _ in range(2)]
    pipes = []
    for root in roots:
        pipe = store.pipeline()
        pipe.hset(keys.flow_run(root), mapping={"text": odd, "int": 604800, "float": 1796640715.3267298, "empty": ""})
        pipe.set(f"{keys.flow_run(root)}:bin", bytes(range(256)), ex=60)
        pipe.sadd(f"{keys.flow_run(root)}:set", "a", odd)
        pipe.expire(keys.flow_run(root), 60)
        pipes.append(pipe)
    pipes[0].execute()
    writes = store.flow_runs.launch_writes(pipes[1])
    assert writes is not None and writes.binary == [bytes(range(256))]
    assert store.flow_runs.launch(roots[1], writes, [])
    for suffix in ("", ":bin", ":set"):
        first, second = (raw.dump(f"{keys.flow_run(root)}{suffix}") for root in roots)
        assert first is not None and first == second
    assert raw.hget(keys.flow_run(roots[1]), "text") == odd.encode()
    assert 0 < raw.ttl(keys.flow_run(roots[1])) <= 60
    raw.delete(*[f"{keys.flow_run(root)}{suffix}" for root in roots for suffix in ("", ":bin", ":set")])


def test_a_launch_refuses_what_is_not_a_record_write(redis_url: str) -> None:
    """Only plain record writes go into the launch script: anything else is written the usual way."""
    store = get_store()
    pipe = store.pipeline()
    pipe.hset("launch-x", "a", "b")
    pipe.delete("launch-x")
    assert store.flow_runs.launch_writes(pipe) is None


@redis_broker_only
def test_a_new_run_redis_refuses_leaves_no_record_and_sends_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis out of memory when a run's records and messages go in one step: the client gets the
    error, and there is no run at all (no record Running with nothing sent, nothing queued)."""
    with redis_server() as url, sdk_settings(monkeypatch, ORCHESTRATOR_REDIS_URL=url):
        store = get_store()
        launched: list[str] = []
        launch = FlowRuns.launch

        def launch_with_redis_full(self: FlowRuns, root: str, writes: LaunchWrites, sends: Any) -> bool:
            launched.append(root)
            store.redis.config_set("maxmemory", "1")  # every write refused (noeviction): OOM
            try:
                return launch(self, root, writes, sends)
            finally:
                store.redis.config_set("maxmemory", "0")

        flows.many_returned_flow.delay(n=3)  # connected: a first send writes, then sends
        store.redis.delete("default")
        monkeypatch.setattr(FlowRuns, "launch", launch_with_redis_full)
        with pytest.raises(Exception, match=r"(?i)memory"):
            flows.many_returned_flow.delay(n=3)
        assert len(launched) == 1
        assert FlowRun(launched[0], store).state is None
        assert store.redis.llen("default") == 0
        root = launched[0]
        assert store.redis.exists(keys.flow_tasks(root), keys.remaining(root), keys.plan(root)) == 0


def test_only_a_canvas_that_just_pushes_its_messages_is_captured(
    messaging: CeleryMessaging, queue: str, redis_url: str
) -> None:
    """A chord is sent with the result backend's help, and a chain's first message through a producer
    of Celery's choosing: neither is captured; nor is anything when the broker is not the run store's
    database (here: none named). A group is, and nothing is sent."""

    def canvas(flow: Any, parameters: dict[str, Any]) -> Any:
        return messaging.compile(trace_flow(flow, parameters, run_id=str(uuid.uuid4()), queue=queue)).canvas

    server = get_store().server()
    assert messaging.captured_canvas(canvas(flows.fan_flow, {"n": 3}), server) is None
    assert messaging.captured_canvas(canvas(flows.chain_flow, {"x": 1}), server) is None
    three = canvas(flows.many_returned_flow, {"n": 3})
    assert messaging.captured_canvas(three, None) is None
    if TEST_BROKER == "redis":
        captured = messaging.captured_canvas(three, server)
        assert [(command, key) for command, key, _ in captured or []] == [
            ("lpush", queue),
            ("publish", "/0.celeryev/task.sent"),  # each message's task-sent event (Flower)
        ] * 3
    assert sent(redis_url, queue) == []  # captured, not sent
