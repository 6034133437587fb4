"""Dataclasses and pydantic models as parameters and results (tests/test_data_models.py).

Its worker imports this module with ``--flows tests.model_flows``: the classes below are
defined at the top level of a module the worker imports, so they may travel by name.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from orchestrator import flow, task

QUEUE = "models"


@dataclass
class Window:
    start: dt.datetime
    end: dt.datetime


@dataclass(frozen=True)
class Batch:
    """A dataclass holding a dataclass, a tuple, and a field its ``__post_init__`` computes (init=False)."""

    name: str
    window: Window
    rows: tuple[int, ...]
    total: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "total", sum(self.rows))


class Summary(BaseModel):
    """A pydantic model holding a dataclass and a set."""

    name: str
    total: int
    tags: set[str]
    window: Window


class Config(BaseModel):
    """A flow parameter given as a plain JSON object over HTTP; ``label`` is read from ``labelText``."""

    model_config = ConfigDict(populate_by_name=True)

    threshold: int = Field(ge=0)
    label: str = Field(default="none", alias="labelText")
    since: dt.date | None = None


class Tripwire:
    """Not a dataclass: building one would leave a file. A forged message names it; nothing may appear."""

    def __init__(self, path: str) -> None:
        Path(path).touch()


@dataclass
class Marker:
    """A dataclass whose ``__post_init__`` leaves a file: the control that a forged value is decoded at all."""

    path: str

    def __post_init__(self) -> None:
        Path(self.path).touch()


@task
def make_batch(name: str, start: dt.datetime, n: int) -> Batch:
    return Batch(name, Window(start, start + dt.timedelta(hours=n)), tuple(range(n)))


@task
def describe(batch: Batch) -> dict[str, Any]:
    """What a downstream task received: its types, and values computed from it."""
    return {
        "type": type(batch).__name__,
        "window_type": type(batch.window).__name__,
        "hours": (batch.window.end - batch.window.start).total_seconds() / 3600,
        "total": batch.total,
        "start": batch.window.start,
    }


@task
def summarize(batch: Batch, tags: list[str]) -> Summary:
    return Summary(name=batch.name, total=batch.total, tags=set(tags), window=batch.window)


@task
def kind_of(value: Any, seen_by_body: str) -> dict[str, str]:
    """The type a task received, beside the type the flow body saw (named while it was traced)."""
    return {"task": type(value).__name__, "body": seen_by_body}


@task
def sink(value: Any) -> str:
    """Receives whatever its message carries (the forged-message test)."""
    return type(value).__name__


@task
def local_result() -> Any:
    """Returns an instance of a class made inside the function: it cannot be sent."""

    @dataclass
    class Local:
        x: int

    return Local(1)


@flow(name="batch-flow", queue=QUEUE)
def batch_flow(name: str, start: dt.datetime, n: int) -> Any:
    """Static: a dataclass result consumed by a downstream task."""
    return describe.submit(make_batch.submit(name, start, n))


@flow(name="summary-flow", queue=QUEUE)
def summary_flow(name: str, start: dt.datetime, n: int) -> Any:
    """Static: a pydantic model as the flow's result."""
    return summarize.submit(make_batch.submit(name, start, n), ["a", "b"])


@flow(name="window-flow", queue=QUEUE)
def window_flow(window: Window) -> Any:
    """A dataclass parameter, passed on to a task."""
    return kind_of.submit(window, type(window).__name__)


@flow(name="config-flow", queue=QUEUE)
def config_flow(cfg: Config) -> Any:
    """A pydantic model parameter: the body names the type it got, the task the type it got."""
    return {"seen": kind_of.submit(cfg, type(cfg).__name__), "cfg": cfg}


@flow(name="dynamic-batch-flow", queue=QUEUE)
def dynamic_batch_flow(window: Window, n: int) -> dict[str, Any]:
    """Dynamic: it reads a dataclass result while it runs, and returns dataclasses."""
    batch = make_batch.submit("dyn", window.start, n).result()
    if batch.total > 0:  # a value read in the body: this flow runs on a worker
        return {"batch": batch, "window": window, "body_saw": type(window).__name__}
    return {}


@flow(name="local-result-flow", queue=QUEUE)
def local_result_flow() -> Any:
    return local_result.submit()


@flow(name="any-flow", queue=QUEUE)
def any_flow(value: Any) -> Any:
    """An untyped parameter: the schema says nothing, the encoder decides."""
    return sink.submit(value)


@flow(name="sinks-flow", queue=QUEUE)
def sinks_flow(n: int) -> Any:
    """``n`` sinks side by side (tests/test_data_models.py replaces their inputs with forged ones)."""
    return [sink.submit(i) for i in range(n)]
