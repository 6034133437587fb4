"""A script call in two halves (``orchestrator/runstate/sent_scripts.py``), on the session's real Redis.

The worker sends a task run's start before it prepares the task and reads the answer after: the
answer must be the script's, whatever happened in between (Redis lost its scripts, the connection
was cut), a read cut short must not hand its reply to a later command, and the request must be the bytes
redis-py would have sent.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis

from orchestrator.runstate import keys
from orchestrator.runstate.records import NewTaskRun
from orchestrator.runstate.sent_scripts import SentScript, packed
from orchestrator.runstate.store import RunStore
from orchestrator.states import StateType

COUNT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"  # runs once per call: the counter says how often
SLOW_COUNT = "for _ = 1, tonumber(ARGV[2]) do end return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.fixture
def client(redis_url: str) -> Any:
    return redis.Redis.from_url(redis_url, decode_responses=True)


def test_the_reply_is_read_when_asked_and_the_connection_goes_back_clean(client: Any) -> None:
    script, key = client.register_script(COUNT), f"test:sent:{uuid.uuid4()}"
    script(keys=[key], args=[0])  # loaded
    sent = SentScript(client, script, [key], [5])
    assert client.get(key) == "5"  # another connection sees it: the script ran before its reply was read
    assert sent.reply() == 5
    assert client.incrby(key, 1) == 6  # the pool's connections answer their own commands


def test_a_redis_without_the_script_runs_it_once_through_the_ordinary_call(client: Any) -> None:
    script, key = client.register_script(COUNT), f"test:sent:{uuid.uuid4()}"
    client.script_flush()  # a restarted or failed-over Redis: NOSCRIPT
    assert SentScript(client, script, [key], [3]).reply() == 3
    assert client.get(key) == "3"


def test_a_connection_lost_before_the_reply_sends_the_call_again(client: Any) -> None:
    """As redis-py's own retry does with a lost connection: the reply is the second call's."""
    script, key = client.register_script(COUNT), f"test:sent:{uuid.uuid4()}"
    script(keys=[key], args=[0])
    sent = SentScript(client, script, [key], [1])
    while client.get(key) != "1":  # the first call ran (seen on another connection)
        pass
    sent._conn._sock.close()  # its reply is lost on the way
    assert sent.reply() == 2  # sent again on a new connection
    assert client.get(key) == "2"


class Interrupted(Exception):
    """What a soft time limit raises in the middle of a read (celery's SoftTimeLimitExceeded, say)."""


def test_a_read_cut_short_never_hands_its_reply_to_a_later_command(client: Any) -> None:
    """The reply comes after the next command is sent (the script is slow): redis-py's own check
    for unread data on a connection taken from the pool does not see it yet."""
    script, key = client.register_script(SLOW_COUNT), f"test:sent:{uuid.uuid4()}"
    script(keys=[key], args=[0, 1])
    sent = SentScript(client, script, [key], [7, 3_000_000])

    def interrupted(*_: Any, **__: Any) -> Any:
        raise Interrupted

    conn = sent._conn
    conn.read_response = interrupted  # the reply waits unread on this connection
    with pytest.raises(Interrupted):
        sent.reply()
    del conn.read_response  # the connection, back in the pool, reads as before
    assert client.incrby(key, 1) == 8  # its own answer, not the interrupted call's 7


@pytest.mark.parametrize(
    "parts",
    [
        ["EVALSHA", "a" * 40, 2, "k1", "k2", "text", 604800, 1796651524.6230243, "", "ünïcode", b"\x00raw"],
        ["EVALSHA", "a" * 40, 0, StateType.COMPLETED],  # a str subclass: redis-py's own packing
    ],
)
def test_the_request_is_the_bytes_redis_py_packs(client: Any, parts: list[Any]) -> None:
    conn = client.connection_pool.make_connection()
    assert packed(conn, parts) == b"".join(conn.pack_command(*parts))


def test_a_start_sent_early_answers_as_one_read_at_once(redis_url: str) -> None:
    """TaskRuns.start then PendingStart.result: the start counted once, and a final task run refused."""
    store = RunStore(redis_url)
    root, trid = str(uuid.uuid4()), str(uuid.uuid4())
    store.task_runs.add_to_dynamic_tree(NewTaskRun(trid, "t", "t", root, root), None)
    fields = {"state": StateType.RUNNING.value, "attempts": 1, "flow_run_id": root, "root": root}
    pending = store.task_runs.start(root, trid, fields)
    started = pending.result()
    assert started is not None and started.start == 1 and not started.stale
    assert store.redis.hget(keys.task_run(trid), "starts") == "1"
    store.task_runs.finished(root, trid, StateType.COMPLETED, {}, '"v"')
    assert store.task_runs.start(root, trid, fields).result() is None
