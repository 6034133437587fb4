"""What a finished run leaves in Redis, where it stays for the records' TTL: records that read back
whole, in fewer bytes (benchmarks/redis_bytes.py measures them per key family)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator.runstate import keys
from orchestrator.runstate.events import decode, encode, task_run_event
from orchestrator.runstate.records import DECIDERS_ARE_REFS, PACKED, TaskRunRecord, json_text, typed_task_run
from orchestrator.runstate.store import get_store
from orchestrator.states import StateType
from tests import flows
from tests.api_support import eventually

pytestmark = pytest.mark.usefixtures("fleet")


def test_a_task_runs_hash_keeps_no_id_and_no_root_it_can_tell_and_reads_back_with_both() -> None:
    """A task run's hash leaves out its id (its key names it) and a root that is its own flow run;
    a task of a subflow traced into its parent's tree keeps the root, which is another run."""
    run = flows.parent_flow.delay()
    assert run.result(timeout=60) == {"first": 1, "second": 2, "third": 2}
    rows = run.task_runs()
    assert rows and all(row["root"] == run.id for row in rows)  # every one of the tree, read back whole
    store = get_store()
    subflow_tasks = [row for row in rows if row["flow_run_id"] != run.id and row["name"].endswith("sleepy")]
    assert len(subflow_tasks) == 2
    for row in rows:
        stored = store.redis.hgetall(keys.task_run(row["id"]))
        assert "id" not in stored, stored
        assert stored.get("root") == (None if row["flow_run_id"] == run.id else run.id), stored
        record = TaskRunRecord.from_redis(row["id"], stored)
        assert record is not None and (record.id, record.root) == (row["id"], run.id)
    first, none = store.task_runs.read_many([rows[0]["id"], "no-such-task-run"])
    assert none == {} and typed_task_run(first) == rows[0]  # task_runs() gives the same record, typed


def test_a_finished_plain_task_run_leaves_under_400_bytes_in_its_hash() -> None:
    """The bytes of one finished task run's hash (was 472 with its id and root): a guard against
    fields that grow it again, or a hash pushed out of Redis's compact encoding."""
    run = flows.fan_flow.delay(n=3)
    assert run.result(timeout=30) is not None
    redis = get_store().redis
    for row in run.task_runs():
        key = keys.task_run(row["id"])
        assert redis.object("encoding", key) == "listpack"
        assert redis.memory_usage(key, samples=0) < 400, (row, redis.memory_usage(key, samples=0))


@pytest.mark.parametrize("flow", [flows.fan_flow, flows.diamond_flow, flows.dynamic_fan_flow], ids=lambda f: f.name)
def test_a_finished_run_tree_keeps_none_of_the_edges_that_routed_its_ends(flow: Any) -> None:
    """Each task run's downstream set, the join tables, the tolerant set and the kept inputs only
    route ends to waiting task runs: the tree's last end removes them (a retry writes its own)."""
    run = flow.delay()
    assert run.wait(60).is_final  # dynamic-fan-flow ends Failed on purpose
    redis = get_store().redis
    tree = [row["id"] for row in run.task_runs()]
    assert tree
    per_tree = [keys.join_pending(run.id), keys.join_signature(run.id), keys.tolerant(run.id), keys.inputs(run.id)]

    def left() -> list[str]:
        names = [keys.downstream(trid) for trid in tree] + per_tree
        return [name for name, there in zip(names, [redis.exists(n) for n in names], strict=True) if there]

    eventually(lambda: not left(), 10, what=f"the edges of {flow.name} removed")


