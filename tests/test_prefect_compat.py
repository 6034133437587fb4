"""Issue 16's compatibility suite: every flow of ``tests/compat_flows.py`` run in-process and on the fleet,
each compared with what Prefect 3 documents for it (the value, or the exception type it raises).

In-process, the flow is called like a function, as a Prefect user calls it. On the fleet, ``flow.delay``
sends it to a worker of queue ``compat`` that this module starts; a run Prefect would raise from must end
FlowRunFailed naming the exception. All fleet runs are sent at once when the first fleet test starts and
each test then waits for its own: the worker (concurrency 4) overlaps them, so the module stays short on
two cores.

The expectations are Prefect's: a failing case is a gap to close, not an expectation to lower.
"""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import orchestrator
from orchestrator.devstack.localstack import worker
from orchestrator.errors import FlowRunFailed
from tests import compat_flows as cf

RESULT_TIMEOUT = 60  # seconds a fleet run may take; every flow here needs well under one
MARKER_TIMEOUT = 5  # seconds a fleet hook or log line may lag behind the run's end (logs ship every 0.5 s)


@pytest.fixture(scope="module", autouse=True)
def marker_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One marker folder for this session, shared with the worker: runs of other sessions never meet ours."""
    folder = tmp_path_factory.mktemp("compat-markers")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COMPAT_MARKER_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def compat_worker(redis_url: str, worker_logs: Path, marker_dir: Path) -> Iterator[subprocess.Popen[bytes]]:
    with worker(
        redis_url,
        ["tests.compat_flows"],
        queues="compat",
        concurrency=4,
        name="compat@%h",
        log_path=worker_logs / "compat.log",
        extra_env={"COMPAT_MARKER_DIR": str(marker_dir)},
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def fleet_runs(compat_worker: subprocess.Popen[bytes], request: pytest.FixtureRequest) -> dict[str, Any]:
    """Every selected case sent to the fleet at once: its FlowRun, or the exception ``delay`` raised."""
    selected = {
        item.callspec.params["case"].name
        for item in request.session.items
        if getattr(item, "originalname", "") == "test_on_the_fleet" and hasattr(item, "callspec")
    }
    clear_markers(cf.marker_names())
    runs: dict[str, Any] = {}
    for case in (c for c in cf.CASES if c.name in selected):
        try:
            runs[case.name] = case.flow.delay(**case.params)
        except Exception as exc:  # reported by the case's own test
            runs[case.name] = exc
    return runs


def clear_markers(names: set[str] | dict[str, str]) -> None:
    for name in names:
        cf.marker(name).unlink(missing_ok=True)


def settled(value: Any) -> Any:
    """``value`` with every State in it replaced by its result.

    Prefect 3 hands back States where a flow returns futures (a tuple of futures gives a tuple of
    States); this product gives their values. Both compare equal here.
    """
    state_type = getattr(orchestrator, "State", None)
    if state_type is not None and isinstance(value, state_type):
        return settled(value.result())  # type: ignore[attr-defined]
    if isinstance(value, list):
        return [settled(v) for v in value]
    if isinstance(value, tuple):
        return tuple(settled(v) for v in value)
    if isinstance(value, dict):
        return {k: settled(v) for k, v in value.items()}
    return value


def call_in_process(case: cf.Case) -> Any:
    """Call the flow as a Prefect user does; an async flow's call gives a coroutine, run here."""
    value = case.flow(**case.params)
    if inspect.iscoroutine(value):
        value = asyncio.run(value)
    return value


def eventually(probe: Callable[[], Any], timeout: float) -> Any:
    """Poll ``probe`` until it gives something true or ``timeout`` passes; return its last answer."""
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if answer or time.monotonic() >= deadline:
            return answer
        time.sleep(0.05)


def marker_contents(case: cf.Case) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in case.markers:
        path = cf.marker(name)
        found[name] = path.read_text() if path.exists() else None
    return found


@pytest.mark.parametrize("case", cf.CASES, ids=[c.name for c in cf.CASES])
def test_in_process(case: cf.Case) -> None:
    clear_markers(case.markers)
    if case.raises is not None:
        with pytest.raises(case.raises):
            call_in_process(case)
    else:
        assert settled(call_in_process(case)) == case.expected
    # Prefect calls hooks before the flow call returns or raises: they are there at once.
    assert marker_contents(case) == case.markers


@pytest.mark.parametrize("case", cf.CASES, ids=[c.name for c in cf.CASES])
def test_on_the_fleet(case: cf.Case, fleet_runs: dict[str, Any]) -> None:
    run = fleet_runs[case.name]
    if case.fleet_refuses is not None:  # a documented difference: refused when sent, nothing ran
        assert isinstance(run, case.fleet_refuses), run
        return
    if isinstance(run, Exception):
        raise run
    if case.raises is not None:
        with pytest.raises(FlowRunFailed) as failed:
            run.result(timeout=RESULT_TIMEOUT)
        assert case.fleet_message in str(failed.value)
    else:
        assert settled(run.result(timeout=RESULT_TIMEOUT)) == case.expected
    if case.run_name is not None:
        assert run.info["name"] == case.run_name
    if case.task_run_names or case.task_states:
        rows = run.task_runs()
        labels = {row.get("label", "") for row in rows}
        assert set(case.task_run_names) <= labels
        for prefix, state in case.task_states.items():
            assert {row.get("state") for row in rows if row.get("label", "").startswith(prefix)} == {state}
    if case.log_lines:

        def missing_lines() -> list[str]:
            messages = [str(line.get("message", "")) for line in run.logs()]
            return [want for want in case.log_lines if not any(want in m for m in messages)]

        eventually(lambda: not missing_lines(), MARKER_TIMEOUT)
        assert missing_lines() == []
    if case.markers:  # hooks run on the worker, where the state is recorded: give them a moment
        eventually(lambda: marker_contents(case) == case.markers, MARKER_TIMEOUT)
        assert marker_contents(case) == case.markers
