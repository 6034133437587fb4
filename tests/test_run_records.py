"""What a finished run leaves in Redis, where it stays for the records' TTL: records that read back
whole, in fewer bytes (benchmarks/redis_bytes.py measures them per key family)."""

from __future__ import annotations

import pytest

from orchestrator.runstate import keys
from orchestrator.runstate.records import TaskRunRecord
from orchestrator.runstate.store import get_store
from tests import flows

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
    assert store.task_runs.read_many([rows[0]["id"], "no-such-task-run"]) == [rows[0], {}]


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
