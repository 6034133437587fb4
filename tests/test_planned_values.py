"""A body that uses a task's value in any way the tracer cannot plan runs with the real values.

Operators, comparisons with values, ``str``/f-strings, attributes, and exceptions the body
raises on a planned future (``isinstance`` checks) all move the run to dynamic mode; a subflow
doing so becomes a run of its own. In-process the same bodies simply run.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.devstack.localstack import worker
from orchestrator.planning.tracer import DynamicFlowRequired
from tests import value_flows as vf

CASES: list[tuple[Any, tuple[Any, ...], Any]] = [
    (vf.modulo, (7,), 1),
    (vf.checks_its_type, (3,), "int"),
    (vf.formats, (4,), "row-4"),
    (vf.uses_an_attribute, ("abc",), "ABC"),
    (vf.compares, (5,), "five"),
    (vf.compares, (6,), "other"),
]


@pytest.fixture(scope="module")
def values_worker(redis_url: str, worker_logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    with worker(
        redis_url,
        ["tests.value_flows"],
        queues=vf.QUEUE,
        concurrency=2,
        name="values@%h",
        log_path=worker_logs / "values.log",
    ) as proc:
        yield proc


@pytest.mark.parametrize(("body", "args", "expected"), CASES, ids=lambda c: getattr(c, "name", None))
def test_in_process_the_body_runs_with_values(body: Any, args: tuple[Any, ...], expected: Any) -> None:
    assert body(*args) == expected


@pytest.mark.parametrize(("body", "args", "expected"), CASES[:5], ids=lambda c: getattr(c, "name", None))
def test_planning_says_the_body_needs_values(body: Any, args: tuple[Any, ...], expected: Any) -> None:
    if body is vf.checks_its_type:  # an exception on a planned future: told apart when the run is prepared
        with pytest.raises(AssertionError):
            body.plan(*args)
        return
    with pytest.raises(DynamicFlowRequired) as signal:
        body.plan(*args)
    text = str(signal.value)
    assert "PlannedFuture" not in text and ("number-0" in text or "word-0" in text), text


def test_on_the_fleet_each_runs_dynamic_with_the_value_python_gives(
    values_worker: subprocess.Popen[bytes],
) -> None:
    runs = [(body.delay(*args), expected) for body, args, expected in CASES]
    for run, expected in runs:
        assert run.result(timeout=60) == expected
        assert run.info["mode"] == "dynamic", run.info.get("mode_reason")
        assert "PlannedFuture" not in str(run.info.get("mode_reason"))


def test_a_subflow_computing_with_its_input_is_a_run_of_its_own_and_the_parent_stays_compiled(
    values_worker: subprocess.Popen[bytes],
) -> None:
    run = vf.parent_of_parity.delay(9)
    assert run.result(timeout=60) == {"parity": 1}
    assert run.info["mode"] == "static"
