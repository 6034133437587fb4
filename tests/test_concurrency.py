"""Concurrency limits and held-back dispatch, with real processes: an API (its own SQLite
database and services), the session's Redis and fleet worker, and workers started and
killed here.

- a tag limit of 2 keeps 10 tagged tasks to 2 at once, and the waiting ones show
  AwaitingConcurrencySlot, named in the diagnosis;
- a killed worker's slot frees itself, and a task waiting for it then runs;
- a slot lease that nobody renews expires on its own;
- a deployment's flow-run limit keeps its runs from overlapping;
- a deployment whose queue has no worker sends nothing while it is down, and its
  late-run policy, not a stampede, decides what runs when a worker comes back.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from orchestrator.devstack.localstack import ApiProcess, api_server, worker
from orchestrator.runstate import keys
from orchestrator.runstate import slots as concurrency
from orchestrator.runstate.store import RunStore
from tests.api_support import FINAL, cli, eventually, submit, wait_final

LATE_AFTER = 2.0  # seconds; this module's API marks runs Late quickly


@pytest.fixture(scope="module")
def api(
    redis_url: str, fleet: subprocess.Popen[bytes], worker_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    database = f"sqlite:///{tmp_path_factory.mktemp('limits-db') / 'api.db'}"
    env = {"ORCHESTRATOR_LATE_AFTER_SECONDS": str(LATE_AFTER)}
    with api_server(redis_url, database, log_path=worker_logs / "limits-api.log", extra_env=env) as server:
        yield server


def lease_expiry(store: RunStore, tag: str, task_run_id: str) -> float | None:
    """When ``task_run_id``'s lease on a slot of ``tag`` ends (epoch seconds), or None if it holds none."""
    score = store.redis.zscore(keys.slots(tag), task_run_id)
    return None if score is None else float(score)


def stamp(state: dict[str, Any]) -> float:
    """When a state event happened (epoch seconds)."""
    return dt.datetime.fromisoformat(state["time"]).timestamp()


def history(http: httpx.Client, flow_run_id: str) -> list[dict[str, Any]]:
    return [s for s in http.get(f"/flow-runs/{flow_run_id}/states").json() if s["applied"]]


def test_a_tag_limit_of_2_runs_10_tagged_tasks_never_more_than_2_at_once(
    redis_url: str, api: ApiProcess, http: httpx.Client
) -> None:
    made = cli(api, "concurrency-limit", "create", "test-db", "2")
    assert made.returncode == 0, made.stdout + made.stderr
    assert "0 of 2 slots held" in made.stdout
    marker = uuid.uuid4().hex[:8]
    try:
        created = submit(http, "db-fan-flow", parameters={"marker": marker, "n": 10})

        def a_task_waits() -> dict[str, Any] | None:
            found = http.get(f"/flow-runs/{created['id']}/diagnosis").json()
            return found if any("concurrency limit 'test-db'" in r for r in found["reasons"]) else None

        found = eventually(a_task_waits, 30, interval=0.1, what="the diagnosis names the full limit")
        reason = next(r for r in found["reasons"] if "test-db" in r)
        assert "(limit 2)" in reason and "held by" in reason
        held = http.get("/concurrency-limits/test-db").json()
        assert held["limit"] == 2 and held["active"] <= 2

        run = wait_final(http, created["id"], timeout=90)
        assert run["state"] == "Completed", run
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        assert client.get(f"test:db:{marker}:max") == "2"  # the fleet has 4 processes: the limit held them back
        tasks = http.get(f"/flow-runs/{created['id']}/task-runs").json()
        assert len(tasks) == 10 and all(t["state"] == "Completed" for t in tasks)
        waited = [s for s in history(http, created["id"]) if s["state"] == "AwaitingConcurrencySlot"]
        assert waited and "concurrency limit 'test-db'" in waited[0]["message"]
        assert "not in a worker slot" in waited[0]["message"]
        assert http.get("/concurrency-limits/test-db").json()["active"] == 0  # every slot given back
    finally:
        assert cli(api, "concurrency-limit", "delete", "test-db").returncode == 0
    assert http.get("/concurrency-limits/test-db").status_code == 404
    assert "test-db" not in cli(api, "concurrency-limit", "ls").stdout


