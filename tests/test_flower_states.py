"""Every task run that ends, ends in Flower too (issue 19, item 3), read over Flower's HTTP API.

Flower builds its view from Celery's task events. Three of our ends sent none, or the wrong one:

- a Skipped task (``raise SKIP``, a trigger rule that says no) ends its execution with Celery's
  ``Ignore`` (the canvas must stop there), for which Celery sends no final event: Flower showed
  it STARTED forever, with a Terminate button;
- a task run ended UpstreamFailed (or Skipped after a skip) without running is never sent to a
  worker, so Flower never heard of it;
- a sensor that gave up raised its last poke's ``RETRY`` signal: Flower showed FAILURE with
  ``RETRY('...')`` as the exception, which reads as a retry.

Now each ends in the Celery state closest to ours with our state named in its text: Skipped is
SUCCESS with result "Skipped: why", UpstreamFailed is FAILURE with exception "UpstreamFailed:
why", a sensor that gave up is FAILURE with "Failed: sensor gave up: ...". Real processes: the
session's redis-server, a worker importing tests.flower_state_flows, and Flower.
"""

from __future__ import annotations

import os
import secrets
import signal
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.devstack.localstack import api_server, flower, redis_server, worker
from orchestrator.runstate.store import RunStore
from orchestrator.states import StateType
from tests import flower_state_flows as flows
from tests.api_support import eventually, submit, wait_final

CREDENTIALS = ("ops", secrets.token_urlsafe(16))
READY = {"SUCCESS", "FAILURE", "REVOKED"}


@dataclass
class Stack:
    """Flower's URL and the run store of the session's Redis."""

    flower_url: str
    store: RunStore

    def run(self, flow: Any) -> dict[str, dict[str, str]]:
        """Run ``flow`` on the worker until it ends; its task run records by label."""
        handle = flow.delay()
        handle.wait(120)
        return {record["label"]: record for record in self.store.task_runs.of_flow(handle.id)}

    def flower_tasks(self, records: dict[str, dict[str, str]], timeout: float = 60) -> dict[str, dict[str, Any]]:
        """Flower's view of each task run (by label), once Flower shows every one of them ended."""
        return flower_tasks(self.flower_url, records, timeout)


def flower_tasks(flower_url: str, records: dict[str, dict[str, str]], timeout: float = 60) -> dict[str, dict[str, Any]]:
    """Flower's view of each task run of ``records`` (by label), once it shows every one ended."""

    def all_ended() -> dict[str, dict[str, Any]] | None:
        response = httpx.get(f"{flower_url}/api/tasks", auth=CREDENTIALS, timeout=30)
        response.raise_for_status()
        tasks = response.json()
        seen = {label: tasks.get(record["id"]) for label, record in records.items()}
        if all(task is not None and task["state"] in READY for task in seen.values()):
            return seen  # type: ignore[return-value]
        return None

    return eventually(all_ended, timeout, interval=0.5, what=f"Flower shows {sorted(records)} ended")


def until_flower_listens(stack: Stack, attempts: int = 12) -> None:
    """Run :func:`flows.warm_up` until Flower shows its task ended. Flower answers HTTP before its
    event receiver has subscribed, and task events are published to whoever listens at that moment:
    a test's first run, on a loaded machine, could end before Flower heard anything."""
    for attempt in range(attempts):
        try:
            stack.flower_tasks(stack.run(flows.warm_up), timeout=5)
            return
        except AssertionError:
            if attempt == attempts - 1:
                raise


@pytest.fixture(scope="module")
def stack(redis_url: str, worker_logs: Path) -> Iterator[Stack]:
    with (
        worker(
            redis_url,
            ["tests.flower_state_flows"],
            queues=flows.QUEUE,
            concurrency=2,
            name="flower-states@%h",
            log_path=worker_logs / "flower-states.log",
        ),  # fmt: skip
        flower(redis_url, basic_auth=":".join(CREDENTIALS), log_path=worker_logs / "flower-states-flower.log") as url,
    ):
        ready = Stack(url, RunStore(redis_url))
        until_flower_listens(ready)
        yield ready


def name_of(task: Callable[..., Any]) -> str:
    return f"{flows.__name__}.{task.__name__}"


def test_a_skipped_task_and_the_task_it_skips_end_success_naming_skipped(stack: Stack) -> None:
    records = stack.run(flows.skip_then_after)
    assert {label: r["state"] for label, r in records.items()} == {"nothing_to_do-0": "Skipped", "after-0": "Skipped"}
    seen = stack.flower_tasks(records)
    skipped = seen["nothing_to_do-0"]  # received and started, then Ignore: Celery's own events end at STARTED
    assert (skipped["state"], skipped["result"]) == ("SUCCESS", "Skipped: nothing to do for skip")
    downstream = seen["after-0"]  # never sent to a worker
    assert downstream["state"] == "SUCCESS"
    assert downstream["result"] == "Skipped: not run: upstream nothing_to_do-0 ended Skipped"
    assert downstream["name"] == name_of(flows.after)


