"""The records of a new run tree are queued as the very commands redis-py's methods queue.

The launch path queues its writes with ``execute_command`` (``queued_hset``), not ``pipe.hset``,
``pipe.set(..., ex=)`` and ``pipe.xadd``: what reaches Redis (or the launch script) must not change.
Nothing here is sent: the pipelines' queued commands are compared.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis

from orchestrator.runstate import keys
from orchestrator.runstate.connection import queued_hset
from orchestrator.runstate.events import encode, flow_run_event
from orchestrator.runstate.flow_runs import pack_plan
from orchestrator.runstate.records import NewTaskRun, flow_fields_to_redis
from orchestrator.runstate.store import get_store

pytestmark = pytest.mark.usefixtures("redis_url")


def queued(pipe: Any) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
    return [(tuple(args), dict(options)) for args, options in pipe.command_stack]


def test_a_flow_runs_write_queues_what_the_redis_py_methods_queue() -> None:
    store = get_store()
    run_id = str(uuid.uuid4())
    fields = {"id": run_id, "flow": "f", "name": "n", "state": "Running", "started": 1796652230.3896697, "x": 3}
    ours = store.pipeline()
    store.flow_runs.write(run_id, fields, ours)
    theirs = store.pipeline()
    theirs.hset(keys.flow_run(run_id), mapping=flow_fields_to_redis(run_id, fields))
    theirs.expire(keys.flow_run(run_id), store.ttl)
    event_text = encode(flow_run_event(run_id, "Running"))  # the event's text differs (its time): compared apart
    theirs.xadd(keys.EVENTS_STREAM, {"event": event_text})
    assert queued(ours)[:2] == queued(theirs)[:2]
    (command, stream, star, name, _text), options = queued(ours)[2]
    assert ((command, stream, star, name), options) == (queued(theirs)[2][0][:4], queued(theirs)[2][1])


def test_a_tree_and_its_plan_are_queued_as_the_redis_py_methods_queue_them() -> None:
    store = get_store()
    root, task = str(uuid.uuid4()), str(uuid.uuid4())
    run = NewTaskRun(task, "noop-0", "tests.noop", root, root)
    plan = {"flow_name": "f", "root_run_id": root, "nodes": []}
    ours = store.pipeline()
    store.task_runs.write_tree(
        ours,
        root,
        [(run, [])],
        whole_tree_in_root=False,
        join_pending={},
        join_signatures={},
        tolerant=[],
        stored_inputs={},
    )
    store.flow_runs.keep_plan(ours, root, plan, {})
    ttl = store.ttl
    theirs = store.pipeline()
    theirs.set(keys.remaining(root), 1, ex=ttl)
    theirs.hset(keys.task_run(task), mapping=run.to_redis())
    theirs.expire(keys.task_run(task), ttl)
    theirs.sadd(keys.flow_tasks(root), task)
    theirs.expire(keys.flow_tasks(root), ttl)
    theirs.set(keys.plan(root), pack_plan(plan), ex=ttl)
    assert queued(ours) == queued(theirs)


def test_an_empty_record_is_refused_before_anything_is_queued_as_redis_py_refuses_it() -> None:
    pipe = get_store().pipeline()
    with pytest.raises(redis.DataError):
        queued_hset(pipe, "orc:fr:x", {})
    assert pipe.command_stack == []