def test_a_killed_workers_slot_frees_itself_and_the_waiting_task_runs(
    redis_url: str, api: ApiProcess, http: httpx.Client, worker_logs: Path
) -> None:
    assert http.post("/concurrency-limits", json={"tag": "test-lease", "limit": 1}).status_code == 200
    marker = uuid.uuid4().hex[:8]
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        with worker(
            redis_url, ["tests.flows"], queues="crashy", concurrency=1, name=f"doomed-{marker}@%h",
            log_path=worker_logs / "lease.log",
        ) as doomed:  # fmt: skip
            holder = submit(http, "lease-holder-flow", parameters={"marker": marker})
            eventually(lambda: client.get(f"test:lease:{marker}"), 30, what="the lease holder running")
            (slot,) = http.get("/concurrency-limits/test-lease").json()["holders"]
            assert slot["worker"].startswith(f"doomed-{marker}@") and slot["flow_run_id"] == holder["id"]

            taker = submit(http, "lease-taker-flow", parameters={"marker": marker})

            def waiting() -> bool:
                tasks = http.get(f"/flow-runs/{taker['id']}/task-runs").json()
                return bool(tasks) and tasks[0]["state"] == "AwaitingConcurrencySlot"

            eventually(waiting, 30, what="the second task waiting for the only slot")
            assert http.get(f"/flow-runs/{taker['id']}").json()["state"] == "Running"
            store = RunStore(redis_url)
            first_expiry = lease_expiry(store, "test-lease", slot["task_run_id"])
            assert first_expiry is not None

            def kept_past_its_first_lease() -> bool:  # only a heartbeat renewing it keeps it that long
                return time.time() > first_expiry + 0.5 and slot["task_run_id"] in concurrency.live_holders(
                    store, "test-lease"
                )

            eventually(kept_past_its_first_lease, 30, interval=0.1, what="the holder's lease renewed by heartbeats")
            (slot,) = http.get("/concurrency-limits/test-lease").json()["holders"]
            assert slot["flow_run_id"] == holder["id"]  # the waiting task did not get it meanwhile
            assert http.get(f"/flow-runs/{taker['id']}/task-runs").json()[0]["state"] == "AwaitingConcurrencySlot"
            os.killpg(doomed.pid, signal.SIGKILL)  # the holder dies without giving its slot back

        run = wait_final(http, taker["id"], timeout=60)
        assert run["state"] == "Completed", run
        tasks = http.get(f"/flow-runs/{taker['id']}/task-runs").json()
        states = [s["state"] for s in history(http, taker["id"]) if s["run_id"] == tasks[0]["id"]]
        assert states[-3:] == ["AwaitingConcurrencySlot", "Running", "Completed"], states
        assert wait_final(http, holder["id"], timeout=30)["state"] == "Failed"  # its task Crashed, no retries
        assert http.get("/concurrency-limits/test-lease").json()["active"] == 0
    finally:
        http.delete("/concurrency-limits/test-lease")


def test_a_slot_lease_nobody_renews_expires_by_itself(redis_url: str, http: httpx.Client) -> None:
    store = RunStore(redis_url)
    tag = f"lease-{uuid.uuid4().hex[:6]}"
    assert http.post("/concurrency-limits", json={"tag": tag, "limit": 1}).status_code == 200
    try:
        root = str(uuid.uuid4())
        assert concurrency.acquire(store, root, "first", [tag, "unlimited-tag"]) == concurrency.Taken([tag], [tag])
        full = concurrency.acquire(store, root, "second", [tag])
        assert isinstance(full, concurrency.LimitFull) and full.holders == ["first"] and full.limit == 1
        asked_at = time.time()
        again = concurrency.acquire(store, root, "first", [tag])  # asking again while holding it is fine,
        assert again == concurrency.Taken([tag], [])  # and says the slot was held already (not to give back)
        expiry = lease_expiry(store, tag, "first")
        lease = concurrency.lease_seconds()
        assert expiry is not None and asked_at + lease <= expiry <= time.time() + lease  # a lease from now
        # "first" died: no heartbeat renews its lease. "second" asks until it gets the slot, not before the lease ends.
        eventually(
            lambda: concurrency.acquire(store, root, "second", [tag]) == concurrency.Taken([tag], [tag]),
            lease + 10,
            interval=0.1,
            what="the slot free once the unrenewed lease ended",
        )
        assert time.time() >= expiry
        assert concurrency.live_holders(store, tag) == ["second"]
    finally:
        assert http.delete(f"/concurrency-limits/{tag}").status_code == 204
    assert concurrency.live_holders(store, tag) == []