def test_tasks_that_never_ran_because_an_upstream_failed_end_failure_naming_upstream_failed(stack: Stack) -> None:
    records = stack.run(flows.break_then_downstream)
    states = {label: r["state"] for label, r in records.items()}
    assert states == {
        "breaks-0": "Failed",
        "fine-0": "Completed",
        "alert-0": "Skipped",
        "after-0": "UpstreamFailed",
        "joined-0": "UpstreamFailed",
    }
    seen = stack.flower_tasks(records)
    for label in ("after-0", "joined-0"):
        assert seen[label]["state"] == "FAILURE", label
        assert seen[label]["exception"] == "UpstreamFailed: not run: upstream breaks-0 ended Failed", label
    assert seen["after-0"]["name"] == name_of(flows.after)
    assert seen["joined-0"]["name"] == name_of(flows.joined)
    alert = seen["alert-0"]  # its trigger rule said no: received, then Ignore
    assert (alert["state"], alert["result"]) == (
        "SUCCESS",
        "Skipped: not run: trigger any_failed and no upstream failed",
    )
    # the ends Celery reports itself are as before: the user's exception, and a plain success
    assert (seen["breaks-0"]["state"], seen["breaks-0"]["exception"]) == (
        "FAILURE",
        "ValueError('broken on purpose: upstream')",
    )
    assert seen["fine-0"]["state"] == "SUCCESS"


def test_a_task_a_dynamic_body_submits_after_its_upstream_failed_ends_failure_in_flower(stack: Stack) -> None:
    records = stack.run(flows.dynamic_after_failure)
    assert records["after-0"]["state"] == StateType.UPSTREAM_FAILED.value
    seen = stack.flower_tasks({label: records[label] for label in ("breaks-0", "after-0")})
    assert seen["after-0"]["state"] == "FAILURE"
    assert seen["after-0"]["exception"] == "UpstreamFailed: not run: upstream breaks-0 ended Failed"
    assert seen["after-0"]["name"] == name_of(flows.after)


def test_a_sensor_that_gave_up_ends_failure_naming_failed_not_retry(stack: Stack) -> None:
    records = stack.run(flows.sensor_gives_up)
    assert records["never_ready-0"]["state"] == "Failed"
    seen = stack.flower_tasks(records)
    sensor = seen["never_ready-0"]
    assert sensor["state"] == "FAILURE"
    assert "RETRY(" not in sensor["exception"]
    assert sensor["exception"].startswith("TaskRunFailed('Failed: sensor gave up: still not ready after")
    assert "last poke said: the file is still not there" in sensor["exception"]


def test_a_task_run_cancelled_before_it_was_sent_ends_revoked_in_flower(stack: Stack) -> None:
    records = stack.run(flows.timed_out_before_after)
    assert {label: r["state"] for label, r in records.items()} == {"slow-0": "Cancelled", "after-0": "Cancelled"}
    seen = stack.flower_tasks(records)
    assert seen["slow-0"]["state"] == "REVOKED"  # terminated where it ran: Celery's own event
    never_sent = seen["after-0"]
    assert never_sent["state"] == "REVOKED"
    assert never_sent["exception"].startswith("Cancelled: cancelled: flow run "), never_sent["exception"]
    assert never_sent["name"] == name_of(flows.after)


def test_a_crashed_task_and_its_upstream_failed_downstream_end_failure_in_flower(
    redis_url: str, worker_logs: Path, tmp_path: Path
) -> None:
    """The crash detector runs in the API's process: it sends the events of the task run it ends
    Crashed (Celery last saw it STARTED on a worker that is gone) and of its downstream."""
    del redis_url  # the session's settings (1 s heartbeats), on a Redis of this test's own
    marker = uuid.uuid4().hex[:8]
    with (
        redis_server() as own_url,
        flower(own_url, basic_auth=":".join(CREDENTIALS), log_path=worker_logs / f"fs-flower-{marker}.log") as url,
        api_server(own_url, f"sqlite:///{tmp_path / 'api.db'}", log_path=worker_logs / f"fs-api-{marker}.log") as api,
        httpx.Client(base_url=api.url, timeout=15) as http,
    ):
        store = RunStore(own_url)
        with worker(
            own_url, ["tests.flower_state_flows"], queues=flows.CRASH_QUEUE, concurrency=1,
            name=f"fs-doomed-{marker}@%h", log_path=worker_logs / f"fs-doomed-{marker}.log",
        ) as doomed:  # fmt: skip
            created = submit(http, "killed-then-after", parameters={"marker": marker})
            eventually(lambda: store.redis.get(flows.running_key(marker)), 30, 0.05, what="the task running")
            os.killpg(doomed.pid, signal.SIGKILL)
            assert wait_final(http, created["id"], timeout=60)["state"] == "Failed"
        records = {record["label"]: record for record in store.task_runs.of_flow(created["id"])}
        states = {label: r["state"] for label, r in records.items()}
        assert states == {"killed-0": "Crashed", "after-0": "UpstreamFailed"}
        seen = flower_tasks(url, records)
        crashed = seen["killed-0"]
        assert crashed["state"] == "FAILURE"
        assert crashed["exception"].startswith(f"Crashed: worker fs-doomed-{marker}@"), crashed["exception"]
        assert "stopped heartbeating" in crashed["exception"]
        assert seen["after-0"]["state"] == "FAILURE"
        assert seen["after-0"]["exception"] == "UpstreamFailed: not run: upstream killed-0 ended Crashed"
        assert seen["after-0"]["name"] == name_of(flows.after)
