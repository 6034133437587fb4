"""Durable dynamic bodies (issue 17): a body whose worker dies (``kill -9``) or is stopped (SIGTERM)
resumes on another worker of its queue and replays its journal: a task that completed is not
run again, a task still running is re-attached to, and a body that asks for something else
at a recorded call fails with the non-determinism message.

The module shares one Redis, one API (whose services run the crash detector; 1 s heartbeats, so a
3 s crash window) and one steps worker; each test starts the workers that drive its bodies (stopped
when it ends) and counts its executions under a marker of its own. The test that needs an API set
otherwise runs a stack of its own.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.devstack.localstack import api_server, redis_server, worker
from orchestrator.runs.handle import FlowRun
from orchestrator.runstate.store import RunStore
from tests import durable_flows as flows
from tests.api_support import eventually, submit, wait_final

MODULES = ["tests.durable_flows"]


class Stack:
    """A Redis, an API and a steps worker (started under ``services_marker``), and a way to start
    body workers that stop with ``stack``; ``marker`` names this test's executions and workers."""

    def __init__(
        self, stack: ExitStack, url: str, http: httpx.Client, logs: Path, marker: str, services_marker: str
    ) -> None:
        self.stack, self.url, self.http, self.logs, self.marker = stack, url, http, logs, marker
        self.services_marker = services_marker
        self.store = RunStore(url)
        self.redis = self.store.redis

    def body_worker(self, name: str, extra_env: dict[str, str] | None = None) -> Any:
        return self.stack.enter_context(
            worker(
                self.url,
                MODULES,
                queues=flows.BODIES,
                concurrency=1,
                name=f"{name}-{self.marker}@%h",
                log_path=self.logs / f"durable-{name}-{self.marker}.log",
                extra_env=extra_env,
            )
        )

    def executions(self, marker: str | None = None) -> dict[str, int]:
        return {k: int(v) for k, v in self.redis.hgetall(flows.executions_key(marker or self.marker)).items()}

    def body_field(self, run_id: str, name: str) -> str | None:
        return self.store.flow_runs.field(run_id, name)

    def final(self, run_id: str, timeout: float = 90) -> dict[str, Any]:
        """The run once final in the database; if it is not in time, fail with what Redis and the
        workers' logs say about it (a flaky failure must explain itself)."""
        try:
            return wait_final(self.http, run_id, timeout=timeout)
        except AssertionError as exc:
            record = {k: v for k, v in self.store.flow_runs.read(run_id).items() if k not in ("parameters", "returns")}
            journal = self.store.journal.read(run_id)
            tails = {
                log.name: log.read_text(errors="replace").splitlines()[-8:]
                for marker in {self.marker, self.services_marker}
                for log in sorted(self.logs.glob(f"durable-*-{marker}.log"))
            }
            left = self.store.flow_runs.remaining(run_id)
            raise AssertionError(
                f"{exc}\nrecord: {record}\nremaining: {left}\njournal: {journal}\nlogs: {tails}"
            ) from None

    def result(self, run_id: str) -> Any:
        return FlowRun(run_id, self.store).result(10)


@contextmanager
def durable_stack(worker_logs: Path, tmp_path: Path, api_env: dict[str, str] | None = None) -> Iterator[Stack]:
    marker = uuid.uuid4().hex[:8]
    with ExitStack() as stack:
        url = stack.enter_context(redis_server())
        api = stack.enter_context(
            api_server(
                url,
                f"sqlite:///{tmp_path / 'api.db'}",
                log_path=worker_logs / f"durable-api-{marker}.log",
                extra_env=api_env,
            )
        )
        http = stack.enter_context(httpx.Client(base_url=api.url, timeout=15))
        stack.enter_context(
            worker(
                url,
                MODULES,
                queues=flows.STEPS,
                concurrency=2,
                name=f"steps-{marker}@%h",
                log_path=worker_logs / f"durable-steps-{marker}.log",
            )
        )
        yield Stack(stack, url, http, worker_logs, marker, marker)


def kill_when_steps_began(env: Stack, doomed: Any, at_least: int) -> None:
    """SIGKILL the whole worker (main and pool processes) once ``at_least`` steps began."""
    eventually(lambda: len(env.executions()) >= at_least or None, 60, 0.05, what=f"{at_least} steps begun")
    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait(10)


