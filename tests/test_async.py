"""``async def`` tasks and flows: in-process, traced into static plans, dynamic bodies, on a real worker.

An async task's coroutine runs on an event loop kept per worker thread (``runtime/aio.py``),
reused from call to call; timeouts cancel it, retries and logs work as for sync tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import StateType
from orchestrator.authoring.schema import parameters_schema
from orchestrator.devstack.localstack import worker
from orchestrator.errors import TaskTimedOut
from orchestrator.runs.lifecycle import stop_flow_run
from orchestrator.runstate.store import get_store
from orchestrator.runtime import aio
from orchestrator.transport.celery_app import client_app
from orchestrator.transport.messaging import CeleryMessaging
from tests import async_flows as af
from tests.api_support import eventually


@pytest.fixture(scope="module")
def async_workers(redis_url: str, worker_logs: Path) -> Iterator[None]:
    """One worker with two slots (concurrency is visible) and one with a single process (one loop)."""
    with contextlib.ExitStack() as stack:
        for queue, concurrency in ((af.QUEUE, 2), (af.SOLO, 1)):
            stack.enter_context(
                worker(
                    redis_url,
                    ["tests.async_flows"],
                    queues=queue,
                    concurrency=concurrency,
                    name=f"{queue}@%h",
                    log_path=worker_logs / f"{queue}.log",
                )
            )
        yield


def overlap(first: dict[str, float], second: dict[str, float]) -> bool:
    """Whether two timed runs were running at the same moment."""
    return max(first["start"], second["start"]) < min(first["end"], second["end"])


# -- the event loop of a thread (no services) ------------------------------------------------------------


async def _loop_id() -> int:
    return id(asyncio.get_running_loop())


def test_one_loop_per_thread_reused_from_call_to_call() -> None:
    here = aio.run(_loop_id())
    assert aio.run(_loop_id()) == here  # the same loop object, still alive between the calls
    assert id(aio.thread_loop()) == here
    elsewhere: list[int] = []
    thread = threading.Thread(target=lambda: elsewhere.extend([aio.run(_loop_id()), aio.run(_loop_id())]))
    thread.start()
    thread.join()
    assert elsewhere[0] == elsewhere[1] != here  # another thread has its own, reused too


def test_a_timeout_cancels_the_coroutine_and_the_loop_stays_usable() -> None:
    cleaned: list[str] = []

    async def overruns() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append("finally ran")

    with pytest.raises(TaskTimedOut, match=r"timeout_seconds=0\.2"):
        aio.run(overruns(), timeout=0.2)
    assert cleaned == ["finally ran"]
    assert aio.run(_loop_id()) == id(aio.thread_loop())

    async def raises_its_own() -> None:
        raise TimeoutError("the task's own")

    with pytest.raises(TimeoutError, match="the task's own") as info:  # not taken for our timeout
        aio.run(raises_its_own(), timeout=5)
    assert not isinstance(info.value, TaskTimedOut)


class SoftLimit(Exception):
    """Stands in for Celery's SoftTimeLimitExceeded, raised from a signal handler."""


def test_an_exception_from_a_signal_handler_leaves_the_loop_clean() -> None:
    """Celery's soft time limit interrupts the thread wherever it is, often in the loop's select()."""
    cleaned: list[str] = []

    async def sleeps() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append("cancelled")

    def soft_limit(*_: object) -> None:
        raise SoftLimit("soft time limit")

    previous = signal.signal(signal.SIGALRM, soft_limit)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        loop = aio.thread_loop()
        with pytest.raises(SoftLimit):
            aio.run(sleeps())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert cleaned == ["cancelled"]  # the coroutine was cancelled, not left on the loop
    assert not asyncio.all_tasks(loop)
    assert aio.run(_loop_id()) == id(loop)  # and the same loop runs the next one


def test_what_a_call_leaves_running_is_cancelled_before_it_returns() -> None:
    cleaned: list[str] = []

    async def forgotten() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append("cancelled")

    async def starts_and_returns() -> int:
        asyncio.get_running_loop().create_task(forgotten())
        await asyncio.sleep(0)
        return 1

    assert aio.run(starts_and_returns()) == 1
    assert cleaned == ["cancelled"]
    assert not asyncio.all_tasks(aio.thread_loop())


def test_a_coroutine_run_from_inside_a_running_loop_runs_beside_it() -> None:
    async def outer() -> int:
        return aio.run(_loop_id())  # what .delay() of an async flow does from async code

    assert asyncio.run(outer()) != 0


# -- in-process ------------------------------------------------------------------------------------------


def test_the_schema_describes_async_parameters_like_sync_ones() -> None:
    schema = parameters_schema(af.overlapping)
    assert schema["properties"] == {"seconds": {"type": "number"}}
    assert schema["required"] == ["seconds"]


def test_an_async_body_that_only_wires_tasks_is_traced_into_a_plan() -> None:
    plan = af.wired.plan(1)
    labels = {node.label: node for node in plan.nodes.values()}
    assert sorted(labels) == ["double-0", "double-1", "double-2", "double-3", "inc-0"]
    ref = {node.id: node.label for node in plan.nodes.values()}
    assert ref[labels["double-1"].inputs["x"]["__ref__"]] == "double-0"  # submit(a) of the awaited a
    assert ref[labels["double-2"].inputs["x"]["__ref__"]] == "double-1"  # await b gave b itself
    assert ref[labels["inc-0"].inputs["x"]["__ref__"]] == "double-2"


