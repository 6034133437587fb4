"""Delays longer than the broker's visibility timeout never run a task twice, and neither does a
crashed worker's message that comes back after it."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import StateType
from orchestrator.devstack.localstack import api_server, redis_server, worker
from orchestrator.runstate.store import get_store


@pytest.fixture(scope="module")
def short_visibility_worker(redis_url: str, worker_logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A worker whose Redis visibility timeout (2 s) is shorter than the delays (6 s)."""
    with worker(
        redis_url,
        ["tests.flows", "tests.short_visibility"],
        queues="vis",
        concurrency=2,
        name="vis@%h",
        log_path=worker_logs / "vis.log",
        extra_env={"ORCHESTRATOR_VISIBILITY_TIMEOUT_SECONDS": "2"},
    ) as proc:
        yield proc


def test_retry_and_sensor_delays_longer_than_the_visibility_timeout_run_once(
    short_visibility_worker: subprocess.Popen[bytes], worker_logs: Path
) -> None:
    from tests import short_visibility

    run = short_visibility.long_delays.delay()
    assert run.result(timeout=60) == {"retry": "second attempt", "sensor": "found"}
    redis = get_store().redis
    assert redis.get(f"test:executions:fails_once:{run.id}") == "2"
    assert redis.get(f"test:executions:pokes_twice:{run.id}") == "2"
    rows = {r["label"]: r for r in run.task_runs()}
    assert rows["fails_once-0"]["attempts"] == 2
    assert {r["state"] for r in rows.values()} == {StateType.COMPLETED.value}
    log = (worker_logs / "vis.log").read_text()
    assert "retry: Retry in 6s" in log or "next attempt in 6s" in log  # Celery saw RETRY


def test_a_crashed_workers_message_redelivered_after_the_visibility_timeout_never_runs_beside_its_retry(
    redis_url: str, worker_logs: Path, tmp_path: Path
) -> None:
    """The crash detector sends attempt 2 about 3 s after the kill; the dead worker's own message
    (attempt 1) comes back when the visibility timeout (10 s from its delivery) passes, while
    attempt 2 runs: it must not run.

    Attempt 2 waits for a gate (tests/gated_retry_flows.py) that the test opens only once the
    rescue worker has refused the old message as stale, or once that message has run the body
    (a third execution): however slow the machine, the old message comes back beside the retry,
    and the test never guesses how long that takes. Then the broker must hold nothing more (every
    message acknowledged), and the body have run exactly twice.

    On a Redis of its own: any worker restores every unacked message older than its own
    visibility timeout, and this module's other worker (2 s) would redeliver attempt 2 too."""
    del redis_url  # the session's settings (1 s heartbeats), not its Redis
    import httpx

    from orchestrator.runstate.store import RunStore
    from tests import gated_retry_flows as flows
    from tests.api_support import eventually, heartbeat_renewed, submit, wait_final

    marker = uuid.uuid4().hex[:8]
    env = {"ORCHESTRATOR_VISIBILITY_TIMEOUT_SECONDS": "10"}
    modules = ["tests.gated_retry_flows"]
    database = f"sqlite:///{tmp_path / 'api.db'}"
    rescue_log = worker_logs / f"vis-rescue-{marker}.log"
    with (
        redis_server() as own_url,
        api_server(own_url, database, log_path=worker_logs / f"vis-api-{marker}.log") as api,
        httpx.Client(base_url=api.url, timeout=15) as http,
    ):
        redis = RunStore(own_url).redis

        def executions() -> int:
            return int(redis.get(flows.executions_key(marker)) or 0)

        with worker(
            own_url, modules, queues="vis-crash", concurrency=1, name=f"doomed-{marker}@%h",
            log_path=worker_logs / f"vis-doomed-{marker}.log", extra_env=env,
        ) as doomed:  # fmt: skip
            created = submit(http, "killed-then-gated-flow", parameters={"marker": marker})
            eventually(lambda: redis.get(flows.running_key(marker)), 30, what="execution 1 running")
            heartbeat_renewed(own_url, created["id"])  # it has heartbeated
            os.killpg(doomed.pid, signal.SIGKILL)
            with worker(
                own_url, modules, queues="vis-crash", concurrency=2, name=f"rescue-{marker}@%h",
                log_path=rescue_log, extra_env=env,
            ):  # fmt: skip
                eventually(lambda: executions() >= 2, 60, what="attempt 2 running (the crash detector sent it)")
                (task,) = http.get(f"/flow-runs/{created['id']}/task-runs").json()
                refused = f"task run {task['id']}: attempt 1 is stale"
                # the old message comes back within the visibility timeout (and a restore interval)
                # of its delivery: refused (the log line), or run (a third execution)
                eventually(
                    lambda: refused in rescue_log.read_text() or executions() >= 3,
                    60,
                    what="the dead worker's message redelivered while attempt 2 runs",
                )
                redis.set(flows.gate_key(marker), 1)  # attempt 2 may end now
                run = wait_final(http, created["id"], timeout=90)
                # settled: no message left in the queue, none delivered and not acknowledged
                eventually(
                    lambda: redis.llen("vis-crash") == 0 and redis.hlen("unacked") == 0,
                    30,
                    what="every message of the run acknowledged",
                )
        assert run["state"] == "Completed", run
        assert executions() == 2  # killed once, run once more: the redelivered message never ran the body
        states = [
            s["state"]
            for s in http.get(f"/flow-runs/{created['id']}/states").json()
            if s["run_id"] == task["id"] and s["applied"]
        ]
        assert states == ["Running", "Crashed", "AwaitingRetry", "Retrying", "Completed"], states
    assert rescue_log.read_text().count(refused) == 1  # the old message came back once and was refused


