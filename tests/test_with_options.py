"""``with_options(...)`` holds on the fleet as a decorated option does, and ``task_run_name`` names runs.

Before, ``task.with_options(timeout_seconds=1).submit(...)`` ran a 4 s task to Completed on a
worker: Celery fixes a task's time limits when the worker registers it. Now a changed
timeout rides in the message as Celery's own per-message limits (static plans, dynamic
bodies and retries sent again from Redis), and every other changed option rides in the
message's ``options`` (see docs/options.md). Each test below changes one option in a flow
body and checks what a worker did with it; in-process runs enforce ``timeout_seconds`` too.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator import task
from orchestrator.authoring.options import resolve_reference, time_limits
from orchestrator.data.results import read_persisted
from orchestrator.devstack.localstack import ApiProcess, api_server, worker
from orchestrator.errors import DefinitionError, FlowRunFailed
from orchestrator.planning.compiler import compile_plan
from orchestrator.runs.handle import FlowRun
from orchestrator.runstate import slots as concurrency
from orchestrator.runstate.store import get_store
from orchestrator.states import StateType
from tests import option_flows as of
from tests.api_support import cli, eventually


@pytest.fixture(scope="module")
def option_workers(redis_url: str, worker_logs: Path) -> Iterator[None]:
    """A worker of the flows' queue (3 processes) and one of another queue (the queue option's target)."""
    with (
        worker(
            redis_url,
            ["tests.option_flows"],
            queues=of.QUEUE,
            concurrency=3,
            name="options@%h",
            log_path=worker_logs / "options.log",
        ),
        worker(
            redis_url,
            ["tests.option_flows"],
            queues=of.OTHER_QUEUE,
            concurrency=1,
            name="options-b@%h",
            log_path=worker_logs / "options-b.log",
        ),
    ):
        yield


def by_task(run: FlowRun, name: str) -> list[dict[str, Any]]:
    return [r for r in run.task_runs() if r.get("name", "").endswith(f".{name}")]


# -- definitions (no worker) ---------------------------------------------------------------------
def test_an_unknown_option_is_refused_naming_it_and_the_valid_ones() -> None:
    with pytest.raises(DefinitionError, match=r"unknown option 'timeout'; valid options are: .*timeout_seconds"):
        of.sleeper.with_options(timeout=1)
    with pytest.raises(DefinitionError, match=r"unknown option 'tag'; valid options are: .*flow_run_name"):
        of.child.with_options(tag="x")
    # the decorator's own checks hold
    with pytest.raises(DefinitionError, match="timeout_seconds takes a number of seconds > 0; got 0"):
        of.sleeper.with_options(timeout_seconds=0)


def test_a_copy_keeps_the_registered_name_and_is_not_registered() -> None:
    copy = of.ident.with_options(name="shown", retries=3).with_options(timeout_seconds=2)
    assert copy.name == of.ident.name == "tests.option_flows.ident"  # the Celery task workers know
    assert (copy.label_base, copy.retries, copy.timeout_seconds) == ("shown", 3, 2)  # chained copies keep changes
    assert of.ident.retries == 0 and of.ident.timeout_seconds is None
    from orchestrator.authoring.registry import get_task

    assert get_task(of.ident.name) is of.ident


def test_a_task_run_name_naming_an_unknown_parameter_is_refused_at_decoration() -> None:
    with pytest.raises(DefinitionError, match=r"names 'tabel', which is not a parameter.*parameters are: table"):
        task(task_run_name="load-{tabel}")(of.load.fn)
    with pytest.raises(DefinitionError, match="names 'tabel'"):
        of.load.with_options(task_run_name="x-{tabel}")


def test_a_name_made_from_literal_arguments_is_in_the_message_flower_shows() -> None:
    plan = of.named_runs.plan("users")
    compiled = compile_plan(plan)
    labels = {n.label for n in plan.nodes.values()}
    assert {"load-users", "load-1", "load-2"} <= labels  # the others need an upstream's value or the run context
    node = next(n for n in plan.nodes.values() if n.label == "load-users")
    message = next(s for s in _signatures(compiled.canvas) if s.options.get("task_id") == node.id)
    assert message.kwargs["run"]["label"] == "load-users"


def _signatures(sig: Any) -> Iterator[Any]:
    tasks = getattr(sig, "tasks", None)
    if tasks is None:
        yield sig
        return
    for item in tasks:
        yield from _signatures(item)


def test_a_lambda_hook_is_refused_when_the_task_is_sent_to_workers_and_runs_in_process() -> None:
    with pytest.raises(DefinitionError, match=r"with_options\(hooks=...\).*lambda.*cannot be sent to workers"):
        compile_plan(of.lambda_hooked.plan(1))
    assert of.lambda_hooked(1) == 1


def test_a_flow_copy_with_changed_hooks_is_refused_for_a_run_sent_to_workers() -> None:
    changed = of.child.with_options(on_completion=of.record_hook)
    with pytest.raises(DefinitionError, match=r"with_options\(on_completion=...\) holds in-process only"):
        changed.delay(1)  # refused before anything is written or sent
    assert changed.hooks["on_completion"] == [of.record_hook] and not of.child.hooks["on_completion"]


def test_a_changed_timeout_becomes_celerys_per_message_limits() -> None:
    assert time_limits({}) == {}
    assert time_limits({"timeout_seconds": 2}) == {"soft_time_limit": 2.0, "time_limit": 7.0}
    unlimited = time_limits({"timeout_seconds": None})  # None would mean "the registered limit" to Celery
    assert unlimited["soft_time_limit"] == unlimited["time_limit"] >= 10**8


def test_a_message_never_makes_a_worker_import_a_module() -> None:
    assert "antigravity" not in sys.modules
    with pytest.raises(DefinitionError, match="not imported on this worker"):
        resolve_reference("antigravity:fly")
    assert "antigravity" not in sys.modules
    with pytest.raises(DefinitionError, match="plain module-level function"):
        resolve_reference("os:environ")  # not a function
    assert resolve_reference("tests.option_flows:record_hook") is of.record_hook
    assert resolve_reference("builtins:ValueError") is ValueError  # retry_on's exception classes


# -- in-process ----------------------------------------------------------------------------------
def test_an_in_process_task_past_its_timeout_ends_timed_out_without_retries() -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"local_sleeper-0 still running after 0.3s") as caught:
        of.local_timeout(2)
    assert "ended TimedOut" in "\n".join(caught.value.__notes__)
    assert time.monotonic() - started < 1.5  # seen at the deadline, not after the 2 s sleep: the thread is abandoned
    assert of.local_timeout(0) == 0


def test_an_in_process_flow_past_its_timeout_ends_timed_out() -> None:
    with pytest.raises(FlowRunFailed, match=r"ended TimedOut: ran past timeout_seconds=0.3"):
        of.slow_dynamic.with_options(timeout_seconds=0.3)(2)


def test_task_run_names_in_process() -> None:
    assert of.local_labels("users") == ["load-users", "via-context-users"]


# -- on the fleet --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flow_", [of.timeout_static, of.timeout_dynamic, of.timeout_mapped], ids=["static", "dynamic", "mapped"]
)
def test_a_changed_timeout_stops_the_task_on_the_fleet(option_workers: None, flow_: Any) -> None:
    run = flow_.delay(4)
    assert run.wait(timeout=30) is StateType.FAILED
    row = next(r for r in by_task(run, "sleeper") if r["state"] == "TimedOut")  # (a map: its one mapped run)
    assert "ran past timeout_seconds=1" in row["message"]
    assert float(row["ended"]) - float(row["started"]) < 3  # stopped at about 1 s, not after the 4 s sleep


def test_a_changed_timeout_holds_on_a_retry_sent_again_from_redis(option_workers: None) -> None:
    run = of.timeout_on_retry.delay(uuid.uuid4().hex, 4)
    assert run.wait(timeout=30) is StateType.FAILED
    (row,) = by_task(run, "fails_then_sleeps")
    assert row["state"] == "TimedOut" and int(row["attempts"]) == 2


def test_changed_retries_and_delay_hold_on_the_fleet(option_workers: None) -> None:
    marker = uuid.uuid4().hex
    run = of.retried.delay(marker)
    assert run.result(timeout=30) == marker
    (row,) = by_task(run, "fails_then_sleeps")
    assert int(row["attempts"]) == 2 and get_store().redis.get(f"test:opt:attempts:{marker}") == "2"


def test_changed_tags_are_held_to_their_concurrency_limit(option_workers: None) -> None:
    store, marker, tag = get_store(), uuid.uuid4().hex, f"opt-{uuid.uuid4().hex[:8]}"
    concurrency.publish_limits(store, concurrency.read_limits(store) | {tag: 1})
    try:
        run = of.tagged.delay(marker, tag)
        assert sorted(run.result(timeout=30)) == [0, 1, 2]
        assert store.redis.get(f"test:opt:{marker}:max") == "1"  # three worker processes, one slot
        assert any(r.get("slot_tag") == tag for r in by_task(run, "counted"))  # some waited for the slot
    finally:
        concurrency.publish_limits(store, {k: v for k, v in concurrency.read_limits(store).items() if k != tag})


def test_a_changed_queue_runs_the_task_on_a_worker_of_that_queue(option_workers: None) -> None:
    run = of.elsewhere.delay()
    run.result(timeout=30)
    workers = sorted(r["worker"].split("@")[0] for r in by_task(run, "host"))
    assert workers == ["options", "options-b"]


def test_a_with_options_subflow_runs_its_tasks_on_its_queue(option_workers: None) -> None:
    run = of.parent_of_moved_child.delay(1)
    run.result(timeout=30)
    (row,) = by_task(run, "host")
    assert row["worker"].startswith("options-b@")


def test_a_changed_name_labels_the_task_runs_and_keeps_the_celery_task(option_workers: None) -> None:
    run = of.renamed.delay(5)
    assert run.result(timeout=30) == 5
    (row,) = by_task(run, "ident")
    assert row["label"] == "renamed-0" and row["state"] == "Completed"


def test_a_changed_persist_result_writes_the_result_to_storage(option_workers: None) -> None:
    run = of.persisted.delay(7)
    assert run.result(timeout=30) == [7, 8]
    rows = {r["label"]: r for r in by_task(run, "ident")}
    kept = read_persisted([rows["ident-0"]["id"], rows["ident-1"]["id"]])
    assert kept == {rows["ident-0"]["id"]: "7", rows["ident-1"]["id"]: None}


def test_a_changed_log_prints_sends_prints_to_the_run_log(option_workers: None) -> None:
    marker = uuid.uuid4().hex
    run = of.printing.delay(marker)
    run.result(timeout=30)
    lines = eventually(
        lambda: [m for m in (e["message"] for e in run.logs()) if "said" in m and marker in m] or None,
        10,
        what="the print in the run log",
    )
    assert len(lines) == 1 and lines[0].endswith(f"said {marker}")  # the other task's print was not captured


@pytest.mark.parametrize("flow_", [of.hooked, of.hooked_dynamic], ids=["static", "dynamic"])
def test_a_changed_hook_runs_on_the_worker(option_workers: None, flow_: Any) -> None:
    run = flow_.delay(1)
    run.result(timeout=30)
    trid = by_task(run, "ident")[-1]["id"]
    value = eventually(lambda: get_store().redis.get(f"test:opt:hook:{trid}"), 10, what="the hook's mark")
    assert value == "Completed:tests.option_flows.ident"


def test_flow_with_options_holds_for_a_run_sent_by_delay(option_workers: None) -> None:
    changed = of.slow_dynamic.with_options(timeout_seconds=1, flow_run_name="quick-{seconds:g}")
    run = changed.delay(4)
    assert run.wait(timeout=30) is StateType.TIMED_OUT
    assert run.info["name"] == "quick-4"
    assert of.slow_dynamic.timeout_seconds is None  # the registered flow is unchanged


# -- task_run_name on the fleet, in the API and the CLI ----------------------------------------------
@pytest.fixture(scope="module")
def api(
    redis_url: str, option_workers: None, worker_logs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiProcess]:
    database = f"sqlite:///{tmp_path_factory.mktemp('options-db') / 'api.db'}"
    with api_server(redis_url, database, log_path=worker_logs / "options-api.log") as server:
        yield server


def test_task_run_names_are_recorded_and_shown_by_the_api_and_the_cli(api: ApiProcess) -> None:
    run = of.named_runs.delay("users")
    run.result(timeout=30)
    labels = sorted(r["label"] for r in by_task(run, "load"))
    assert labels == ["load-users", "load-users-computed", "via-context-users"]
    planned = [r for r in run.task_runs() if r["label"] == "load-users"]
    assert planned  # a literal argument: named when planned (so Flower shows it in the message too)

    def api_labels() -> list[str] | None:
        with httpx.Client(base_url=api.url, timeout=10) as http:
            response = http.get(f"/flow-runs/{run.id}/task-runs")
        if response.status_code == 404:  # not recorded yet: the recorder has not read the run's first event
            return None
        found = sorted(r["label"] for r in response.json() if r["task_name"].endswith(".load"))
        return found if found == labels else None

    eventually(api_labels, 20, what="the API's task runs named")
    shown = cli(api, "flow-run", "inspect", run.id)
    assert shown.returncode == 0, shown.stderr
    assert "load-users-computed" in shown.stdout and "via-context-users" in shown.stdout
