"""Flows sent with .delay() run on a real Celery worker over a real Redis."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from orchestrator import FlowRun, StateType
from orchestrator.devstack.localstack import worker
from orchestrator.errors import FlowRunFailed, ParameterError
from orchestrator.runs.create import submit_by_name
from orchestrator.runstate import keys
from orchestrator.runstate.store import get_store
from orchestrator.transport.broker import broker_url, queue_lengths
from orchestrator.transport.celery_app import SendOnlyRedisBackend, client_app
from tests import flows
from tests.broker_support import waiting_messages
from tests.redis_monitor import monitoring
from workers.app import app as celery_app

pytestmark = pytest.mark.usefixtures("fleet")


def runs_by_label(run: FlowRun) -> dict[str, dict[str, Any]]:
    return {row["label"]: row for row in run.task_runs()}


def times(row: dict[str, Any]) -> tuple[float, float]:
    return float(row["started"]), float(row["ended"])


def test_chain_runs_in_order_and_returns_the_last_value() -> None:
    run = flows.chain_flow.delay(x=3)
    assert run.result(timeout=30) == 10
    assert run.state is StateType.COMPLETED
    rows = runs_by_label(run)
    assert times(rows["inc-0"])[1] <= times(rows["inc-1"])[0]
    assert times(rows["inc-1"])[1] <= times(rows["double-0"])[0]


def test_fan_out_fan_in() -> None:
    run = flows.fan_flow.delay(n=30)
    assert run.result(timeout=60) == sum(2 * i for i in range(30))
    rows = runs_by_label(run)
    assert len(rows) == 31
    last_part_end = max(times(r)[1] for label, r in rows.items() if label.startswith("double"))
    assert times(rows["total-0"])[0] >= last_part_end


def test_diamond() -> None:
    run = flows.diamond_flow.delay(x=1)
    assert run.result(timeout=30) == (2 * 2) + (2 + 1)
    assert {r["state"] for r in run.task_runs()} == {"Completed"}


def test_task_runs_come_typed_not_as_the_text_redis_keeps() -> None:
    run = flows.chain_flow.delay(x=3)
    assert run.result(timeout=30) == 10
    rows = run.task_runs()
    assert [r["label"] for r in rows] == ["inc-0", "inc-1", "double-0"]
    for row in rows:
        assert row["state"] is StateType.COMPLETED
        assert type(row["attempts"]) is int and row["attempts"] == 1
        assert all(type(row[field]) is float for field in ("created", "started", "ended")), row
        assert row["created"] <= row["started"] <= row["ended"]
        assert isinstance(row["worker"], str) and row["worker"].startswith("fleet@")


def test_non_series_parallel_graph_starts_each_task_when_its_own_upstreams_are_done() -> None:
    run = flows.non_sp_flow.delay(slow=1.5)
    assert run.result(timeout=30) == {"c": "c", "d": "d"}
    rows = runs_by_label(run)
    _a_start, a_end = times(rows["sleepy-0"])
    d_start, _ = times(rows["sleepy-3"])
    c_start, _ = times(rows["sleepy-2"])
    assert d_start < a_end, "D waited for A although it only depends on B"
    assert c_start >= a_end


def test_map_over_a_parameter() -> None:
    run = flows.map_param_flow.delay(values=[1, 2, 3, 4])
    assert run.result(timeout=30) == 20
    assert sum(1 for label in runs_by_label(run) if label.startswith("double")) == 4


def test_map_over_an_upstream_result_expands_at_run_time() -> None:
    run = flows.map_upstream_flow.delay(n=6)
    assert run.result(timeout=30) == sum(2 * i for i in range(6))
    rows = runs_by_label(run)
    children = [label for label in rows if label.startswith("double-0[")]
    assert len(children) == 6
    assert all(rows[c]["state"] == "Completed" for c in children)


def test_a_map_over_an_upstream_result_sends_the_same_bytes_per_run_however_wide_it_is() -> None:
    """Each mapped run's message must not carry the ids of all the others (Celery copies a chord's
    body into every header message): bytes into Redis per mapped run stay flat as the map widens."""
    redis = get_store().redis

    def bytes_per_run(n: int) -> float:
        before = int(redis.info("stats")["total_net_input_bytes"])
        assert flows.map_upstream_flow.delay(n=n).result(timeout=120) == sum(2 * i for i in range(n))
        return (int(redis.info("stats")["total_net_input_bytes"]) - before) / n

    narrow, wide = bytes_per_run(200), bytes_per_run(2000)
    assert wide < 1.5 * narrow, (narrow, wide)  # with every id in every message: about 10x


def test_map_over_an_empty_upstream_result() -> None:
    run = flows.map_upstream_flow.delay(n=0)
    assert run.result(timeout=30) == 0


def test_subflows_side_by_side_run_concurrently_and_a_dependent_one_waits_only_for_its_input() -> None:
    run = flows.parent_flow.delay()
    assert run.result(timeout=30) == {"first": 1, "second": 2, "third": 2}
    rows = runs_by_label(run)
    _first_start, first_end = times(rows["sleepy-0"])
    second_start, second_end = times(rows["sleepy-1"])
    third_start, _ = times(rows["double-0"])
    assert second_start < first_end, "sibling subflows did not overlap"
    assert third_start >= first_end
    assert third_start < second_end, "the dependent subflow waited for the unrelated one"
    children = [r for r in run.task_runs() if r["flow_run_id"] != run.id]
    assert {r["flow_run_id"] for r in children} != set()


def test_dynamic_flow_finishes_on_one_worker_with_concurrency_one(solo_worker: subprocess.Popen[bytes]) -> None:
    run = flows.dynamic_flow.delay(x=1)
    assert run.result(timeout=60) == 13
    assert run.info["mode"] == "dynamic"
    assert {r["worker"].split("@")[0] for r in run.task_runs()} == {"solo"}


def test_wait_for_without_data_orders_tasks() -> None:
    run = flows.wait_for_flow.delay()
    assert run.result(timeout=30) == "loaded"
    rows = runs_by_label(run)
    assert times(rows["sleepy-1"])[0] >= times(rows["sleepy-0"])[1]


def test_traced_wait_makes_later_tasks_wait() -> None:
    run = flows.barrier_flow.delay()
    assert run.result(timeout=30) == 1
    rows = runs_by_label(run)
    assert times(rows["inc-0"])[0] >= times(rows["sleepy-0"])[1]


def test_flow_that_returns_early_completes_after_its_tasks() -> None:
    run = flows.early_return_flow.delay()
    assert run.result(timeout=30) == "early"
    (row,) = run.task_runs()
    assert row["state"] == "Completed"
    assert float(run.info["ended"]) >= float(row["ended"])


def test_non_json_return_value_fails_with_a_message_that_says_how_to_fix_it() -> None:
    run = flows.unsendable_flow.delay()
    with pytest.raises(FlowRunFailed) as caught:
        run.result(timeout=30)
    (row,) = run.task_runs()
    assert row["state"] == "Failed"
    for expected in ("tests.flows.unsendable", "builtins.object", 'result_serializer="pickle"'):
        assert expected in row["message"]
    assert "unsendable-0" in str(caught.value)


def test_pickle_is_used_only_by_tasks_that_opt_in() -> None:
    run = flows.pickle_flow.delay()
    assert run.result(timeout=30) == "(1+2j)"


def test_pickled_inputs_reach_pickle_tasks_through_the_run_store() -> None:
    run = flows.pickle_map_flow.delay()
    assert run.result(timeout=30) == ([complex(-2, 1), complex(-4, 3)], "(5+6j)")


def test_failure_marks_downstream_upstream_failed_and_fails_the_run() -> None:
    run = flows.failing_flow.delay()
    assert run.wait(timeout=30) is StateType.FAILED
    rows = runs_by_label(run)
    assert rows["explode-0"]["state"] == "Failed"
    assert "ValueError: boom" in rows["explode-0"]["message"]
    assert rows["inc-0"]["state"] == "UpstreamFailed"
    assert "started" not in rows["inc-0"]


def test_fail_and_skip_signals() -> None:
    run = flows.fail_and_skip_flow.delay()
    assert run.wait(timeout=30) is StateType.FAILED
    rows = runs_by_label(run)
    assert rows["fail_now-0"]["state"] == "Failed"
    assert rows["fail_now-0"]["attempts"] == 1
    assert rows["skip_me-0"]["state"] == "Skipped"
    assert rows["inc-0"]["state"] == "Skipped"


def test_every_task_is_a_celery_task_under_its_own_name_and_messages_carry_run_ids() -> None:
    inspector = client_app().control.inspect(destination=[f"fleet@{socket.gethostname()}"], timeout=2)
    registered = [name for names in (inspector.registered() or {}).values() for name in names]
    for expected in ("tests.flows.add", "tests.flows.sleepy", "orchestrator.expand_map"):
        assert any(name.startswith(expected) for name in registered), registered
    run = flows.slow_flow.delay(seconds=4)
    (row,) = run.task_runs()
    mine: list[dict[str, Any]] = []
    deadline = time.monotonic() + 4
    while not mine and time.monotonic() < deadline:
        active = [t for tasks in (inspector.active() or {}).values() for t in tasks]
        mine = [t for t in active if t["id"] == row["id"]]
    assert mine, "the task run id is the Celery task id"
    assert mine[0]["name"] == "tests.flows.sleepy"
    assert mine[0]["kwargs"]["run"]["flow_run_id"] == run.id
    run.wait(timeout=30)


def test_queue_override_from_apply_async(redis_url: str, worker_logs: Path) -> None:
    queue = f"nobody-listens-{uuid.uuid4().hex[:6]}"
    run = flows.chain_flow.apply_async(parameters={"x": 1}, queue=queue)
    assert run.info["queue"] == queue
    rows = runs_by_label(run)
    # The start message went to that queue (where no worker of the fleet looks), naming the first task
    # run; every later message of the chain is to be sent there too.
    (message,) = waiting_messages(queue)
    assert message.headers["id"] == rows["inc-0"]["id"] and message.headers["task"] == "tests.flows.inc"
    assert message.routing_key == queue
    _, _, embed = message.body
    assert [(s["task"], s["options"]["queue"]) for s in embed["chain"]] == [
        ("tests.flows.double", queue),
        ("tests.flows.inc", queue),
    ]
    assert {r["state"] for r in rows.values()} == {"Pending"} and not any("started" in r for r in rows.values())
    name = f"override-{uuid.uuid4().hex[:6]}"
    log = worker_logs / f"{name}.log"
    with worker(redis_url, ["tests.flows"], queues=queue, concurrency=1, name=f"{name}@%h", log_path=log) as proc:
        assert run.result(timeout=30) == 6
        os.kill(proc.pid, signal.SIGTERM)  # a warm shutdown: the running task ends and is acknowledged first
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    # Every message of the queue was taken and acknowledged (acks are late): a message still held
    # unacknowledged would have been given back to the queue (Redis and RabbitMQ alike) as the worker left.
    assert queue_lengths(get_store(), [queue]) == {queue: 0}, [(m.headers, m.body) for m in waiting_messages(queue)]
    assert {label: r["worker"].split("@")[0] for label, r in runs_by_label(run).items()} == {
        "inc-0": name,
        "inc-1": name,
        "double-0": name,
    }


def test_retries_on_the_fleet_record_each_attempt() -> None:
    run = flows.retry_flow.delay()
    assert run.result(timeout=30) == 3
    (row,) = run.task_runs()
    assert row["attempts"] == 3
    assert row["state"] == "Completed"


def test_dynamic_flow_maps_waits_calls_subflows_and_sees_upstream_failures() -> None:
    run = flows.dynamic_fan_flow.delay(n=4)
    assert run.wait(timeout=60) is StateType.FAILED  # explode-0 is a leaf that failed
    rows = runs_by_label(run)
    assert rows["explode-0"]["state"] == "Failed"
    assert rows["inc-0"]["state"] == "UpstreamFailed"
    assert sum(1 for label in rows if label.startswith("double-")) == 5  # 4 mapped + 1 in the subflow
    child_runs = {r["flow_run_id"] for r in run.task_runs()} - {run.id}
    assert len(child_runs) == 1
    assert FlowRun(child_runs.pop()).state is StateType.COMPLETED


def test_a_run_sent_by_flow_name_is_traced_and_compiled_on_the_worker() -> None:
    run = submit_by_name("diamond-flow", {"x": 1})
    assert run.result(timeout=30) == 7
    assert run.info["mode"] == "static"
    dynamic = submit_by_name("dynamic-flow", {"x": 1}, queue="default")
    assert dynamic.result(timeout=30) == 13


def test_a_run_of_a_flow_no_worker_knows_fails_and_says_why() -> None:
    run = submit_by_name("no-such-flow", {})
    assert run.wait(timeout=30) is StateType.FAILED
    message = run.info["message"]
    assert "no flow named 'no-such-flow'" in message and "--flows" in message


def test_plain_celery_tasks_on_the_worker_app_behave_as_in_celery(redis_url: str) -> None:
    plain = Celery("plain-client", broker=broker_url(), backend=redis_url)
    assert plain.send_task("tests.raw.add", (2, 3), queue="default").get(timeout=10) == 5
    assert isinstance(client_app().backend, SendOnlyRedisBackend)
    assert not isinstance(celery_app.backend, SendOnlyRedisBackend)


def test_with_options_travel_with_the_message() -> None:
    run = flows.with_options_flow.delay()
    assert run.wait(timeout=30) is StateType.FAILED
    (row,) = run.task_runs()
    assert row["attempts"] == 2
    assert "attempt 2 failed" in row["message"]


def test_a_run_sent_by_name_binds_callable_defaults_and_refuses_bad_parameters() -> None:
    run = submit_by_name("etl", {"day": "2026-01-02"})
    assert run.wait(timeout=30) is StateType.FAILED  # examples not on this worker: says so
    bad = submit_by_name("chain-flow", {"nope": 1})
    assert bad.wait(timeout=30) is StateType.FAILED
    assert "no parameter 'nope'" in bad.info["message"]
    dated = submit_by_name("dated-flow", {})
    assert dated.result(timeout=30) == dt.date.today().isoformat()
    for queue in ("orc:events", "default two"):  # another Redis key, or no name at all: nothing is sent
        with pytest.raises(ParameterError, match="queue"):
            submit_by_name("chain-flow", {"x": 1}, queue=queue)


def test_a_long_chain_runs_in_segments_and_in_order() -> None:
    run = flows.long_chain_flow.delay(n=80)
    assert run.result(timeout=60) == 80
    rows = runs_by_label(run)
    ends = [times(rows[f"inc-{i}"]) for i in range(80)]
    assert all(ends[i][1] <= ends[i + 1][0] for i in range(79))


def test_a_task_no_worker_knows_fails_and_names_the_task_and_worker() -> None:
    from tests.unknown_tasks import unknown_task_flow

    run = unknown_task_flow.delay()
    assert run.wait(timeout=30) is StateType.FAILED
    (row,) = run.task_runs()
    assert row["state"] == "Failed"
    assert "tests.unknown_tasks.nobody_imports_me" in row["message"]
    assert "fleet@" in row["message"] and "--flows" in row["message"]


def test_rename_flow_run_from_inside_a_task() -> None:
    run = flows.renamed_flow.delay(name="nightly-2026-01-02")
    assert run.result(timeout=30) == "nightly-2026-01-02"
    assert run.info["name"] == "nightly-2026-01-02"
    assert flows.renamed_flow(name="local-name") == "local-name"  # in-process: no Redis needed


def test_a_redelivered_message_finishes_what_a_crash_left(redis_url: str, worker_logs: Path) -> None:
    """A worker that died right after recording a failure never stopped the downstream."""
    from orchestrator.runstate.store import get_store, now

    run = flows.failing_flow.apply_async(queue="parked")  # nobody consumes it yet
    rows = runs_by_label(run)
    explode = rows["explode-0"]
    store = get_store()
    store.task_runs.finished(run.id, explode["id"], StateType.FAILED, {"ended": now(), "message": "ValueError: boom"})
    assert run.state is StateType.RUNNING  # the crash: inc-0 never marked, the run never ended
    with worker(
        redis_url,
        ["tests.flows"],
        queues="parked",
        concurrency=1,
        name="parked@%h",
        log_path=worker_logs / "parked.log",
    ):
        assert run.wait(timeout=30) is StateType.FAILED
    assert runs_by_label(run)["inc-0"]["state"] == "UpstreamFailed"


def wait_for_logs(run: FlowRun, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while len(run.logs()) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return run.logs()


def test_task_logs_reach_redis_with_their_run_ids() -> None:
    run = flows.logging_flow.delay()
    assert run.result(timeout=30) == 3
    (row,) = run.task_runs()
    logs = wait_for_logs(run, 3)
    assert [line["message"].split("] ", 1)[1] for line in logs] == ["line 1 of 3", "line 2 of 3", "line 3 of 3"]
    assert {line["task_run_id"] for line in logs} == {row["id"]}
    assert {line["level"] for line in logs} == {"INFO"}


def test_logs_of_a_task_killed_mid_run_are_kept_up_to_the_last_flush() -> None:
    run = flows.killed_logging_flow.delay()
    assert run.result(timeout=60) == "second execution"  # redelivered after the kill
    logs = wait_for_logs(run, 1)
    assert [line["message"].split("] ", 1)[1] for line in logs] == ["about to be killed"]


def test_a_flow_body_that_raises_while_traced_ends_its_run_failed_with_the_error() -> None:
    run = flows.body_raises_flow.delay(n=3)
    assert run.wait(30) is StateType.FAILED  # never left Pending
    with pytest.raises(FlowRunFailed) as failed:
        run.result(timeout=5)
    assert "ValueError: no rows for n=3" in str(failed.value)


def _pushed_runs(monitor_lines: list[dict[str, Any]], queue: str) -> list[tuple[str, str]]:
    """(flow run id, who pushed it: 'lua' or 'tcp') of each orchestrator message LPUSHed to ``queue``."""
    pushed = []
    for line in monitor_lines:
        parts = line["command"].split(" ", 2)
        if parts[0].upper() != "LPUSH" or len(parts) < 3 or parts[1] != queue:
            continue
        _, kwargs, _ = json.loads(base64.b64decode(json.loads(parts[2])["body"]))
        if isinstance(kwargs, dict) and isinstance(kwargs.get("run"), dict):
            pushed.append((kwargs["run"]["flow_run_id"], line.get("client_type") or ""))
    return pushed


def test_a_chain_link_goes_out_inside_its_upstream_finish_script(redis_url: str, broker_url: str | None) -> None:
    """With the run store's Redis as broker, the next link of a chain is pushed by the finish script of
    the link before it (one round trip for the end and the send), not by Celery after the task returns;
    the chain still runs in order and each link's start sees its upstream's result."""
    if broker_url is not None:
        pytest.skip("the next link is captured only when the broker is the run store's Redis")
    with monitoring(redis_url) as lines:
        run = flows.chain_flow.delay(x=3)
        assert run.result(timeout=30) == 10
    pushed = [who for run_id, who in _pushed_runs(lines, "default") if run_id == run.id]
    assert pushed == ["tcp", "lua", "lua"]  # the client sends the first link; each end sends the next
    rows = runs_by_label(run)
    assert times(rows["inc-0"])[1] <= times(rows["inc-1"])[0]
    assert times(rows["inc-1"])[1] <= times(rows["double-0"])[0]


def test_a_finish_retried_after_its_reply_was_lost_says_its_messages_went_out() -> None:
    """The finish script runs the sends only when it makes the task run final; the same call again (a
    retry after a lost reply: same fields) reports them sent, so Celery does not send the link twice,
    while another end of that task run (a redelivery) does not, and Celery sends it as before."""
    store = get_store()
    root, trid = str(uuid.uuid4()), str(uuid.uuid4())
    queue = f"test-finish-sends-{uuid.uuid4()}"
    store.redis.set(keys.remaining(root), 2)
    fields = {"ended": repr(time.time()), "worker": "w"}
    sends = [("lpush", queue, "message")]
    first = store.task_runs.finished(root, trid, StateType.COMPLETED, fields, "1", sends)
    assert (first.left, first.sent) == (1, True)
    again = store.task_runs.finished(root, trid, StateType.COMPLETED, fields, "1", sends)
    assert (again.left, again.sent) == (None, True)
    other = store.task_runs.finished(root, trid, StateType.COMPLETED, fields | {"ended": "1.0"}, "1", sends)
    assert (other.left, other.sent) == (None, False)
    assert store.redis.lrange(queue, 0, -1) == ["message"]  # sent once
    store.redis.delete(queue)
    other = str(uuid.uuid4())
    with pytest.raises(redis.ResponseError, match="not a send: del"):  # the script runs sends, nothing else
        store.task_runs.finished(root, other, StateType.COMPLETED, fields, "1", [("del", keys.remaining(root), "")])
    assert store.redis.get(keys.remaining(root)) == "1"  # refused before any write: nothing deleted or counted
    assert store.task_runs.final_states(root, [other]) == {other: None}
