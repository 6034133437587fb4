"""What a finished run leaves in Redis, and that the guards of late messages hold without the rest.

A completed run tree keeps its records, results, latch and task set for ``result_ttl_seconds``;
its finals and its count of task runs not final only for ``Settings.finished_grace_seconds`` (a
completed run is never retried), and its plan as long once the API's database holds its graph.
A message delivered again after that still does nothing: each task run's own record says it is
final. Real workers, a real private Redis, a real API; the redelivery is the kombu message
itself, pushed back on its list as kombu restores an unacknowledged one.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from orchestrator import StateType
from orchestrator.config.settings import get_settings
from orchestrator.devstack.localstack import ApiProcess, api_server, worker
from orchestrator.runstate import keys
from orchestrator.runstate.store import get_store
from orchestrator.supervision.crashes import detect_crashes
from orchestrator.transport.celery_app import client_app
from orchestrator.transport.messaging import CeleryMessaging
from tests import flows
from tests.api_support import api_database, eventually
from tests.conftest import TEST_BROKER

pytestmark = pytest.mark.usefixtures("fleet")


@pytest.fixture(scope="module")
def api(redis_url: str, worker_logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """An API (its recorder) on the session's Redis."""
    admin_url = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")
    with (
        api_database(tmp_path_factory.mktemp("finished-db"), admin_url) as database_url,
        api_server(redis_url, database_url, log_path=worker_logs / "finished-api.log") as server,
    ):
        yield server


def keys_naming(redis: object, ids: list[str]) -> set[str]:
    """Every key whose name holds one of ``ids``."""
    return {key for i in ids for key in redis.scan_iter(match=f"*{i}*", count=1000)}  # type: ignore[attr-defined]


def handled(log: Path, task_id: str) -> int:
    """How many times the worker logging to ``log`` was done with a message of ``task_id`` (run or refused)."""
    lines = log.read_text().splitlines()
    return sum(1 for line in lines if f"[{task_id}] succeeded" in line or f"[{task_id}] ignored" in line)


def test_a_completed_run_keeps_its_records_for_the_ttl_and_its_bookkeeping_for_a_grace() -> None:
    run = flows.fan_flow.delay(n=4)
    assert run.result(timeout=60) == 12
    store = get_store()
    redis = store.redis
    trids = sorted(row["id"] for row in run.task_runs())
    assert len(trids) == 5
    lasting = {keys.flow_run(run.id), keys.flow_done(run.id), keys.flow_tasks(run.id)}
    lasting |= {keys.task_run(t) for t in trids} | {keys.result(t) for t in trids}
    grace = {keys.finals(run.id), keys.remaining(run.id)}
    plan = keys.plan(run.id)  # on a grace too once an API records the run (the last test here)
    # the edges (downstream sets, join tables) go right after the end, in the worker that ended it
    eventually(lambda: keys_naming(redis, [run.id, *trids]) == lasting | grace | {plan}, 30, what="the designed keys")
    settings = get_settings()
    assert settings.finished_grace_seconds < settings.result_ttl_seconds
    for key in grace:
        assert 0 < redis.ttl(key) <= settings.finished_grace_seconds, key
    for key in lasting:
        assert redis.ttl(key) > settings.result_ttl_seconds - 60, key
    assert store.task_runs.all_final(run.id) == dict.fromkeys(trids, "Completed")  # the guards' view meanwhile
    stored = redis.hgetall(keys.flow_run(run.id))
    assert "id" not in stored and "root" not in stored  # the key names the run: not kept twice
    record = store.flow_runs.read(run.id)
    assert (record["id"], record["root"], record["state"]) == (run.id, run.id, "Completed")
    assert store.flow_runs.field(run.id, "root") == run.id
    assert store.flow_runs.read_many([run.id])[0]["root"] == run.id