def test_async_flows_run_in_process() -> None:
    assert asyncio.run(af.wired(1)) == (9, 4)  # a=2, b=4, gather(8, 4); inc(8)
    assert asyncio.run(af.parent(3)) == 7  # an async subflow awaited in an async parent
    result = asyncio.run(af.overlapping(0.3))
    assert result["result"] == 7  # inc(double(1 + 2))
    assert overlap(result["first"], result["second"])

    async def from_a_running_loop() -> list[Any]:
        return list(await asyncio.gather(af.parent(1), af.parent(2)))

    assert asyncio.run(from_a_running_loop()) == [3, 5]


def test_in_an_async_body_submit_gives_a_future_and_a_call_a_coroutine() -> None:
    assert asyncio.run(af.kinds()) == {"submit gives a future": True, "a call gives a coroutine": True}


def test_an_async_task_called_outside_a_flow_is_a_coroutine() -> None:
    call = af.double(2)
    assert asyncio.iscoroutine(call)
    assert asyncio.run(call) == 4


# -- on the fleet ----------------------------------------------------------------------------------------


def test_an_async_body_that_only_wires_tasks_runs_static_on_the_fleet(async_workers: None) -> None:
    run = af.wired.delay(1)
    assert run.result(timeout=60) == (9, 4)
    assert run.info["mode"] == "static"
    assert len(run.task_runs()) == 5

    nested = af.parent.delay(3)
    assert nested.result(timeout=60) == 7
    assert nested.info["mode"] == "static"

    linked = af.linked_parent.delay(3)  # an async child that computes with its inputs: a run of its own
    assert sorted(n.kind for n in af.linked_parent.plan(3).nodes.values()) == ["flow_run", "task", "task"]
    assert linked.result(timeout=60) == 15  # inc(double(double(3) + 1))
    assert linked.info["mode"] == "static"

    async def send_from_async_code() -> Any:
        return af.wired.delay(2)  # traced beside the running loop

    from_a_loop = asyncio.run(send_from_async_code())
    assert from_a_loop.result(timeout=60) == (17, 8)
    assert from_a_loop.info["mode"] == "static"


def test_a_dynamic_async_body_gathers_task_calls_that_run_concurrently(async_workers: None) -> None:
    run = af.overlapping.delay(1.0)
    result = run.result(timeout=60)
    assert run.info["mode"] == "dynamic"
    assert result["result"] == 7
    assert overlap(result["first"], result["second"]), result  # two slots, both used at once
    assert {row["state"] for row in run.task_runs()} == {"Completed"}


def test_an_async_task_is_retried(async_workers: None) -> None:
    run = af.retried.delay(5)
    assert run.result(timeout=60) == {"x": 5, "attempt": 2}
    (row,) = [r for r in run.task_runs() if r["name"].endswith("fails_first")]
    assert row["attempts"] == 2 and row["state"] == "Completed"


def test_log_prints_of_an_async_task_reach_the_run_log(async_workers: None) -> None:
    run = af.printing.delay(4)
    assert run.result(timeout=60) == 4

    def printed() -> bool:
        return any(line.get("message", "").endswith("async print 4") for line in run.logs())

    eventually(printed, 20, what="the printed line in the run log")


def test_the_loop_of_a_worker_is_reused_and_survives_timeouts(async_workers: None) -> None:
    """On a one-process worker every task runs in the same thread: the same loop object each time,
    also after a task that ran past its timeout (one declared, and one given with with_options)."""
    first = af.probe.delay().result(timeout=60)
    for via_options in (False, True):
        run = af.overrun.delay(30, via_options)
        assert run.wait(timeout=30) is StateType.FAILED
        (row,) = [r for r in run.task_runs() if r["label"].startswith("overruns") or r["label"].startswith("marks")]
        assert row["state"] == "TimedOut", row
        assert "timeout_seconds=1" in row["message"]
        assert float(row["ended"]) - float(row["started"]) < 10  # ended at its timeout, not after the 30 s sleep
    after = af.probe.delay().result(timeout=60)
    assert after["pid"] == first["pid"] and after["loop"] == first["loop"]
    assert after["calls"] == first["calls"] + 1  # the same loop object went on counting
    assert after["timed_out_here"] is True  # the loop the timed-out tasks ran on


def test_cancelling_terminates_running_async_tasks(async_workers: None) -> None:
    run = af.sleepy.delay(60)

    def both_running() -> bool:
        rows = run.task_runs()
        return len(rows) == 2 and all(r["state"] == "Running" for r in rows)

    eventually(both_running, 30, what="both sleeping tasks Running")
    assert stop_flow_run(get_store(), CeleryMessaging(client_app()), run.id, StateType.CANCELLED, "by the test")
    assert run.wait(timeout=20) is StateType.CANCELLED
    assert {r["state"] for r in run.task_runs()} == {"Cancelled"}
    # Both slots were taken by 60 s sleeps: a run completing now proves they were terminated.
    assert af.wired.delay(1).result(timeout=30) == (9, 4)
