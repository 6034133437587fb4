"""Subflows as runs of their own and flows that trigger flows, on a real worker, Redis and API.

A subflow whose body computes with its inputs cannot be traced with planned futures: it is a
node of its parent's plan that starts the child as a run of its own once its inputs exist, and
the parent stays compiled. ``child.delay()`` and ``run_deployment`` in a body are such nodes
too. The worker here has two slots: a parent waiting for a child must hold none.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.devstack.localstack import ApiProcess, api_server, worker
from orchestrator.runs.create import FlowSpec, start_linked_run
from orchestrator.runs.handle import FlowRun
from orchestrator.runs.lifecycle import stop_flow_run
from orchestrator.runstate.store import RunStore, get_store
from orchestrator.states import StateType
from orchestrator.transport.messaging import client_messaging
from tests import linked_flows
from tests.api_support import eventually

QUEUE = linked_flows.QUEUE


@pytest.fixture(scope="module")
def linked_worker(redis_url: str, worker_logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """One worker, two slots, on the ``linked`` queue."""
    with worker(
        redis_url,
        ["tests.linked_flows"],
        queues=QUEUE,
        concurrency=2,
        name="linked@%h",
        log_path=worker_logs / "linked.log",
    ) as proc:
        yield proc


def children_of(store: RunStore, run_id: str) -> list[dict[str, str]]:
    """The runs of their own ``run_id``'s tree started, as records."""
    return [store.flow_runs.read(child) for child in store.linked.children(run_id)]


def task_rows(run: FlowRun) -> dict[str, dict[str, Any]]:
    return {row["label"]: row for row in run.task_runs()}


def test_side_by_side_subflows_run_at_once_and_a_computing_child_is_a_run_of_its_own(
    linked_worker: subprocess.Popen[bytes],
) -> None:
    run = linked_flows.three_producers_and_a_total.delay()
    result = run.result(timeout=60)
    assert result["total"]["value"] == 3 and result["third"] == 3
    store = get_store()
    assert run.info["mode"] == "static"  # the child that computes did not make its parent dynamic
    (child,) = children_of(store, run.id)
    assert child["flow"] == "total" and child["parent"] == run.id and child["root"] == child["id"]
    assert child["state"] == "Completed" and child["mode"] == "static"  # traced with a=1, b=2, then compiled
    rows = task_rows(run)
    naps = [rows[label] for label in rows if label.startswith("nap-")]
    span = {round(float(r["ended"]) - float(r["started"])): (float(r["started"]), float(r["ended"])) for r in naps}
    assert set(span) == {1, 2, 3}
    assert span[1][0] < span[2][1] and span[2][0] < span[1][1], "the 2 s and 1 s producers did not overlap"
    # the 3 s producer takes the slot the 1 s one frees; the total's own task needs the other slot,
    # free only if the node waiting for its child holds none: it runs while the 3 s producer sleeps
    assert result["total"]["at"] < span[3][1], "the dependent child waited for an unrelated producer or a slot"
    assert span[3][1] - min(start for start, _ in span.values()) < 5.5, "the producers ran one after another"
    node = next(r for label, r in rows.items() if label.startswith("subflow-total"))
    assert node["state"] == "Completed" and node["child_run"].endswith(child["id"])


def test_a_child_of_a_child_is_a_run_of_its_own_with_its_parent_recorded(
    linked_worker: subprocess.Popen[bytes],
) -> None:
    run = linked_flows.outer.delay()
    assert run.result(timeout=60) == 109  # leaf_sum(6, 3) = 6 + 3 + 100
    store = get_store()
    (middle,) = children_of(store, run.id)
    assert middle["flow"] == "middle" and middle["parent"] == run.id
    (leaf,) = children_of(store, middle["id"])
    assert leaf["flow"] == "leaf-sum" and leaf["parent"] == middle["id"] and leaf["state"] == "Completed"
    assert json.loads(leaf["parameters"]) == {"a": 6, "b": 3}


