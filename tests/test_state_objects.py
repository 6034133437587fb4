"""Prefect's state objects: ``State`` and its constructors, ``return_state=True``, futures' ``.state``,
a returned state deciding the run, and the task's own exception from ``result()``; in-process and on the fleet."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import Completed, Failed, State, StateType, flow, task
from orchestrator.devstack.localstack import worker
from orchestrator.errors import FailedRun, FlowRunFailed
from tests import state_flows as sf


@pytest.fixture(scope="module")
def states_worker(redis_url: str, worker_logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    with worker(
        redis_url,
        ["tests.state_flows"],
        queues=sf.QUEUE,
        concurrency=2,
        name="states@%h",
        log_path=worker_logs / "states.log",
    ) as proc:
        yield proc


# -- the objects ----------------------------------------------------------------------------
def test_a_state_has_prefects_coarse_type_and_our_precise_name() -> None:
    timed_out = State.of(StateType.TIMED_OUT, "ran past 3s")
    assert (timed_out.type, timed_out.name, timed_out.detail) == (StateType.FAILED, "TimedOut", StateType.TIMED_OUT)
    assert timed_out.is_failed() and timed_out.is_final() and not timed_out.is_completed()
    retrying = State.of(StateType.RETRYING)
    assert retrying.is_running() and not retrying.is_final() and retrying.name == "Retrying"
    assert State.of(StateType.AWAITING_RETRY).is_scheduled()
    assert State.of(StateType.UPSTREAM_FAILED).is_failed()
    assert Failed(name="TimedOut").detail is StateType.TIMED_OUT
    assert Completed(name="Cached").detail is StateType.COMPLETED and Completed(name="Cached").name == "Cached"
    assert timed_out.timestamp.tzinfo is not None


def test_a_states_result_gives_data_or_raises() -> None:
    assert Completed(data=[1, 2]).result() == [1, 2]
    with pytest.raises(FailedRun, match="nope"):
        Failed(message="nope").result()
    error = KeyError("k")
    assert Failed(data=error).result(raise_on_failure=False) is error
    with pytest.raises(KeyError):
        Failed(data=error).result()
    with pytest.raises(Exception, match="not final"):
        State.of(StateType.RUNNING).result()


# -- in-process --------------------------------------------------------------------------------
def test_states_in_process() -> None:
    out = sf.reads_states(3)
    assert out["good"] == [True, "Completed", "Completed", 6]
    assert out["bad"] == [True, "Failed", "Failed", "ValueError"]
    assert out["future"] == [True, 8]
    assert sf.catches_own_exceptions(1) == ["ValueError: no 1", "QuotaExceeded: quota hit at 1"]


def test_a_returned_state_decides_an_in_process_run() -> None:
    assert sf.decides_its_state(True) == 4
    with pytest.raises(FlowRunFailed, match="returned a Failed state: not enough rows"):
        sf.decides_its_state(False)
    state = sf.decides_its_state(False, return_state=True)
    assert state.is_failed() and state.message == "not enough rows"
    completed = sf.decides_its_state(True, return_state=True)
    assert completed.is_completed() and completed.result() == 4 and completed.message == "all good"


def test_a_failing_flow_call_raises_the_tasks_exception_and_its_state_carries_it() -> None:
    with pytest.raises(sf.QuotaExceeded, match="quota hit at 2") as caught:
        sf.fails_with_own_exception(2)
    assert any("over_quota-0" in note for note in caught.value.__notes__)
    state = sf.fails_with_own_exception(2, return_state=True)
    assert state.is_failed() and isinstance(state.result(raise_on_failure=False), sf.QuotaExceeded)


def test_flow_retries_in_process_run_the_body_again_and_hooks_see_the_end() -> None:
    attempts: list[int] = []
    seen: list[tuple[str, str, str]] = []

    @flow(
        retries=3,
        flow_run_name="flaky-{n}",
        on_completion=lambda f, run, state: seen.append((run.name, state.name, state.type.value)),
    )
    def flaky(n: int) -> int:
        attempts.append(n)
        if len(attempts) < 3:
            raise RuntimeError("not yet")
        return len(attempts)

    assert flaky(7) == 3
    assert seen == [("flaky-7", "Completed", "Completed")]  # once, at the end

    @flow(retries=1)
    def hopeless() -> None:
        attempts.append(0)
        raise RuntimeError("never")

    attempts.clear()
    with pytest.raises(RuntimeError, match="never"):
        hopeless()
    assert attempts == [0, 0]


def test_return_state_outside_a_flow_and_on_a_subflow() -> None:
    @task
    def boom() -> None:
        raise ZeroDivisionError("x")

    state = boom(return_state=True)
    assert state.is_failed() and isinstance(state.data, ZeroDivisionError)

    @flow
    def child() -> int:
        boom()
        return 1

    @flow
    def parent() -> list[str]:
        s = child(return_state=True)
        return [s.name, type(s.result(raise_on_failure=False)).__name__]

    assert parent() == ["Failed", "ZeroDivisionError"]


def test_run_logs_show_on_the_terminal_of_an_unconfigured_script(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "from orchestrator import flow, task, get_run_logger\n"
        "@task(log_prints=True)\n"
        "def hello(name):\n"
        "    print(f'hello {name}')\n"
        "@flow\n"
        "def greet(name: str):\n"
        "    get_run_logger().info('greeting %s', name)\n"
        "    hello(name)\n"
        "greet('ada')\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True)
    assert "greeting ada" in out.stderr and "hello ada" in out.stderr
    assert "INFO" in out.stderr


def test_run_logs_are_not_doubled_when_the_script_configured_logging(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(
        "import logging\n"
        "logging.basicConfig(level=logging.INFO, format='MINE %(levelname)s %(message)s')\n"
        "from orchestrator import flow, get_run_logger\n"
        "@flow\n"
        "def greet(name: str):\n"
        "    get_run_logger().info('greeting %s', name)\n"
        "greet('ada')\n"
        "greet('bob')\n"
    )
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=True)
    lines = out.stderr.splitlines()
    said = [line for line in lines if "greeting" in line]
    assert len(said) == 2 and all(line.startswith("MINE INFO ") for line in said), out.stderr  # its format, once each
    assert said[0].endswith("greeting ada") and said[1].endswith("greeting bob")


# -- on the fleet ------------------------------------------------------------------------------
def test_states_on_the_fleet(states_worker: subprocess.Popen[bytes]) -> None:
    run = sf.reads_states.delay(3)
    assert run.info["mode"] == "dynamic"  # return_state reads real outcomes: never planned with stand-ins
    out = run.result(timeout=60)
    assert out["good"] == [True, "Completed", "Completed", 6]
    assert out["bad"] == [True, "Failed", "Failed", "ValueError"]
    assert out["future"] == [True, 8]
    assert run.state is StateType.COMPLETED


def test_the_tasks_own_exception_on_the_fleet(states_worker: subprocess.Popen[bytes]) -> None:
    run = sf.catches_own_exceptions.delay(4)
    assert run.result(timeout=60) == ["ValueError: no 4", "QuotaExceeded: quota hit at 4"]
    failed = sf.fails_with_own_exception.delay(5)
    with pytest.raises(FlowRunFailed) as caught:
        failed.result(timeout=60)
    assert caught.value.original_type == "tests.state_flows:QuotaExceeded"
    assert caught.value.original_message == "quota hit at 5"


def test_a_returned_state_decides_a_fleet_run(states_worker: subprocess.Popen[bytes]) -> None:
    good = sf.decides_its_state.delay(True)
    assert good.result(timeout=60) == 4
    bad = sf.decides_its_state.delay(False)
    assert bad.wait(timeout=60) is StateType.FAILED
    assert "returned a Failed state: not enough rows" in bad.info["message"]
    direct = sf.returns_failed_directly.delay()
    assert direct.wait(timeout=60) is StateType.FAILED
    assert "nothing to do today" in direct.info["message"]


def _logged(run: object, fragment: str, timeout: float = 10) -> list[str]:
    """The run's log messages once one contains ``fragment`` (lines are shipped every half second)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        messages = [line["message"] for line in run.logs()]  # type: ignore[attr-defined]
        if any(fragment in m for m in messages) or time.monotonic() > deadline:
            return messages
        time.sleep(0.1)


