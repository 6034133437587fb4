"""Flows for tests/test_linked_runs.py: subflows as runs of their own, flows that trigger flows.

Every flow runs on queue ``linked`` (its own worker, concurrency 2). Tasks that must prove how
often they ran append a line to a file the test names.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from orchestrator import flow, run_deployment, task

QUEUE = "linked"


def _count_and_append(path: str) -> int:
    """How many times this was called with ``path`` before (one line per call)."""
    file = Path(path)
    before = len(file.read_text().splitlines()) if file.exists() else 0
    with file.open("a") as out:
        out.write("x\n")
    return before


@task
def nap(seconds: float, value: int) -> int:
    time.sleep(seconds)
    return value


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def stamp(value: int) -> dict[str, Any]:
    """The value, and when this ran (the child's own task: when the dependent child really ran)."""
    return {"value": value, "at": time.time()}


@flow(queue=QUEUE)
def producer(seconds: float, value: int) -> int:
    """Only wires a task: traced into its parent's plan."""
    return nap(seconds, value)  # type: ignore[return-value]


@flow(queue=QUEUE)
def total(a: int, b: int) -> dict[str, Any]:
    """Computes with its inputs (``a + b``): a run of its own, traced once a and b exist."""
    return stamp(a + b)  # type: ignore[return-value]


@flow(queue=QUEUE)
def three_producers_and_a_total() -> dict[str, Any]:
    """Three subflows side by side (2 s, 1 s, 3 s) and one that takes the first two's outputs."""
    first = producer(2.0, 1)
    second = producer(1.0, 2)
    third = producer(3.0, 3)
    summed = total(first, second)
    return {"total": summed, "third": third}


@flow(queue=QUEUE)
def leaf_sum(a: int, b: int) -> int:
    return add(a + b, 100)  # type: ignore[return-value]


@flow(queue=QUEUE)
def middle(a: int) -> int:
    """Computes with its input, and calls a child that computes with one of its own futures."""
    doubled = add(a * 2, 0)
    return leaf_sum(doubled, a)  # type: ignore[return-value]


@flow(queue=QUEUE)
def outer() -> int:
    """outer -> middle -> leaf_sum: a child of a child, each a run of its own."""
    return middle(add(1, 2))  # type: ignore[return-value]


@task
def fails_first_time(path: str, value: int) -> int:
    if _count_and_append(path) == 0:
        raise ValueError("the first call fails")
    return value


@task
def counted(path: str) -> str:
    _count_and_append(path)
    return "done"


@flow(queue=QUEUE)
def flaky_child(path: str, value: int) -> int:
    return fails_first_time(path, value + 0)  # type: ignore[return-value]


@flow(queue=QUEUE, retries=1)
def parent_with_a_flaky_child(flaky_path: str, steady_path: str) -> dict[str, Any]:
    steady = counted(steady_path)
    child = flaky_child(flaky_path, add(1, 1))
    return {"steady": steady, "child": child}


@flow(queue=QUEUE)
def echo(value: int) -> int:
    return add(value, 0)  # type: ignore[return-value]


@task
def describe_id(run_id: str) -> str:
    return f"started {run_id}"


@flow(queue=QUEUE)
def triggers_echo(value: int) -> dict[str, Any]:
    """``delay()`` in a traced body: a node whose value is the new run's id (not waited for)."""
    started = echo.delay(add(value, 1))
    return {"run_id": started, "text": describe_id(started)}


@flow(queue=QUEUE)
def slow_child(seconds: float) -> int:
    return nap(seconds + 0, 7)  # type: ignore[return-value]


@flow(queue=QUEUE)
def waits_for_slow_child() -> int:
    return slow_child(nap(0.0, 30))  # type: ignore[arg-type, return-value]


@flow(queue=QUEUE)
def dynamic_parent(n: int) -> list[int]:
    """Reads a value (dynamic), then starts ``n`` children at once with submit() and one with a call."""
    width = add.submit(n, 0).result()
    futures = [producer.submit(1.0, i) for i in range(width)]
    called = echo(5)
    return [f.result() for f in futures] + [called]


@flow(queue=QUEUE)
def runs_a_deployment(deployment: str, wait: bool) -> Any:
    return run_deployment(deployment, {"value": 41}, wait=wait)


@flow(queue=QUEUE)
def names_its_child() -> dict[str, Any]:
    """A with_options subflow that computes with its inputs: its run of its own keeps the options."""
    return total.with_options(flow_run_name="sum-of-{a}-and-{b}")(add(1, 0), 2)  # type: ignore[return-value]
