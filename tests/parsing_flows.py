"""Flows for tests/test_parameter_parsing.py; its worker imports this module with --flows tests.parsing_flows."""

from __future__ import annotations

import datetime as dt
from typing import Any

from orchestrator import flow, task

QUEUE = "parsing-flows"


@task
def describe(label: str, n: int, day: dt.date | None, ids: list[int] | None, anything: Any) -> dict[str, str]:
    """Each value's repr: what type the worker's task got it as."""
    return {"label": repr(label), "n": repr(n), "day": repr(day), "ids": repr(ids), "anything": repr(anything)}


@flow(name="parsing-flow", queue=QUEUE)
def parsing_flow(
    label: str, n: int = 1, day: dt.date | None = None, ids: list[int] | None = None, anything: Any = None
) -> dict[str, str]:
    """A str, an int, a date, a list and an untyped parameter: one of each reading of ``-p``."""
    return describe.submit(label, n, day, ids, anything)  # type: ignore[return-value]
