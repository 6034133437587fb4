"""Retries in every delay form, retry_on, and RETRY-style sensors, on a real worker."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import time

import pytest

from orchestrator import FlowRun, StateType, flow
from orchestrator.authoring.hooks import HookState
from orchestrator.authoring.tasks import exponential_backoff, task
from orchestrator.errors import DefinitionError
from orchestrator.runstate import keys
from orchestrator.runstate.store import get_store
from orchestrator.transport.celery_app import client_app
from tests import flows
from tests.api_support import eventually

pytestmark = pytest.mark.usefixtures("fleet")


def stamps(name: str, run_id: str) -> list[float]:
    return [float(t) for t in get_store().redis.lrange(f"test:stamps:{name}:{run_id}", 0, -1)]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def test_each_delay_form_waits_as_declared() -> None:
    run = flows.delay_forms_flow.delay()
    assert run.result(timeout=60) == {"list": 3, "exponential": 3}
    listed = gaps(stamps("flaky_list", run.id))
    assert listed[0] >= 0.5 and listed[1] >= 1.5
    exponential = gaps(stamps("flaky_exponential", run.id))
    assert exponential[0] >= 0.5 and exponential[1] >= 1.0
    rows = {r["label"]: r for r in run.task_runs()}
    assert rows["flaky_list-0"]["attempts"] == 3


def test_retry_on_limits_which_errors_are_retried() -> None:
    run = flows.retry_on_flow.delay()
    assert run.wait(timeout=30) is StateType.FAILED
    assert len(stamps("wrong_kind_of_error", run.id)) == 1
    (row,) = run.task_runs()
    assert row["message"] == "ValueError: not worth retrying"


def test_a_sensor_frees_its_slot_between_pokes(solo_worker: subprocess.Popen[bytes]) -> None:
    run = flows.sensor_flow.delay()
    assert run.result(timeout=60) == {"sensor": 3, "other": "ran between pokes"}
    pokes = stamps("sensor", run.id)
    (other,) = stamps("between", run.id)
    assert len(pokes) == 3
    assert pokes[0] < other < pokes[-1], "the only worker slot was held between pokes"
    rows = {r["label"]: r for r in run.task_runs()}
    assert rows["sensor_third_time-0"]["attempts"] == 3


def test_a_sensor_that_never_gets_ready_times_out_with_a_message(solo_worker: subprocess.Popen[bytes]) -> None:
    run = flows.sensor_timeout_flow.delay()
    assert run.wait(timeout=60) is StateType.FAILED
    (row,) = run.task_runs()
    assert "poke_timeout_seconds=2" in row["message"]
    assert "still nothing" in row["message"]
    assert 2 <= len(stamps("never", run.id)) <= 4


def test_bad_retry_options_are_refused_when_declared() -> None:
    def fn() -> None: ...

    with pytest.raises(DefinitionError, match="retry_jitter_factor"):
        task(retry_jitter_factor=-1)(fn)
    with pytest.raises(DefinitionError, match="poke_timeout_seconds"):
        task(poke_timeout_seconds=0)(fn)
    with pytest.raises(DefinitionError, match="factor"):
        exponential_backoff(0)
    jittery = task(retries=3, retry_delay_seconds=exponential_backoff(1), retry_jitter_factor=0.5)(fn)
    assert jittery.retry_delays == [1, 2, 4]
    assert all(1 <= jittery.retry_delay(1) <= 1.5 for _ in range(50))


@pytest.mark.parametrize("hard", [False, True], ids=["soft-limit", "hard-limit"])
def test_a_task_past_its_timeout_ends_timed_out(hard: bool) -> None:
    run = flows.timeout_flow.delay(hard=hard)
    assert run.wait(timeout=30) is StateType.FAILED
    (row,) = run.task_runs()
    assert row["state"] == StateType.TIMED_OUT.value
    assert ("hard time limit" in row["message"]) is hard
    assert "timeout_seconds" in row["message"]


def hook_calls(run_id: str) -> list[str]:
    return list(get_store().redis.lrange(f"test:hooks:{run_id}", 0, -1))


def test_hooks_run_on_the_worker_and_a_broken_hook_changes_nothing() -> None:
    ok = flows.hooked_flow.delay(fail=False)
    assert ok.result(timeout=30) == 1
    failed = flows.hooked_flow.delay(fail=True)
    assert failed.wait(timeout=30) is StateType.FAILED
    for _ in range(50):  # the flow hook runs just after the final state is written
        if len(hook_calls(failed.id)) == 3:
            break
        time.sleep(0.1)
    assert hook_calls(ok.id) == ["hooked_ok:Completed", "hooked-flow:Completed"]
    assert hook_calls(failed.id) == ["hooked_fails:AwaitingRetry", "hooked_fails:Failed", "hooked-flow:Failed"]


def test_hooks_run_the_same_way_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(flows, "record_hook", lambda *a: None)  # the module's hook needs Redis

    def remember(obj: object, run: object, state: HookState) -> None:
        calls.append(f"{getattr(obj, 'name', '?').rsplit('.', 1)[-1]}:{state.name}")

    local_task = flows.hooked_fails.with_options()
    local_task.hooks = {"on_retry": [remember], "on_failure": [remember]}

    @flow(on_failure=remember)
    def local_hooked() -> None:
        local_task.submit()

    with pytest.raises(OSError):
        local_hooked()
    assert calls == ["hooked_fails:AwaitingRetry", "hooked_fails:Failed", "local-hooked:Failed"]


def test_a_flow_past_its_timeout_ends_timed_out_and_its_tasks_are_cancelled() -> None:
    started = time.monotonic()
    run = flows.slow_flow_with_timeout.delay()
    assert run.wait(timeout=30) is StateType.TIMED_OUT
    assert time.monotonic() - started < 4
    assert "timeout_seconds=1" in run.info["message"]
    states = {r["label"]: r["state"] for r in run.task_runs()}
    assert states == {"sleepy-0": "Cancelled", "inc-0": "Cancelled"}
    wait_until_the_fleet_is_done_with(run)  # sleepy(6) would otherwise still end, about 5 s from now
    assert run.state is StateType.TIMED_OUT  # nothing that ended later rewrote it
    assert {r["label"]: r["state"] for r in run.task_runs()} == states


def wait_until_the_fleet_is_done_with(run: FlowRun, timeout: float = 30) -> None:
    """Until no message of ``run`` (its task runs' or its own) is queued, unacknowledged or delayed in Redis,
    and the fleet worker runs, holds or has scheduled none: from then on nothing of it can still end."""
    ids = {run.id} | {r["id"] for r in run.task_runs()}
    inspector = client_app().control.inspect(destination=[f"fleet@{socket.gethostname()}"], timeout=2)
    redis = get_store().redis

    def done() -> bool:
        waiting = [*redis.lrange("default", 0, -1), *redis.hvals("unacked"), *redis.zrange(keys.DELAYED, 0, -1)]
        if any(i in message for message in waiting for i in ids):
            return False
        for ask in (inspector.active, inspector.reserved, inspector.scheduled):
            replies = ask()
            if not replies:  # no answer: not known to be idle
                return False
            if any(t["id"] in ids or run.id in str(t.get("kwargs")) for ts in replies.values() for t in ts):
                return False
        return True

    eventually(done, timeout, what=f"the fleet done with flow run {run.id}")


def flow_states(run_id: str) -> list[str]:
    return [
        json.loads(fields["event"])["state"]
        for _, fields in get_store().redis.xrange(keys.EVENTS_STREAM)
        if json.loads(fields["event"])["id"] == run_id
    ]


def test_flow_retries_rerun_only_what_did_not_complete() -> None:
    run = flows.retried_flow.delay()
    assert run.result(timeout=30) == 5
    assert len(stamps("stamped_ok", run.id)) == 1, "a completed task ran again"
    assert len(stamps("fails_first_time", run.id)) == 2
    assert run.info["attempt"] == 2
    states = flow_states(run.id)
    assert states[-3:] == ["AwaitingRetry", "Retrying", "Completed"]


def test_a_plan_kept_compressed_or_as_json_text_serves_a_flow_retry() -> None:
    """A run's plan stays in Redis as long as the run, for a retry: compressed (about 55 bytes a
    plain task node), and one kept as JSON text by an older version is read the same."""
    run = flows.retried_flow.delay()
    assert run.result(timeout=30) == 5  # the retry read the compressed plan
    redis = get_store().redis
    stored = redis.execute_command("STRLEN", keys.plan(run.id))
    text = get_store().flow_runs.plan_text(run.id)
    assert text is not None and json.loads(text)["root_run_id"] == run.id
    assert stored < len(text) / 3, (stored, len(text))

    older = flows.retried_flow.delay()
    plan = get_store().flow_runs.plan_text(older.id)
    assert plan is not None
    redis.set(keys.plan(older.id), json.dumps(json.loads(plan)), keepttl=True)  # as versions before kept it
    assert older.result(timeout=30) == 5  # its retry reads the JSON text
    assert older.info["attempt"] == 2
    assert get_store().flow_runs.plan_texts([older.id, run.id, "no-such-run"]) == [
        get_store().flow_runs.plan_text(older.id),
        text,
        None,
    ]


def test_a_one_task_plan_is_kept_as_json_text_and_serves_a_flow_retry() -> None:
    """A plan under ``PLAIN_PLAN_UNDER`` bytes is not compressed (it would save about 400 bytes
    for about 30 µs of CPU on the path of ``.delay()``): the retry reads it all the same."""
    run = flows.retried_one_task_flow.delay()
    assert run.result(timeout=30) == 4
    assert run.info["attempt"] == 2
    stored = get_store().redis.execute_command("GET", keys.plan(run.id))
    assert stored.startswith("{") and json.loads(stored)["root_run_id"] == run.id
    assert get_store().flow_runs.plan_text(run.id) == stored


def test_dynamic_flow_retries_run_the_body_again() -> None:
    run = flows.retried_dynamic_flow.delay()
    assert run.result(timeout=30) == 6
    assert "AwaitingRetry" in flow_states(run.id)


def test_a_fixed_delay_waits_between_attempts() -> None:
    run = flows.fixed_delay_flow.delay()
    assert run.result(timeout=30) == 3
    assert all(gap >= 0.7 for gap in gaps(stamps("flaky_fixed", run.id)))


def test_a_chord_header_killed_with_its_worker_process_runs_again_and_the_run_ends() -> None:
    run = flows.killable_chord.delay()
    redis = get_store().redis
    pid = None
    for _ in range(100):
        pid = redis.get(f"test:pid:{run.id}")
        if pid:
            break
        time.sleep(0.05)
    assert pid, "the task never started"
    os.kill(int(pid), signal.SIGKILL)
    assert run.result(timeout=60) == 2 + 2  # second execution returns 2; double(1) = 2
    assert len(stamps("killable", run.id)) == 2


def test_flow_retries_expand_a_failed_map_again() -> None:
    run = flows.retried_map_flow.delay()
    assert run.result(timeout=30) == sum(2 * i for i in range(4))
    assert len(stamps("double_two", run.id)) == 2
    assert run.info["attempt"] == 2


def test_flow_retries_rerun_a_failed_subflow() -> None:
    run = flows.retried_parent_flow.delay()
    assert run.result(timeout=30) == 5
    children = {r["flow_run_id"] for r in run.task_runs()} - {run.id}
    (child,) = children
    from orchestrator import FlowRun

    assert FlowRun(child).state is StateType.COMPLETED