def test_retrying_a_parent_reruns_only_the_child_that_failed(
    linked_worker: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    flaky, steady = tmp_path / "flaky", tmp_path / "steady"
    run = linked_flows.parent_with_a_flaky_child.delay(str(flaky), str(steady))
    assert run.result(timeout=60) == {"steady": "done", "child": 2}
    assert run.info["attempt"] == 2
    assert len(steady.read_text().splitlines()) == 1, "the task that completed ran again on the retry"
    children = sorted(children_of(get_store(), run.id), key=lambda r: float(r["created"]))
    assert [c["state"] for c in children] == ["Failed", "Completed"]
    assert children[0]["id"] != children[1]["id"]


def test_a_with_options_child_run_keeps_its_options(linked_worker: subprocess.Popen[bytes]) -> None:
    run = linked_flows.names_its_child.delay()
    assert run.result(timeout=60)["value"] == 3
    (child,) = children_of(get_store(), run.id)
    assert child["name"] == "sum-of-1-and-2"


def test_delay_in_a_body_is_a_planned_node_whose_value_is_the_linked_run_id(
    linked_worker: subprocess.Popen[bytes],
) -> None:
    run = linked_flows.triggers_echo.delay(4)
    out = run.result(timeout=60)
    child = FlowRun(out["run_id"])
    assert out["text"] == f"started {child.id}"
    assert child.result(timeout=30) == 5
    assert child.info["parent"] == run.id
    assert run.info["mode"] == "static"


def test_plan_of_a_flow_that_triggers_another_starts_nothing(redis_url: str) -> None:
    store = get_store()
    before = store.redis.xlen("orc:events") if store.redis.exists("orc:events") else 0
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orchestrator.cli",
            "plan",
            "tests.linked_flows:triggers_echo",
            "-p",
            "value=1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ | {"ORCHESTRATOR_REDIS_URL": redis_url},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    plan = json.loads(done.stdout)
    kinds = {node["label"]: node["kind"] for node in plan["nodes"]}
    assert any(kind == "flow_run" and label.startswith("trigger-echo") for label, kind in kinds.items()), kinds
    after = store.redis.xlen("orc:events") if store.redis.exists("orc:events") else 0
    assert after == before, "planning wrote run events: something was started"
    plan_of_dep = linked_flows.runs_a_deployment.plan("nightly", True)
    assert [n.kind for n in plan_of_dep.nodes.values()] == ["flow_run"]


def test_a_redelivered_start_never_makes_a_second_child(linked_worker: subprocess.Popen[bytes], tmp_path: Path) -> None:
    run_id = str(uuid.uuid4())
    parent = str(uuid.uuid4())
    spec = FlowSpec.of(linked_flows.echo)
    assert start_linked_run(spec, {"value": 1}, run_id=run_id, parent=parent, parent_task_run="n1")
    assert not start_linked_run(spec, {"value": 1}, run_id=run_id, parent=parent, parent_task_run="n1")
    child = FlowRun(run_id)
    assert child.result(timeout=30) == 1
    assert [r["label"] for r in child.task_runs()] == ["add-0"], "the child ran twice"


def test_a_dynamic_body_submits_children_that_run_at_once(linked_worker: subprocess.Popen[bytes]) -> None:
    run = linked_flows.dynamic_parent.delay(2)
    assert run.result(timeout=60) == [0, 1, 5]
    assert run.info["mode"] == "dynamic"
    store = get_store()
    children = [c for c in children_of(store, run.id) if c["flow"] == "producer"]
    assert len(children) == 2 and all(c["parent"] == run.id for c in children)
    spans = []
    for child in children:
        (row,) = FlowRun(child["id"]).task_runs()
        spans.append((float(row["started"]), float(row["ended"])))
    (_, first_end), (second_start, _) = sorted(spans)
    assert second_start < first_end, "children submitted together ran one after another"


def test_in_process_submit_of_a_subflow_returns_a_future() -> None:
    from orchestrator import flow

    @flow
    def local_parent() -> list[int]:
        futures = [linked_flows.producer.submit(0.2, i) for i in range(3)]
        return [f.result() for f in futures]

    assert local_parent() == [0, 1, 2]


@pytest.fixture(scope="module")
def api(redis_url: str, tmp_path_factory: pytest.TempPathFactory, worker_logs: Path) -> Iterator[ApiProcess]:
    database = tmp_path_factory.mktemp("linked-api") / "api.db"
    with api_server(redis_url, f"sqlite:///{database}", log_path=worker_logs / "linked-api.log") as server:
        yield server


@pytest.fixture(scope="module")
def deploying_worker(redis_url: str, worker_logs: Path, api: ApiProcess) -> Iterator[subprocess.Popen[bytes]]:
    """A worker that knows where the API is (run_deployment nodes ask it for the run)."""
    with worker(
        redis_url,
        ["tests.linked_flows"],
        queues="deploying",
        concurrency=2,
        name="deploying@%h",
        log_path=worker_logs / "deploying.log",
        extra_env={"ORCHESTRATOR_API_URL": api.url.removesuffix("/api")},
    ) as proc:
        yield proc


def test_run_deployment_in_a_body_waits_for_the_result_or_returns_the_run_id(
    linked_worker: subprocess.Popen[bytes], deploying_worker: subprocess.Popen[bytes], api: ApiProcess
) -> None:
    name = f"echo-{uuid.uuid4().hex[:6]}"
    with httpx.Client(base_url=api.url, timeout=15) as http:
        eventually(lambda: http.get("/flows/echo").status_code == 200, 30, what="the worker announced echo")
        made = http.post("/deployments", json={"name": name, "flow_name": "echo", "parameters": {"value": 1}})
        assert made.status_code == 201, made.text
        waited = linked_flows.runs_a_deployment.apply_async({"deployment": name, "wait": True}, queue="deploying")
        assert waited.result(timeout=60) == 41
        assert waited.info["mode"] == "static"
        not_waited = linked_flows.runs_a_deployment.apply_async({"deployment": name, "wait": False}, queue="deploying")
        child_id = not_waited.result(timeout=60)
        child = FlowRun(child_id)
        assert child.result(timeout=30) == 41
        assert child.info["parent"] == not_waited.id
        row = eventually(lambda: (r := http.get(f"/flow-runs/{child_id}").json()).get("parent_id") and r, 20)
        assert row["parent_id"] == not_waited.id


def test_stopping_a_parent_stops_the_child_it_waits_for(linked_worker: subprocess.Popen[bytes]) -> None:
    """Last in the module: terminating the child's task costs the worker a pool process for a moment."""
    run = linked_flows.waits_for_slow_child.delay()
    store = get_store()
    child = eventually(
        lambda: next((c for c in children_of(store, run.id) if c.get("state") == "Running"), None),
        30,
        what="the slow child running",
    )
    child_run = FlowRun(child["id"])
    eventually(lambda: any(r["state"] == "Running" for r in child_run.task_runs()), 30, what="its task running")
    assert stop_flow_run(store, client_messaging(), run.id, StateType.CANCELLED, "cancelled by the test")
    assert child_run.wait(timeout=20) is StateType.CANCELLED
    assert run.wait(timeout=5) is StateType.CANCELLED
    (task_run,) = child_run.task_runs()
    assert task_run["state"] == "Cancelled"