def test_a_flow_returning_many_futures_keeps_its_return_template_packed_and_its_deciders_once() -> None:
    """A flow run's record names its returned futures once (``deciders`` says "the result_refs") and
    keeps a long return template packed; the run still completes with its value, and fails when one
    of the returned futures fails (the finishing script reads the deciders through result_refs)."""
    redis = get_store().redis
    run = flows.many_returned_flow.delay(n=12)
    assert run.result(timeout=30) == [2 * i for i in range(12)]
    stored = redis.hgetall(keys.flow_run(run.id))
    assert stored["deciders"] == DECIDERS_ARE_REFS and len(json.loads(stored["result_refs"])) == 12
    assert stored["returns"].startswith(PACKED)
    assert json.loads(get_store().flow_runs.read(run.id)["returns"])[0]["__ref__"] in stored["result_refs"]

    failed = flows.many_returned_flow.delay(n=12, fail_at=5)
    assert failed.wait(30) is StateType.FAILED
    assert "explode" in (failed.info.get("message") or ""), failed.info


def test_an_event_leaves_out_what_is_empty_and_reads_back_the_same_also_as_older_versions_wrote_it() -> None:
    """An event waits in the stream until it is recorded (with no API, up to the stream's cap): its
    text has no spaces and no empty message or record; the decoder reads both forms alike."""
    started = task_run_event("t1", "Running", ts=1.5, record={"worker": "w1", "attempts": 1})
    ended = task_run_event("t1", "Completed", ts=2.5)
    assert encode(ended) == '{"kind":"task_run","id":"t1","state":"Completed","ts":2.5}'
    for event in (started, ended, task_run_event("t1", "Failed", ts=3.5, message="boom", cause="worker w1")):
        assert decode(encode(event)) == event
    older = '{"kind": "task_run", "id": "t1", "state": "Completed", "ts": 2.5, "message": "", "record": {}}'
    assert decode(older) == ended


def test_a_delayed_runs_record_and_plan_read_back_as_the_trace_made_them() -> None:
    """``.delay()`` writes the record's numbers and flags as JSON text without the encoder, keeps the
    plan as the traced one (fields not copied), and gives a subflow-ends hash a TTL only when there is one."""
    run = flows.diamond_flow.delay(x=3)
    assert run.result(timeout=60) == flows.diamond_flow(x=3)
    store = get_store()
    stored = store.redis.hgetall(keys.flow_run(run.id))
    assert json.loads(stored["created"]) == pytest.approx(float(stored["created"]))
    assert stored["name_given"] == "0" and json.loads(stored["parameters"]) == {"x": 3}
    text = store.flow_runs.plan_text(run.id)
    assert text is not None
    traced = flows.diamond_flow.plan(x=3)
    kept, fresh = json.loads(text), json.loads(json.dumps(traced.to_dict()))
    assert [n["name"] for n in kept["nodes"]] == [n["name"] for n in fresh["nodes"]]
    assert {k for n in kept["nodes"] for k in n} == {k for n in fresh["nodes"] for k in n}
    assert kept["nodes"][-1]["upstream"] and kept["returns"]
    assert not store.redis.exists(keys.subflow_ends(run.id))
    parent = flows.parent_flow.delay()
    assert parent.result(timeout=60) == {"first": 1, "second": 2, "third": 2}
    assert (
        store.redis.hlen(keys.subflow_ends(parent.id)) == len(flows.parent_flow.plan().subflows) > 0
        and store.redis.ttl(keys.subflow_ends(parent.id)) > 0
    )


@pytest.mark.parametrize(
    "value",
    [0.1, 1733550000.123456, -0.0, 1e300, float("nan"), float("inf"), 3, -7, 10**30, True, False, None, {"a": [1]}],
)
def test_json_text_is_json_dumps(value: Any) -> None:
    """The record writer's shortcut for numbers and constants gives exactly the encoder's text."""
    assert json_text(value) == json.dumps(value)


def test_a_task_runs_state_is_typed_and_an_unknown_one_stays_text() -> None:
    typed = typed_task_run({"state": "Completed", "attempts": "2"})
    assert typed["state"] is StateType.COMPLETED and typed["attempts"] == 2
    assert typed_task_run({"state": "Paused-ish"})["state"] == "Paused-ish"  # no StateType: kept as written
