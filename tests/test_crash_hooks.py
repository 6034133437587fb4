"""``on_crashed`` hooks of a task (issue 17, item 4): a worker killed with SIGKILL in the middle of
the task; the API's crash detector declares the task run Crashed and a worker of the task's queue
that has its code runs the hook, once."""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import httpx

from orchestrator.devstack.localstack import api_server, redis_server, worker
from orchestrator.runstate.store import RunStore
from tests import crash_hook_flows as flows
from tests.api_support import eventually, heartbeat_renewed, submit, wait_final


def test_a_crashed_tasks_on_crashed_hook_runs_once_on_a_worker_of_its_queue(
    redis_url: str, worker_logs: Path, tmp_path: Path
) -> None:
    del redis_url  # the session's settings (1 s heartbeats), on a Redis of this test's own
    marker = uuid.uuid4().hex[:8]
    modules = ["tests.crash_hook_flows"]
    with (
        redis_server() as own_url,
        api_server(own_url, f"sqlite:///{tmp_path / 'api.db'}", log_path=worker_logs / f"ch-api-{marker}.log") as api,
        httpx.Client(base_url=api.url, timeout=15) as http,
    ):
        redis = RunStore(own_url).redis
        with worker(
            own_url, modules, queues=flows.QUEUE, concurrency=1, name=f"ch-doomed-{marker}@%h",
            log_path=worker_logs / f"ch-doomed-{marker}.log",
        ) as doomed:  # fmt: skip
            created = submit(http, "killed-mid-task", parameters={"marker": marker})
            eventually(lambda: redis.get(flows.running_key(marker)), 30, what="the task running")
            heartbeat_renewed(own_url, created["id"])  # it has heartbeated
            os.killpg(doomed.pid, signal.SIGKILL)
            with worker(
                own_url, modules, queues=flows.QUEUE, concurrency=1, name=f"ch-rescue-{marker}@%h",
                log_path=worker_logs / f"ch-rescue-{marker}.log",
            ):  # fmt: skip
                run = wait_final(http, created["id"], timeout=60)
                assert run["state"] == "Failed"
                (task_run,) = http.get(f"/flow-runs/{created['id']}/task-runs").json()
                assert task_run["state"] == "Crashed"
                calls = eventually(lambda: redis.lrange(flows.hooks_key(marker), 0, -1), 30, what="the hook called")
                time.sleep(2)  # a second call (another detector pass, a redelivery) would land by now
                calls = redis.lrange(flows.hooks_key(marker), 0, -1)
                assert calls == [f"Crashed:{task_run['id']}:True"]  # once, with the detector's message


def test_a_worker_killed_before_its_tasks_first_heartbeat_is_noticed_within_the_crash_window(
    redis_url: str, worker_logs: Path, tmp_path: Path
) -> None:
    """The start script puts a task run under the crash detector as it starts: a worker killed a moment
    into a task (before any heartbeat) is declared dead within the crash window (3 s here), not when
    Redis gives its message back minutes later."""
    del redis_url
    marker = uuid.uuid4().hex[:8]
    modules = ["tests.crash_hook_flows"]
    with (
        redis_server() as own_url,
        api_server(own_url, f"sqlite:///{tmp_path / 'api.db'}", log_path=worker_logs / f"ch0-api-{marker}.log") as api,
        httpx.Client(base_url=api.url, timeout=15) as http,
    ):
        redis = RunStore(own_url).redis
        with worker(
            own_url, modules, queues=flows.QUEUE, concurrency=1, name=f"ch0-doomed-{marker}@%h",
            log_path=worker_logs / f"ch0-doomed-{marker}.log",
        ) as doomed:  # fmt: skip
            created = submit(http, "killed-mid-task", parameters={"marker": marker})
            eventually(lambda: redis.get(flows.running_key(marker)), 30, 0.02, what="the task running")
            os.killpg(doomed.pid, signal.SIGKILL)  # a fresh process: its first heartbeat was a second away
            killed_at = time.monotonic()
            with worker(
                own_url, modules, queues=flows.QUEUE, concurrency=1, name=f"ch0-rescue-{marker}@%h",
                log_path=worker_logs / f"ch0-rescue-{marker}.log",
            ):  # fmt: skip
                run = wait_final(http, created["id"], timeout=30)  # Redis would give the message back in minutes
                assert run["state"] == "Failed"
                (task_run,) = http.get(f"/flow-runs/{created['id']}/task-runs").json()
                assert task_run["state"] == "Crashed"
                assert "stopped heartbeating for 3s" in task_run["state_message"]
                noticed_after = time.monotonic() - killed_at
                calls = eventually(lambda: redis.lrange(flows.hooks_key(marker), 0, -1), 30, what="the hook called")
                assert calls == [f"Crashed:{task_run['id']}:True"]
                assert noticed_after < 25, noticed_after
