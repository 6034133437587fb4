"""Which engine is running the current flow body, and which run we are in.

A flow body runs under one of three engines: the local engine (threads, no
services), the tracer (records a plan without running tasks) or the dynamic driver
on a worker. Decorated functions ask :func:`current_engine` what to do when called.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.runtime.engine import Engine


@dataclass
class RunInfo:
    """What code inside a flow or task can learn about its run."""

    flow_run_id: str
    flow_name: str
    task_run_id: str | None = None
    task_name: str | None = None
    attempt: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    run_name: str | None = None  # the run's own name, where the engine knows it
    tags: list[str] = field(default_factory=list)  # a task run's tags (its own and a tags() block's)

    @property
    def id(self) -> str:
        """The id of this run (Prefect's ``flow_run.id`` / ``task_run.id`` in a hook)."""
        return self.task_run_id or self.flow_run_id

    @property
    def name(self) -> str:
        """The name of this run (Prefect's ``flow_run.name`` in a hook): its own, else its flow's or task's."""
        return self.run_name or (self.task_name if self.task_run_id else self.flow_name) or ""


_engine: contextvars.ContextVar[Engine | None] = contextvars.ContextVar("orchestrator_engine", default=None)
_run: contextvars.ContextVar[RunInfo | None] = contextvars.ContextVar("orchestrator_run", default=None)


def current_engine() -> Engine | None:
    """The engine running the current flow body, or None outside any flow."""
    return _engine.get()


def current_run() -> RunInfo | None:
    """The flow or task run the current code belongs to, if any."""
    return _run.get()


@contextmanager
def using(engine: Engine | None, run: RunInfo | None) -> Iterator[None]:
    """Run a block under ``engine`` and ``run``, restoring the previous ones after."""
    engine_token = _engine.set(engine)
    run_token = _run.set(run)
    try:
        yield
    finally:
        _run.reset(run_token)
        _engine.reset(engine_token)