@pytest.fixture(scope="module")
def services(redis_url: str, worker_logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    del redis_url  # the session's settings (1 s heartbeats), on a Redis of this module's own
    with durable_stack(worker_logs, tmp_path_factory.mktemp("durable-bodies")) as stack:
        yield stack


@pytest.fixture
def env(services: Stack) -> Iterator[Stack]:
    """The module's Redis, API and steps worker, with a fresh marker and body workers of the test's own:
    they stop when it ends, so no body of one test is taken by a worker another test started."""
    with ExitStack() as workers:
        yield Stack(workers, services.url, services.http, services.logs, uuid.uuid4().hex[:8], services.marker)


def test_a_body_killed_mid_run_resumes_elsewhere_and_nothing_completed_runs_twice(env: Stack) -> None:
    doomed = env.body_worker("doomed")
    n = 12
    created = submit(env.http, "long-loop", parameters={"marker": env.marker, "n": n, "seconds": 0.4})
    kill_when_steps_began(env, doomed, 5)  # step 4 is running on the steps worker: it is re-attached to
    env.body_worker("rescue")
    run = env.final(created["id"], timeout=90)
    assert run["state"] == "Completed", run
    assert env.result(created["id"]) == sum(2 * i for i in range(n))
    assert env.executions() == {str(i): 1 for i in range(n)}  # each step began exactly once in all
    assert "resumes" in (env.body_field(created["id"], "body_status") or "")
    assert env.body_field(created["id"], "body_attempt") == "2"


def test_two_hundred_calls_killed_after_the_hundred_and_twentieth_run_each_task_once(env: Stack) -> None:
    """The issue's own figure: a dynamic run of 200 tasks whose body's worker is killed once 120 began."""
    doomed = env.body_worker("doomed")
    n = 200
    created = submit(env.http, "long-loop", parameters={"marker": env.marker, "n": n, "seconds": 0.01})
    kill_when_steps_began(env, doomed, 120)
    env.body_worker("rescue")
    run = env.final(created["id"], timeout=120)
    assert run["state"] == "Completed", run
    assert env.result(created["id"]) == sum(2 * i for i in range(n))
    executions = env.executions()
    assert executions == {str(i): 1 for i in range(n)}, {k: v for k, v in executions.items() if v != 1}


def test_a_body_with_subflows_a_run_of_its_own_and_as_completed_replays_each_call_once(env: Stack) -> None:
    doomed = env.body_worker("doomed")
    created = submit(env.http, "mixed", parameters={"marker": env.marker})
    # step 10 is the run of its own's: once it began, that run's start message left the doomed worker
    # (one it still held would come back only after Redis's visibility timeout: a known limit)
    eventually(lambda: {"10", "21"} <= set(env.executions()) or None, 60, 0.05, what="steps 10 and 21 begun")
    os.killpg(doomed.pid, signal.SIGKILL)  # after the subflow, the run of its own and during as_completed
    doomed.wait(10)
    env.body_worker("rescue")
    run = env.final(created["id"], timeout=90)
    assert run["state"] == "Completed", run["state_message"]
    assert env.result(created["id"]) == (0 + 2) + 20 + (40 + 42 + 44) + (60 + 62)
    assert env.executions() == {k: 1 for k in ["0", "1", "10", "20", "21", "22", "30", "31"]}
    own_runs = [
        r
        for r in env.http.get("/flow-runs", params={"limit": 500}).json()["items"]
        if r["flow_name"] == "own-run" and r["parameters"].get("marker") == env.marker  # this test's, not another's
    ]
    assert len(own_runs) == 1, own_runs  # the replay re-attached to it, never started a second one


def test_a_body_killed_again_while_it_resumes_still_completes_once(env: Stack) -> None:
    first = env.body_worker("first")
    n = 10
    created = submit(env.http, "long-loop", parameters={"marker": env.marker, "n": n, "seconds": 0.4})
    kill_when_steps_began(env, first, 3)
    second = env.body_worker("second")
    eventually(lambda: env.body_field(created["id"], "body_taken") == "2" or None, 60, 0.02, what="attempt 2 taken")
    os.killpg(second.pid, signal.SIGKILL)  # killed as it replays
    second.wait(10)
    env.body_worker("third")
    run = env.final(created["id"], timeout=90)
    assert run["state"] == "Completed", run
    assert env.executions() == {str(i): 1 for i in range(n)}
    assert env.body_field(created["id"], "body_attempt") == "3"


def test_a_body_that_asks_for_something_else_on_replay_fails_with_the_recorded_call(env: Stack, tmp_path: Path) -> None:
    switch = tmp_path / "switch"
    switch.write_text("steps")
    doomed = env.body_worker("doomed")
    created = submit(env.http, "fickle", parameters={"marker": env.marker, "n": 8, "switch": str(switch)})
    kill_when_steps_began(env, doomed, 3)
    switch.write_text("other")  # the replayed body now calls other_step where step was recorded
    env.body_worker("rescue")
    run = env.final(created["id"], timeout=90)
    assert run["state"] == "Failed", run
    message = run["state_message"]
    assert "diverged from its earlier attempt at call #0" in message, message
    assert "'tests.durable_flows.step'" in message and "'tests.durable_flows.other_step'" in message, message
    assert "same order on every attempt" in message
    assert not any(k.startswith("other-") for k in env.executions())  # the diverging call never ran


def test_a_worker_stopped_with_sigterm_hands_its_body_over_without_the_crash_window(env: Stack) -> None:
    leaving = env.body_worker("leaving")
    n = 10
    created = submit(env.http, "long-loop", parameters={"marker": env.marker, "n": n, "seconds": 0.4})
    eventually(lambda: len(env.executions()) >= 3 or None, 60, 0.05, what="3 steps begun")
    env.body_worker("staying")
    leaving.send_signal(signal.SIGTERM)  # warm shutdown of the main process, as systemd or Kubernetes stop it
    run = env.final(created["id"], timeout=90)
    assert run["state"] == "Completed", run
    assert env.executions() == {str(i): 1 for i in range(n)}
    assert "shutting down" in (env.body_field(created["id"], "body_status") or "")
    assert env.body_field(created["id"], "body_crashes") is None  # handed over, not declared dead


def test_bodies_beyond_the_driver_limit_wait_visibly_and_are_not_lost_with_their_worker(env: Stack) -> None:
    crowded = env.body_worker("crowded", extra_env={"ORCHESTRATOR_MAX_DYNAMIC_FLOWS_PER_PROCESS": "1"})
    markers = [f"{env.marker}-a", f"{env.marker}-b"]
    n = 6
    runs = [submit(env.http, "long-loop", parameters={"marker": m, "n": n, "seconds": 0.4})["id"] for m in markers]

    def told_to_wait() -> str | None:
        for run_id in runs:
            reasons = env.http.get(f"/flow-runs/{run_id}/diagnosis").json()["reasons"]
            waiting = [r for r in reasons if "waits for a driver thread" in r]
            if waiting:
                return waiting[0]
        return None

    reason = eventually(told_to_wait, 30, 0.1, what="a body waiting for a driver thread, in the diagnosis")
    assert "all 1 drive other bodies" in reason and "ORCHESTRATOR_MAX_DYNAMIC_FLOWS_PER_PROCESS" in reason
    eventually(lambda: any(len(env.executions(m)) >= 2 for m in markers) or None, 60, 0.05, what="2 steps begun")
    os.killpg(crowded.pid, signal.SIGKILL)  # with one body driven and one waiting for a thread
    crowded.wait(10)
    env.body_worker("rescue")
    for run_id in runs:
        assert env.final(run_id, timeout=90)["state"] == "Completed"
    for m in markers:
        assert env.executions(m) == {str(i): 1 for i in range(n)}


def test_a_body_whose_worker_dies_too_often_ends_crashed_and_its_flows_on_crashed_hook_runs_once(
    redis_url: str, worker_logs: Path, tmp_path: Path
) -> None:
    del redis_url
    with durable_stack(worker_logs, tmp_path, api_env={"ORCHESTRATOR_MAX_BODY_RESUMES": "0"}) as env:
        doomed = env.body_worker("doomed")
        created = submit(env.http, "unlucky", parameters={"marker": env.marker, "n": 20})
        kill_when_steps_began(env, doomed, 2)
        env.body_worker("hooks")  # a worker of the body's queue that has the flow's code
        run = env.final(created["id"], timeout=60)
        assert run["state"] == "Crashed", run
        assert "its body's worker died 1 time (last: worker doomed-" in run["state_message"]
        assert "stopped heartbeating" in run["state_message"]
        calls = eventually(lambda: env.redis.lrange(flows.flow_crashed_key(env.marker), 0, -1), 30, what="hook")
        time.sleep(2)  # a second call (another detector pass, a redelivery) would land by now
        assert env.redis.lrange(flows.flow_crashed_key(env.marker), 0, -1) == [f"Crashed:{created['id']}"]
        assert calls
        task_states = {t["state"] for t in env.http.get(f"/flow-runs/{created['id']}/task-runs").json()}
        assert task_states <= {"Completed", "Cancelled"}, task_states  # its unfinished task runs were stopped
