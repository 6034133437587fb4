"""The one record of a flow run about to be created.

Every door that creates a run (``.delay()``, ``apply_async``, the API and so the CLI,
deployments) builds a :class:`NewFlowRun` (see :mod:`orchestrator.runs.create`). The run
store writes it with :meth:`NewFlowRun.to_redis`; the API keeps the same record as a
database row, in its own spelling (``api.submit.flow_run_row``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class NewFlowRun:
    """A root flow run about to exist: what every door knows when it creates one."""

    id: str
    flow: str
    name: str
    name_given: bool  # else the worker that starts it names it from the flow's flow_run_name
    queue: str
    parameters: dict[str, Any]  # JSON data
    created: float
    scheduled_start: float | None = None
    options: dict[str, Any] = field(default_factory=dict)  # timeout and retries, where the flow's code is known

    def to_redis(self) -> dict[str, Any]:
        """The run store's fields of the record (its state is written with its first event)."""
        fields: dict[str, Any] = {
            "id": self.id,
            "flow": self.flow,
            "name": self.name,
            "name_given": "1" if self.name_given else "0",
            "root": self.id,
            "queue": self.queue,
            "parameters": self.parameters,
            **self.options,
            "created": self.created,
        }
        if self.scheduled_start is not None:
            fields["scheduled_start"] = self.scheduled_start
        return fields
