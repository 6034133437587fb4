"""Prefect-style calls (tests/test_prefect_calls.py): map() gives a future list, direct calls take wait_for."""

from __future__ import annotations

import time
from typing import Any

from orchestrator import flow, task

QUEUE = "calls"


@task
def square(x: int) -> int:
    return x * x


@task
def stamp(label: str, pause: float = 0.0) -> dict[str, Any]:
    """Sleeps ``pause``, then says when it ended."""
    time.sleep(pause)
    return {"label": label, "at": time.time()}


@flow(queue=QUEUE)
def squares_read_at_once(n: int) -> list[int]:
    """Dynamic (it reads the values): map() then .wait() and .result() on the list."""
    futures = square.map(list(range(n)))
    futures.wait()
    return futures.result()  # type: ignore[no-any-return]


@flow(queue=QUEUE)
def squares_passed_on(n: int) -> list[int]:
    """Static: the future list is passed on as it is."""
    return square.map(list(range(n)))  # type: ignore[return-value]


@flow(queue=QUEUE)
def direct_call_waits(pause: float) -> dict[str, Any]:
    """A direct call with wait_for: it runs after the first, with no data passed."""
    first = stamp.submit("first", pause)
    second = stamp("second", wait_for=[first])
    return {"first": first, "second": second}
