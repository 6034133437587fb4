"""``get_run_logger()``: a logger that says which flow and task run wrote each line."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

from .context import current_run


class RunLoggerAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Prefixes messages with the run's names and ids and adds them as record fields."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        kwargs["extra"] = {**extra, **kwargs.get("extra", {})}
        label = extra.get("task_name") or extra.get("flow_name") or ""
        run_id = extra.get("task_run_id") or extra.get("flow_run_id") or ""
        return f"[{label} {run_id}] {msg}", kwargs


def get_run_logger(name: str = "orchestrator.runs") -> logging.LoggerAdapter:  # type: ignore[type-arg]
    """A logger bound to the current flow or task run (a plain logger outside any run)."""
    run = current_run()
    extra: dict[str, Any] = {}
    if run is not None:
        extra = {
            "flow_run_id": run.flow_run_id,
            "flow_name": run.flow_name,
            "task_run_id": run.task_run_id,
            "task_name": run.task_name,
            "attempt": run.attempt,
        }
    return RunLoggerAdapter(logging.getLogger(name), extra)
