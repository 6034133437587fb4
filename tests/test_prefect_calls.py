"""Prefect 3 call forms: ``task.map(...)`` gives a future list with ``.wait()`` and ``.result()``,
and a direct task call inside a flow takes ``wait_for=`` (in-process, traced and on the fleet)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator.devstack.localstack import worker
from orchestrator.runtime.futures import FutureList
from tests import call_flows as cf


@pytest.fixture(scope="module")
def calls_worker(redis_url: str, worker_logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    with worker(
        redis_url,
        ["tests.call_flows"],
        queues=cf.QUEUE,
        concurrency=2,
        name="calls@%h",
        log_path=worker_logs / "calls.log",
    ) as proc:
        yield proc


def test_in_process_map_gives_a_future_list_and_direct_calls_wait() -> None:
    from orchestrator import flow

    @flow
    def looks_at_the_list() -> bool:
        return isinstance(cf.square.map([1, 2]), FutureList)

    assert looks_at_the_list()
    assert cf.squares_read_at_once(4) == [0, 1, 4, 9]
    out = cf.direct_call_waits(0.3)
    assert out["second"]["at"] > out["first"]["at"]


def test_a_direct_call_with_wait_for_is_an_edge_of_the_plan() -> None:
    plan = cf.direct_call_waits.plan(0.0)
    by_label = {n.label: n for n in plan.nodes.values()}
    assert by_label["stamp-1"].wait_for == [by_label["stamp-0"].id]
    assert cf.squares_passed_on.plan(3).nodes  # a future list passed on stays static


def test_on_the_fleet_map_results_and_direct_call_waits(calls_worker: subprocess.Popen[bytes]) -> None:
    assert cf.squares_read_at_once.delay(5).result(timeout=60) == [0, 1, 4, 9, 16]
    passed_on = cf.squares_passed_on.delay(3)
    assert passed_on.result(timeout=60) == [0, 1, 4] and passed_on.info["mode"] == "static"
    waited = cf.direct_call_waits.delay(0.5)
    out = waited.result(timeout=60)
    assert waited.info["mode"] == "static"
    assert out["second"]["at"] >= out["first"]["at"]  # "at" is when each ended: the second ran after the first


def test_wait_for_skips_values_of_work_already_done() -> None:
    """``wait_for=[load(x)]`` after a direct call (which gave its value) and a map's list inside the
    list: values are skipped (nothing to wait for), the futures in the list are waited for."""
    from orchestrator import flow, task

    order: list[str] = []

    @task
    def step(name: str, pause: float = 0.0) -> str:
        import time

        time.sleep(pause)
        order.append(name)
        return name

    @flow
    def ordered() -> str:
        done = step("first")  # a value: its work is done
        mapped = step.map(["m1", "m2"], pause=0.2)
        return step("last", wait_for=[done, mapped, 42])  # type: ignore[no-any-return]

    assert ordered() == "last"
    assert order[0] == "first" and order[-1] == "last" and sorted(order[1:3]) == ["m1", "m2"]