def test_a_deployment_limit_of_1_keeps_its_runs_from_overlapping(api: ApiProcess, http: httpx.Client) -> None:
    name = f"one-at-a-time-{uuid.uuid4().hex[:6]}"
    done = cli(
        api, "deploy", "tests.flows:slow_flow", "--name", name, "--interval", "1",
        "-p", "seconds=1.5", "--concurrency-limit", "1",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    try:

        def three_completed() -> list[dict[str, Any]]:
            runs = http.get("/flow-runs", params={"name": name, "state": "Completed"}).json()["items"]
            return list(runs) if len(runs) >= 3 else []

        runs = eventually(three_completed, 60, what="three runs of the limited deployment completed")
        spans = sorted((dt.datetime.fromisoformat(r["started"]), dt.datetime.fromisoformat(r["ended"])) for r in runs)
        for (_, ended), (started, _) in itertools.pairwise(spans):
            assert started >= ended  # the fleet has 4 processes: only the limit kept them apart
        held = http.get("/flow-runs", params={"name": name, "state": "AwaitingConcurrencySlot"}).json()["items"]
        waited = held or [
            r for r in runs if any(s["state"] == "AwaitingConcurrencySlot" for s in history(http, r["id"]))
        ]
        assert waited, "runs due while one was under way were held back"
        state = history(http, waited[0]["id"])
        held_state = next(s for s in state if s["state"] == "AwaitingConcurrencySlot")
        assert f"deployment {name!r} allows 1 flow runs under way" in held_state["message"]
        assert held_state["cause"] == "services: deployment concurrency limit"
    finally:
        http.post(f"/deployments/{name}/pause")


def test_a_deployment_on_a_queue_with_no_worker_sends_nothing_and_its_policy_clears_the_backlog(
    redis_url: str, api: ApiProcess, http: httpx.Client, worker_logs: Path
) -> None:
    name = f"outage-{uuid.uuid4().hex[:6]}"
    queue = f"q-{name}"
    body = {
        "name": name,
        "flow_name": "chain-flow",
        "queue": queue,
        "interval_seconds": 1,
        "parameters": {"x": 2},
        "late_policy": "newest_only",
    }
    assert http.post("/deployments", json=body).status_code == 201
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:

        def some_cancelled() -> bool:
            page = http.get("/flow-runs", params={"name": name, "state": "Cancelled"}).json()
            return bool(page["total"] >= 3)

        eventually(some_cancelled, 60, what="the newest_only policy cancelling late runs of the outage")
        assert client.llen(queue) == 0  # nothing was sent to a queue no worker consumes
        late = http.get("/flow-runs", params={"name": name, "state": "Late"}).json()["items"]
        assert len(late) <= 1  # newest_only keeps one
        # Unconditionally (not only if one happens to be Late right now): every run cancelled went Late first, for
        # the reason that no worker consumes its queue, and was cancelled while a newer late run was kept.
        runs = http.get("/flow-runs", params={"name": name, "limit": 500}).json()["items"]
        events = {r["id"]: history(http, r["id"]) for r in runs}
        late_at = {
            r["id"]: next(stamp(s) for s in events[r["id"]] if s["state"] == "Late")
            for r in runs
            if any(s["state"] == "Late" for s in events[r["id"]])
        }
        due = {r["id"]: dt.datetime.fromisoformat(r["scheduled_start"]) for r in runs}
        cancelled = [r["id"] for r in runs if r["state"] == "Cancelled"]
        assert len(cancelled) >= 3
        for run_id in cancelled:
            assert run_id in late_at, f"run {run_id} was cancelled without having been Late: {events[run_id]}"
            (was_late,) = [s for s in events[run_id] if s["state"] == "Late"]
            assert f"no live worker consumes queue {queue!r}" in was_late["message"], was_late
            cancelled_at = next(stamp(s) for s in events[run_id] if s["state"] == "Cancelled")
            kept = [k for k, at in late_at.items() if due[k] > due[run_id] and at <= cancelled_at]
            assert kept, f"run {run_id} was cancelled while no newer run was Late: newest_only keeps the newest"
        back_at = time.time()
        with worker(redis_url, ["tests.flows"], queues=queue, concurrency=1, log_path=worker_logs / "outage.log"):

            def one_after_the_outage() -> list[dict[str, Any]]:
                runs = http.get("/flow-runs", params={"name": name, "state": "Completed"}).json()["items"]
                return [r for r in runs if dt.datetime.fromisoformat(r["started"]).timestamp() > back_at]

            eventually(one_after_the_outage, 60, what="a run of the deployment completed once a worker is back")
        assert http.post(f"/deployments/{name}/pause").status_code == 200
        runs = http.get("/flow-runs", params={"name": name, "limit": 500}).json()["items"]
        overdue = [
            r for r in runs if dt.datetime.fromisoformat(r["scheduled_start"]).timestamp() < back_at - LATE_AFTER - 2
        ]
        overdue = [r if r["state"] in FINAL else wait_final(http, r["id"]) for r in overdue]
        ran = [r for r in overdue if r["state"] == "Completed"]
        assert len(ran) <= 1, "of the runs due during the outage, only the newest may run"
        assert all(r["state"] in ("Completed", "Cancelled") for r in overdue), [r["state"] for r in overdue]
    finally:
        http.post(f"/deployments/{name}/pause")
