"""Calling a flow directly runs it in-process: no Redis, no worker, no API."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator

import pytest

from orchestrator import as_completed, flow, task, wait
from orchestrator.errors import (
    ConnectionProblem,
    OrchestratorError,
    ParameterError,
    SerializationError,
    TaskRunFailed,
)
from orchestrator.runtime.signals import FAIL, RETRY, SKIP
from tests import flows
from tests.api_support import sdk_settings


@pytest.fixture(autouse=True)
def no_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point Redis at a closed port: a local run must never need it. Settings are cached,
    so they are re-read here and again after the test (other modules use the real Redis)."""
    with sdk_settings(monkeypatch, ORCHESTRATOR_REDIS_URL="redis://127.0.0.1:1/0"):
        yield


def test_chain_fan_out_and_diamond_return_their_values() -> None:
    assert flows.chain_flow(x=3) == 10
    assert flows.fan_flow(n=10) == sum(2 * i for i in range(10))
    assert flows.diamond_flow(x=1) == 7


def test_map_over_parameter_and_upstream() -> None:
    assert flows.map_param_flow(values=[1, 2, 3]) == 12
    assert flows.map_upstream_flow(n=4) == 12


def test_subflows_and_dynamic_bodies_run_locally() -> None:
    assert flows.parent_flow() == {"first": 1, "second": 2, "third": 2}
    assert flows.dynamic_flow(x=1) == 13


def test_submitted_tasks_run_concurrently_in_threads() -> None:
    @task
    def nap(i: int) -> str:
        time.sleep(0.3)
        return threading.current_thread().name

    @flow
    def naps() -> list[str]:
        return [nap.submit(i) for i in range(4)]  # type: ignore[misc]

    started = time.monotonic()
    names = naps()
    assert time.monotonic() - started < 1.0
    assert len(set(names)) == 4


def test_retries_then_success() -> None:
    attempts: list[int] = []

    @task(retries=2, retry_delay_seconds=[0.01, 0.02])
    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise OSError("not yet")
        return "ok"

    @flow
    def uses_flaky() -> str:
        return flaky.submit()  # type: ignore[no-any-return]

    assert uses_flaky() == "ok"
    assert len(attempts) == 3


def test_failure_raises_the_tasks_own_exception_naming_the_runs() -> None:
    """As in Prefect: ``except ValueError`` around the flow call catches what the task raised, even
    when the task that decides the flow is a downstream one (UpstreamFailed); notes name the runs."""
    with pytest.raises(ValueError, match="boom") as caught:
        flows.failing_flow()
    notes = "\n".join(caught.value.__notes__)
    assert "task run explode-0" in notes and "inc-1 (UpstreamFailed" in notes
    assert caught.value.task_run_id and caught.value.flow_run_id  # type: ignore[attr-defined]


def test_signals_fail_skip_and_retry() -> None:
    pokes: list[int] = []

    @task
    def sensor() -> int:
        pokes.append(1)
        if len(pokes) < 3:
            raise RETRY("file not there yet", delay=0.01)
        return len(pokes)

    hopeless_attempts: list[int] = []

    @task(retries=5, retry_delay_seconds=0.01)
    def hopeless() -> None:
        hopeless_attempts.append(1)
        raise FAIL("bad config")

    @task
    def skipped() -> None:
        raise SKIP("holiday")

    @flow
    def sensing() -> int:
        return sensor.submit()  # type: ignore[no-any-return]

    assert sensing() == 3

    calls: list[int] = []

    @flow
    def failing() -> None:
        calls.append(1)
        hopeless.submit()

    with pytest.raises(FAIL, match="bad config"):
        failing()
    assert calls == [1]  # the flow body ran once
    assert len(hopeless_attempts) == 1, "FAIL ends the task run at once: none of its 5 retries is used"

    @flow
    def skipping() -> None:
        skipped.submit()

    skipping()  # a skipped leaf does not fail the flow


def test_non_json_return_fails_locally_like_on_the_fleet() -> None:
    with pytest.raises(SerializationError, match='result_serializer="pickle"'):
        flows.unsendable_flow()
    assert flows.pickle_flow() == "(1+2j)"


def test_flow_that_returns_early_waits_for_its_tasks() -> None:
    done: list[str] = []

    @task
    def slow() -> None:
        time.sleep(0.2)
        done.append("slow")

    @flow
    def early() -> str:
        slow.submit()
        return "early"

    assert early() == "early"
    assert done == ["slow"]


def test_wait_and_as_completed() -> None:
    @flow
    def waits() -> list[str]:
        futures = [flows.sleepy.submit(d, str(d)) for d in (0.3, 0.05, 0.15)]
        done, not_done = wait(futures)
        assert not not_done and len(done) == 3
        return [f.result() for f in as_completed(futures)]

    assert sorted(waits()) == ["0.05", "0.15", "0.3"]