def test_a_delayed_message_scheduled_again_while_it_is_being_sent_is_kept() -> None:
    """A task waiting for a concurrency slot asks again with the very same message; if it does so
    before the delayed-message sender has forgotten the copy it just sent, the new entry must survive (it was
    removed, and the task run waited in AwaitingConcurrencySlot forever)."""
    from orchestrator.runstate import keys
    from orchestrator.runstate.store import RunStore

    with redis_server() as url:  # its own: claiming must not delay other tests' messages
        _scheduled_again_is_kept(RunStore(url), keys.DELAYED)


def _scheduled_again_is_kept(store: Any, delayed_key: str) -> None:
    message = f'{{"task": "test.same-message", "id": "{uuid.uuid4()}"}}'
    store.delayed.schedule(message, time.time() - 1)
    claimed_until, due = store.delayed.claim_due(limit=1000)
    assert message in due
    store.delayed.schedule(message, time.time() + 1)  # the sent task already ran and asked again
    store.delayed.sent(message, claimed_until)
    assert store.redis.zscore(delayed_key, message) is not None
    claimed_until, due = store.delayed.claim_due(limit=1000)  # not due yet
    assert message not in due
    store.redis.zadd(delayed_key, {message: time.time() - 1})
    claimed_until, due = store.delayed.claim_due(limit=1000)
    store.delayed.sent(message, claimed_until)  # nothing scheduled it again: forgotten
    assert store.redis.zscore(delayed_key, message) is None


def test_a_task_running_three_times_longer_than_the_visibility_timeout_runs_once(
    short_visibility_worker: subprocess.Popen[bytes],
) -> None:
    """The worker stamps the messages it holds every half second, so Redis never sees this
    one as abandoned (with Celery alone it is given back after 2 s and runs twice)."""
    from tests import short_visibility

    marker = uuid.uuid4().hex[:8]
    run = short_visibility.outlasts_the_timeout_flow.delay(marker=marker)
    assert run.result(timeout=60) == 1
    time.sleep(3)  # a second copy, had one been delivered, would have counted itself by now
    assert get_store().redis.get(f"test:executions:outlasts:{marker}") == "1"
