"""Worker hosts as Linux network namespaces: a host cut off the network mid-task.

Two hosts (``tests/netns.py``) each run one Celery worker (``ip netns exec``) that reaches
Redis on the test network's bridge address; Redis and the API run in the root namespace.
A task starts on host A, host A's link goes down while it runs, and the API's crash detector
(which hears no more heartbeats from it) marks the task run Crashed and sends it again; host B
runs the retry and the flow run completes there. Host A's worker is never told: it still holds
its unacked message and keeps running its attempt, as a partitioned machine would. Needs root;
skipped where network namespaces cannot be made.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from orchestrator.devstack.localstack import ApiProcess, redis_server, worker
from orchestrator.runs.handle import FlowRun
from orchestrator.runstate import keys
from orchestrator.runstate.store import RunStore
from tests import netns
from tests.api_support import api_database, eventually
from tests.host_flows import HOST_ENV, release_key, returned_key, started_key

FINAL = {"Completed", "Failed", "TimedOut", "Crashed", "UpstreamFailed", "Skipped", "Cancelled"}
TIMEOUT = 60  # generous: the machine is shared
UNACKED = "unacked"  # kombu's Redis transport: delivered, not yet acknowledged messages


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a worker's process group (cut off, it would hang on Redis in a polite shutdown)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@dataclass
class Fleet:
    """Two namespace hosts, Redis and the API (root namespace), and workers started on demand."""

    marker: str
    host_a: netns.Host
    host_b: netns.Host
    redis_url: str  # from this process (loopback)
    hosts_redis_url: str  # from the hosts (the bridge address)
    http: httpx.Client
    redis: Any
    tmp_path: Path
    stack: contextlib.ExitStack

    def start_worker(self, host: netns.Host) -> str:
        """One worker (concurrency 1, queue 'hosts') on ``host``; returns its name once the API knows it."""
        name = f"host-{host.label}-{self.marker}"
        proc = self.stack.enter_context(
            worker(
                self.hosts_redis_url,
                ["tests.host_flows"],
                queues="hosts",
                concurrency=1,
                name=f"{name}@%h",
                log_path=self.tmp_path / f"worker-{host.label}.log",
                extra_env={
                    "ORCHESTRATOR_HEARTBEAT_INTERVAL_SECONDS": "1",
                    "ORCHESTRATOR_RESULT_STORAGE": str(self.tmp_path / "results"),
                    HOST_ENV: host.label,
                },
                command_prefix=host.exec_prefix,
            )
        )
        self.stack.callback(kill_group, proc)  # runs before the worker's own (polite) stop
        eventually(
            lambda: any(w["hostname"].startswith(f"{name}@") for w in self.http.get("/workers").json()),
            TIMEOUT,
            what=f"worker {name} announced to the API",
        )
        return name

    def entries(self, key: str) -> list[dict[str, Any]]:
        return [json.loads(item) for item in self.redis.lrange(key, 0, -1)]

    def task_runs(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.http.get(f"/flow-runs/{run_id}/task-runs").json())

    def history(self, run_id: str) -> list[dict[str, Any]]:
        return list(self.http.get(f"/flow-runs/{run_id}/states").json())

    def live_workers(self) -> list[str]:
        """Names (before the @) of the workers the API lists as live, sorted."""
        return sorted(w["hostname"].split("@")[0] for w in self.http.get("/workers").json())


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    reason = netns.unavailable()
    if reason:
        pytest.skip(reason)
    marker = uuid.uuid4().hex[:8]
    with contextlib.ExitStack() as stack:  # unwinds in reverse: workers, API, Redis, hosts, network
        network = stack.enter_context(netns.network())
        host_a = stack.enter_context(network.host("a"))
        host_b = stack.enter_context(network.host("b"))
        password = uuid.uuid4().hex  # Redis answers other addresses than loopback only with one
        redis_url = stack.enter_context(redis_server(bind=("127.0.0.1", network.gateway), password=password))
        api_key = uuid.uuid4().hex  # the API refuses to listen beyond loopback without one
        api = ApiProcess(
            redis_url,
            stack.enter_context(api_database(tmp_path, None)),
            log_path=tmp_path / "api.log",
            extra_env={
                "ORCHESTRATOR_HEARTBEAT_INTERVAL_SECONDS": "1",  # crash detected after 3 silent seconds
                "ORCHESTRATOR_RESULT_STORAGE": str(tmp_path / "results"),
                "ORCHESTRATOR_API_KEY": api_key,
            },
            host=network.gateway,  # reachable from the hosts too
        )
        stack.callback(api.stop)
        api.start()
        http = stack.enter_context(
            httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=15)
        )
        yield Fleet(
            marker=marker,
            host_a=host_a,
            host_b=host_b,
            redis_url=redis_url,
            hosts_redis_url=redis_url.replace("@127.0.0.1:", f"@{network.gateway}:"),
            http=http,
            redis=redis.Redis.from_url(redis_url, decode_responses=True),
            tmp_path=tmp_path,
            stack=stack,
        )


@dataclass
class FailOver:
    run_id: str
    task_run_id: str
    worker_a: str
    worker_b: str
    cut_at: float


def fail_over(fleet: Fleet) -> FailOver:
    """Run the task on host A, cut host A off mid-task, and check the run completed on host B."""
    worker_a = fleet.start_worker(fleet.host_a)  # alone: the run's task can only start on host A
    response = fleet.http.post(
        "/flows/host-failover/runs",
        json={"parameters": {"marker": fleet.marker, "hold_seconds": 120}},  # attempt 1 holds until released
    )
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]

    def running() -> dict[str, Any] | None:
        tasks = fleet.task_runs(run_id)
        return tasks[0] if tasks and tasks[0]["state"] == "Running" else None

    task = eventually(running, TIMEOUT, what="the task run Running in the database")
    assert task["worker"].startswith(f"{worker_a}@"), task
    (first,) = fleet.entries(started_key(fleet.marker))
    assert (first["attempt"], first["host"], first["address"]) == (1, "a", fleet.host_a.address)  # as Redis saw it
    eventually(
        lambda: fleet.redis.hexists(keys.HEARTBEAT_RECORDS, task["id"]),
        TIMEOUT,
        what="the task run's first heartbeat (what the crash detector needs to send it again)",
    )
    worker_b = fleet.start_worker(fleet.host_b)  # the host that takes over
    fleet.host_a.cut()
    cut_at = time.time()

    def final() -> dict[str, Any] | None:
        run = fleet.http.get(f"/flow-runs/{run_id}").json()
        return dict(run) if run["state"] in FINAL else None

    run = eventually(final, TIMEOUT, what="the flow run final after host A was cut off")
    assert run["state"] == "Completed", run

    (task,) = fleet.task_runs(run_id)
    assert task["state"] == "Completed" and task["attempts"] == 2, task
    assert task["worker"].startswith(f"{worker_b}@"), task  # finished by host B
    history = fleet.history(run_id)
    task_states = [s for s in history if s["run_id"] == task["id"] and s["applied"]]
    assert [s["state"] for s in task_states] == ["Running", "Crashed", "AwaitingRetry", "Retrying", "Completed"]
    assert [s["cause"].split("@")[0] for s in task_states if s["state"] in ("Running", "Retrying", "Completed")] == [
        f"worker {worker_a}",
        f"worker {worker_b}",
        f"worker {worker_b}",
    ]
    crashed = next(s for s in task_states if s["state"] == "Crashed")
    assert f"{worker_a}@" in crashed["message"] and "heartbeat" in crashed["message"], crashed
    assert worker_b not in crashed["message"]
    flow_states = [s["state"] for s in history if s["run_id"] == run_id and s["applied"]]
    assert flow_states == ["Pending", "Running", "Completed"]
    assert not [s for s in history if not s["applied"]]  # no late or duplicate reports

    result = FlowRun(run_id, store=RunStore(fleet.redis_url)).result(timeout=10)
    assert (result["attempt"], result["host"], result["address"]) == (2, "b", fleet.host_b.address), result
    started = [(e["attempt"], e["host"]) for e in fleet.entries(started_key(fleet.marker))]
    assert started == [(1, "a"), (2, "b")]  # each attempt ran once: none lost, none twice
    detected = dt.datetime.fromisoformat(crashed["time"]).timestamp() - cut_at
    print(f"\nhost A cut off; Crashed recorded {detected:.1f}s later (heartbeat 1 s x 3); run Completed on host B")
    return FailOver(run_id, task["id"], worker_a, worker_b, cut_at)


def test_a_host_cut_off_mid_task_gives_crashed_then_the_retry_completes_on_another_host(fleet: Fleet) -> None:
    done = fail_over(fleet)  # host A's attempt is never released: its worker is killed at the end
    assert [e["host"] for e in fleet.entries(returned_key(fleet.marker))] == ["b"]
    assert fleet.redis.hlen(UNACKED) == 1  # host A still holds its message (unacked; not redelivered)
    eventually(
        lambda: done.task_run_id not in fleet.redis.zrange(keys.HEARTBEATS, 0, -1),
        TIMEOUT,
        what="no heartbeat entry left for the finished task run",
    )
    eventually(
        lambda: fleet.live_workers() == [done.worker_b], TIMEOUT, what="the API's fleet view without the cut-off host"
    )


def test_a_cut_off_host_that_comes_back_cannot_overwrite_the_retry(fleet: Fleet) -> None:
    """Host A rejoins with its first attempt still running; it finishes, but the task run was final already."""
    done = fail_over(fleet)
    states = fleet.history(done.run_id)
    fleet.host_a.heal()
    fleet.redis.set(release_key(fleet.marker), 1)  # host A's attempt sees it once its connection recovers

    eventually(
        lambda: [e["host"] for e in fleet.entries(returned_key(fleet.marker))] == ["b", "a"],
        TIMEOUT,
        what="host A's first attempt returned once its network was back",
    )
    eventually(lambda: fleet.redis.hlen(UNACKED) == 0, TIMEOUT, what="host A's attempt ended and acked its message")
    eventually(
        lambda: fleet.live_workers() == sorted([done.worker_a, done.worker_b]), TIMEOUT, what="host A live again"
    )
    eventually(
        lambda: done.task_run_id not in fleet.redis.zrange(keys.HEARTBEATS, 0, -1),
        TIMEOUT,
        what="host A's last heartbeat clean-up (no stale entry for the crash detector)",
    )

    def recorder_caught_up() -> bool:
        last = fleet.redis.xinfo_stream(keys.EVENTS_STREAM)["last-generated-id"]
        groups = fleet.redis.xinfo_groups(keys.EVENTS_STREAM)
        return bool(groups) and all(g["last-delivered-id"] == last and g["pending"] == 0 for g in groups)

    eventually(recorder_caught_up, TIMEOUT, what="the recorder has written every event, also host A's")
    assert fleet.history(done.run_id) == states  # host A's late finish changed nothing
    (task,) = fleet.task_runs(done.run_id)
    assert task["state"] == "Completed" and task["worker"].startswith(f"{done.worker_b}@"), task
    result = FlowRun(done.run_id, store=RunStore(fleet.redis_url)).result(timeout=10)
    assert (result["attempt"], result["host"]) == (2, "b"), result