def test_callable_default_is_evaluated_at_each_run() -> None:
    calls: list[int] = []

    def stamp() -> int:
        calls.append(1)
        return len(calls)

    @flow
    def stamped(n: int = stamp) -> int:  # type: ignore[assignment]
        return n

    assert calls == []  # not at definition
    assert stamped() == 1
    assert stamped() == 2
    assert stamped(n=10) == 10


def test_flow_run_name_template() -> None:
    @flow(flow_run_name="etl-{day}")
    def etl(day: dt.date) -> None: ...

    assert etl.run_name({"day": dt.date(2026, 1, 2)}, "abc") == "etl-2026-01-02"
    bad = flow(flow_run_name="etl-{nope}")(lambda_free)
    with pytest.raises(ParameterError, match="nope"):
        bad.run_name({}, "abc")


def lambda_free() -> None:
    """A module-level function used to build a flow in a test."""


def test_submit_outside_a_flow_says_what_to_do() -> None:
    with pytest.raises(OrchestratorError, match="outside a flow"):
        flows.add.submit(1, 2)
    assert flows.add(1, 2) == 3


def test_bad_arguments_name_the_parameter() -> None:
    with pytest.raises(ParameterError, match="x"):
        flows.chain_flow(y=1)  # type: ignore[call-arg]


def test_wait_for_a_value_is_nothing_to_wait_for() -> None:
    """As in Prefect: ``wait_for=[value]`` (a direct call's value: its work is done) waits for nothing."""

    @flow
    def waits_for_a_value() -> int:
        return flows.inc.submit(1, wait_for=[1, "done"])  # type: ignore[no-any-return]

    assert waits_for_a_value() == 2


@pytest.mark.parametrize("shape", ["chain", "group", "one task"])
def test_submitting_without_redis_says_what_to_check(shape: str) -> None:
    """Whatever the run's shape: a chain is written then sent, a group or one task (where the
    broker is the run store's Redis) written and sent in one step, which captures the messages first."""
    submit = {
        "chain": lambda: flows.chain_flow.delay(x=1),
        "group": lambda: flows.many_returned_flow.delay(n=3),
        "one task": lambda: flows.slow_flow.delay(seconds=0.1),
    }[shape]
    with pytest.raises(ConnectionProblem, match=r"redis://127\.0\.0\.1:1/0.*ORCHESTRATOR_REDIS_URL"):
        submit()


def test_allow_failure_lets_a_downstream_run_with_none_locally() -> None:
    from orchestrator import allow_failure

    @task
    def show(value: object) -> str:
        return repr(value)

    @flow
    def tolerant() -> str:
        bad = flows.explode.submit("boom")
        return show.submit(allow_failure(bad))  # type: ignore[no-any-return]

    assert tolerant() == "None"


def test_retry_condition_and_poke_timeout_locally() -> None:
    calls: list[str] = []

    @task(retries=3, retry_condition_fn=lambda task, exc: "transient" in str(exc))
    def picky(kind: str) -> None:
        calls.append(kind)
        raise OSError(kind)

    @task(poke_timeout_seconds=0.3)
    def never_ready() -> None:
        raise RETRY("nothing yet", delay=0.1)

    @flow
    def picky_flow(kind: str) -> None:
        picky.submit(kind)

    @flow
    def sensing() -> None:
        never_ready.submit()

    with pytest.raises(OSError, match="permanent"):
        picky_flow("permanent")
    assert calls == ["permanent"]
    calls.clear()
    with pytest.raises(OSError, match="transient"):
        picky_flow("transient")
    assert calls == ["transient"] * 4
    with pytest.raises(TaskRunFailed, match=r"poke_timeout_seconds=0\.3"):
        sensing()


def test_log_prints_in_process(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.flows import printing_flow, printing_task_flow

    with caplog.at_level(logging.INFO, logger="orchestrator.runs"):
        assert printing_task_flow() == 1
        assert printing_flow(n=3) == [3, 0]
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.endswith("first line") for m in logged) and any(m.endswith("inherited print 3") for m in logged)
    assert "this line stays on stdout" in capsys.readouterr().out


def test_an_in_process_subflow_gets_its_parameters_checked_and_converted() -> None:
    @flow
    def child(n: int) -> int:
        return n + 1

    @flow
    def parent(given: str) -> int:
        return child(given)  # type: ignore[arg-type]

    assert parent("5") == 6  # "5" for an int is 5, as for a call from outside
    with pytest.raises(ParameterError, match=r"parameter 'n' got 'five' \(str\), expected int"):
        parent("five")

    @flow
    def defaulted(n: int = None) -> str:  # type: ignore[assignment]  # noqa: RUF013  (a default that misfits its hint)
        return repr(n)

    @flow
    def calls_defaulted() -> str:
        return defaulted()

    assert defaulted() == calls_defaulted() == "None"  # a default not given is not judged, as from outside