@pytest.mark.skipif(TEST_BROKER != "redis", reason="pushes a kombu message back on its Redis list")
def test_a_message_delivered_again_after_the_grace_of_a_completed_run_does_nothing(
    redis_url: str, worker_logs: Path
) -> None:
    queue = f"parked-{uuid.uuid4().hex[:8]}"
    run = flows.chain_flow.apply_async(queue=queue)  # nobody consumes it yet
    store = get_store()
    redis = store.redis
    (message,) = redis.lrange(queue, 0, -1)  # the chain's first task run: the others ride in it
    first = next(row["id"] for row in run.task_runs() if row["label"] == "inc-0")
    log = worker_logs / f"{queue}.log"
    with worker(redis_url, ["tests.flows"], queues=queue, concurrency=1, name=f"{queue}@%h", log_path=log):
        assert run.result(timeout=30) == 6
        before = {trid: redis.hgetall(keys.task_run(trid)) for trid in redis.smembers(keys.flow_tasks(run.id))}
        redis.delete(keys.finals(run.id), keys.remaining(run.id))  # what the end of the grace does
        redis.lpush(queue, message)  # delivered again, as kombu restores a message never acknowledged
        eventually(lambda: handled(log, first) == 2, 30, what="the message handled again")
    after = {trid: redis.hgetall(keys.task_run(trid)) for trid in before}
    assert after == before  # nothing started again (no start count, times or worker rewritten)
    assert run.state is StateType.COMPLETED
    assert run.result(timeout=5) == 6
    assert not redis.exists(keys.finals(run.id)) and not redis.exists(keys.remaining(run.id))  # nothing re-made final


def test_the_crash_detector_leaves_a_task_run_of_a_completed_run_alone_after_the_grace() -> None:
    """A worker that died right after a task run ended left its heartbeat behind; the detector comes
    by after the grace (the API was down meanwhile): the record says the task run is final."""
    run = flows.chain_flow.delay(x=2)
    assert run.result(timeout=30) == 8
    store = get_store()
    row = next(r for r in run.task_runs() if r["label"] == "inc-1")
    record = {"root": run.id, "flow_run_id": run.id, "label": "inc-1", "task": "tests.flows.inc", "worker": "gone@h",
              "pid": 1, "attempt": 1, "retries": 0, "retries_used": 0, "again": None, "on_crashed": None,
              "slots": [], "start": 1}  # fmt: skip
    pipe = store.redis.pipeline(transaction=False)
    pipe.delete(keys.finals(run.id), keys.remaining(run.id))  # the grace is over
    pipe.zadd(keys.HEARTBEATS, {row["id"]: time.time() - 3600})  # silent for an hour
    pipe.hset(keys.HEARTBEAT_RECORDS, row["id"], json.dumps(record))
    pipe.execute()
    assert detect_crashes(store, CeleryMessaging(client_app())) == 0
    assert store.task_runs.read(row["id"])["state"] == "Completed"
    assert store.redis.zscore(keys.HEARTBEATS, row["id"]) is None  # taken off by the detector


def test_a_subflow_run_traced_into_its_parents_tree_keeps_its_root_in_its_record() -> None:
    run = flows.parent_flow.delay()
    assert run.result(timeout=60) == {"first": 1, "second": 2, "third": 2}
    store = get_store()
    children = store.flow_runs.subflows(run.id)
    assert len(children) == 3
    for child in children:
        stored = store.redis.hgetall(keys.flow_run(child))
        assert "id" not in stored and stored["root"] == run.id  # its root is another run's id: kept
        record = store.flow_runs.record(child)
        assert record is not None and (record.id, record.root, record.is_root) == (child, run.id, False)
        assert store.flow_runs.field(child, "root") == run.id


def test_the_plan_of_a_completed_run_goes_after_the_grace_once_the_database_holds_its_graph(
    http: httpx.Client,
) -> None:
    failed = flows.failing_flow.delay()
    done = flows.fan_flow.delay(n=3)
    assert done.result(timeout=60) == 6
    assert failed.wait(timeout=60) is StateType.FAILED
    redis = get_store().redis
    grace = get_settings().finished_grace_seconds

    def recorded(run_id: str, state: str) -> bool:
        row = http.get(f"/flow-runs/{run_id}")
        return row.status_code == 200 and row.json()["state"] == state

    eventually(lambda: recorded(done.id, "Completed") and recorded(failed.id, "Failed"), 60, what="both recorded")
    assert len(http.get(f"/flow-runs/{done.id}/graph").json()["nodes"]) == 4  # the graph is in the database
    eventually(lambda: 0 < redis.ttl(keys.plan(done.id)) <= grace, 30, what="the completed run's plan on a grace")
    assert redis.ttl(keys.plan(failed.id)) > grace  # a failed run may be retried: its plan stays
    assert http.post(f"/flow-runs/{failed.id}/retry").status_code == 202
    assert failed.wait(timeout=60) is StateType.FAILED  # explode fails again; what completed was kept