def test_what_a_body_logs_while_planned_is_in_its_runs_logs(states_worker: subprocess.Popen[bytes]) -> None:
    sf.PLANNED_HERE.clear()
    run = sf.wires_and_logs.delay(5)
    assert run.result(timeout=60) == 10
    assert run.info["mode"] != "dynamic"
    assert sf.PLANNED_HERE == ["wires_and_logs"]  # planned in this process
    messages = _logged(run, "printed while planned 5")
    assert any("planning with x=5" in m for m in messages)
    assert any("printed while planned 5" in m for m in messages)


def test_plan_on_worker_plans_the_body_there(states_worker: subprocess.Popen[bytes]) -> None:
    sf.PLANNED_HERE.clear()
    run = sf.planned_on_a_worker.delay(6)
    assert run.result(timeout=60) == 12
    assert sf.PLANNED_HERE == []  # nothing of the body ran in this process
    assert any("planning on a worker with x=6" in m for m in _logged(run, "planning on a worker"))


def test_generator_tasks_and_flows_give_lists(states_worker: subprocess.Popen[bytes]) -> None:
    """Their values are collected into a list, in-process and on the fleet (a stored result cannot stream)."""
    assert sf.yields_doubles(3) == [0, 2, 4]
    assert sf.counts_down(3) == [3, 2, 1]
    assert sf.yields_doubles.delay(3).result(timeout=60) == [0, 2, 4]
    assert sf.counts_down.delay(3).result(timeout=60) == [3, 2, 1]


def test_a_timed_out_task_raises_a_timeout_error_where_its_result_is_read(
    states_worker: subprocess.Popen[bytes],
) -> None:
    assert sf.catches_a_timeout() == "LocalTimeout"  # in-process: the thread was abandoned at the deadline
    assert sf.catches_a_timeout.delay().result(timeout=60) == "TaskTimedOut"
