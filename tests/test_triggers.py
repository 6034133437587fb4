"""Trigger rules, allow_failure, skips and failed chord headers on a real worker, and locally."""

from __future__ import annotations

import collections
import time
from typing import Any

import pytest

from orchestrator import StateType
from orchestrator.local import runner
from tests import flows

pytestmark = pytest.mark.usefixtures("fleet")

EXPECTED = {
    "explode-0": "Failed",
    "inc-0": "Completed",
    "cleanup-0": "Completed",  # all_finished
    "alert-0": "Completed",  # any_failed, one failed
    "all_failed_task-0": "Completed",  # all_failed, the only upstream failed
    "all_failed_task-1": "Skipped",  # all_failed, one upstream completed
    "alert-1": "Skipped",  # any_failed, nothing failed
    "show-0": "Completed",  # allow_failure: runs with None
    "inc-1": "UpstreamFailed",  # default rule
}


def test_each_trigger_rule_and_allow_failure_on_the_fleet() -> None:
    run = flows.trigger_flow.delay()
    assert run.wait(timeout=30) is StateType.FAILED  # inc-1 is a leaf that did not complete
    states = {r["label"]: r["state"] for r in run.task_runs()}
    assert states == EXPECTED
    assert "trigger all_failed" in {r["label"]: r for r in run.task_runs()}["all_failed_task-1"]["message"]


def test_allow_failure_passes_none_on_the_fleet() -> None:
    from orchestrator.data.references import resolve
    from orchestrator.runstate.store import get_store

    run = flows.trigger_flow.delay()
    assert run.wait(timeout=30) is StateType.FAILED
    rows = {r["label"]: r for r in run.task_runs()}
    assert rows["explode-0"]["state"] == "Failed"  # the tolerated upstream did fail
    assert rows["show-0"]["state"] == "Completed", rows["show-0"]  # and its downstream ran anyway
    assert float(rows["show-0"]["started"]) >= float(rows["explode-0"]["ended"])  # after the failure, not before
    assert resolve({"__ref__": rows["show-0"]["id"], "path": []}, get_store(), allow_pickle=False, where="t") == "None"
    assert rows["inc-1"]["state"] == "UpstreamFailed"  # the same upstream, not tolerated


def test_a_failed_chord_header_ends_the_run() -> None:
    run = flows.chord_header_fails.delay()
    assert run.wait(timeout=30) is StateType.FAILED
    states = {r["label"]: r["state"] for r in run.task_runs()}
    assert states == {
        "double-0": "Completed",
        "explode-0": "Failed",
        "double-1": "Completed",
        "total-0": "UpstreamFailed",
    }


def test_a_skip_skips_downstream_unless_the_rule_says_otherwise() -> None:
    run = flows.skip_then_cleanup.delay()
    assert run.wait(timeout=30) is StateType.COMPLETED
    states = {r["label"]: r["state"] for r in run.task_runs()}
    assert states == {"skip_me-0": "Skipped", "inc-0": "Skipped", "cleanup-0": "Completed"}


def test_wait_only_waits_it_does_not_make_later_tasks_depend_on_success() -> None:
    run = flows.wait_only_waits.delay()
    run.wait(timeout=30)
    states = {r["label"]: r["state"] for r in run.task_runs()}
    assert states["inc-0"] == "Completed"
    rows = {r["label"]: r for r in run.task_runs()}
    assert float(rows["inc-0"]["started"]) >= float(rows["explode-0"]["ended"])


@pytest.fixture
def local_engines(monkeypatch: pytest.MonkeyPatch) -> list[runner.LocalEngine]:
    """Every engine the in-process runner makes from now on (one per flow run, subflows too)."""
    made: list[runner.LocalEngine] = []

    class Recorded(runner.LocalEngine):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(runner, "LocalEngine", Recorded)
    return made


def local_runs(engines: list[runner.LocalEngine]) -> dict[str, runner.LocalFuture]:
    """The task runs of the one local flow run, by the label the fleet gives them (``<task>-<n>``, n per task
    in submission order; the local runner numbers all its task runs together)."""
    (engine,) = engines
    seen: collections.Counter[str] = collections.Counter()
    out: dict[str, runner.LocalFuture] = {}
    for future in engine.futures:
        name = future.label.rsplit("-", 1)[0]
        out[f"{name}-{seen[name]}"] = future
        seen[name] += 1
    return out


def test_the_same_rules_locally(local_engines: list[runner.LocalEngine]) -> None:
    with pytest.raises(ValueError, match="bad"):  # the task that failed first raised it (as Prefect raises it)
        flows.trigger_flow()
    runs = local_runs(local_engines)
    assert {label: f.state_type.value for label, f in runs.items()} == EXPECTED
    assert "trigger all_failed" in runs["all_failed_task-1"].history[-1][2]
    assert runs["show-0"].result() == "None"  # allow_failure: ran with None

    local_engines.clear()
    with pytest.raises(ValueError) as caught:
        flows.chord_header_fails()
    assert str(caught.value) == "header" and any("task run explode" in note for note in caught.value.__notes__)
    assert {label: f.state_type.value for label, f in local_runs(local_engines).items()} == {
        "double-0": "Completed",
        "explode-0": "Failed",
        "double-1": "Completed",
        "total-0": "UpstreamFailed",
    }

    local_engines.clear()
    flows.skip_then_cleanup()
    states = {label: f.state_type.value for label, f in local_runs(local_engines).items()}
    assert states == {"skip_me-0": "Skipped", "inc-0": "Skipped", "cleanup-0": "Completed"}


def test_a_subflow_is_decided_by_its_returned_futures_like_in_process() -> None:
    assert flows.parent_of_side_failure() == 4
    run = flows.parent_of_side_failure.delay()
    assert run.result(timeout=30) == 4
    states = {r["label"]: r["state"] for r in run.task_runs()}
    assert states["explode-0"] == "Failed"
    assert states["double-0"] == "Completed"


def test_a_revoked_chord_header_still_ends_the_run() -> None:
    from orchestrator.transport.celery_app import client_app

    run = flows.revocable_chord.delay()
    rows: dict[str, dict[str, str]] = {}
    for _ in range(50):
        rows = {r["label"]: r for r in run.task_runs()}
        if rows.get("sleepy-0", {}).get("state") == "Running":
            break
        time.sleep(0.1)
    client_app().control.revoke(rows["sleepy-0"]["id"], terminate=True)
    assert run.wait(timeout=15) is StateType.FAILED
    states = {r["label"]: r["state"] for r in run.task_runs()}
    assert states == {"sleepy-0": "Cancelled", "double-0": "Completed", "total-0": "UpstreamFailed"}
