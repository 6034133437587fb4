"""Flows for tests/test_create_run.py; its worker imports this module with --flows tests.create_flows."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel

from orchestrator import flow, task

QUEUE = "create-flows"


class Point(BaseModel):
    x: int


class Segment(BaseModel):
    """A model holding models: its JSON Schema refers to Point through ``$defs``."""

    start: Point
    end: Point


@task
def echo(value: Any) -> Any:
    return value


@flow(name="typed-flow", queue=QUEUE)
def typed_flow(n: int, segment: Segment | None = None, days: list[dt.date] | None = None) -> Any:
    """Typed parameters: an int, a nested model (given as data), a list of dates."""
    return echo.submit([n, segment, days])


@flow(name="named-dynamic-flow", queue=QUEUE)
def named_dynamic_flow(n: int) -> int:
    """Needs a task's value while it runs: a worker of its queue starts (and names) each run."""
    return echo.submit(n).result()  # type: ignore[no-any-return]
