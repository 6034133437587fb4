"""A worker tells the fleet who it is: its queues, its flows, and that it is alive."""

from __future__ import annotations

import os
import socket
from typing import Any

from orchestrator.authoring import registry
from orchestrator.authoring.schema import describe_flow
from orchestrator.runstate.store import get_store, now


class Announcer:
    """Writes the worker record once, then refreshes its alive key on each beat."""

    def __init__(self) -> None:
        self.hostname = socket.gethostname()
        self.record: dict[str, Any] = {}

    def announce(self, hostname: str, queues: list[str]) -> None:
        """Record this worker and the flows it imported (called when it is ready)."""
        self.hostname = hostname
        flows = registry.all_flows()
        self.record = {
            "hostname": hostname,
            "queues": sorted(queues),
            "flows": sorted(f.name for f in flows),
            "pid": os.getpid(),
            "started": now(),
        }
        get_store().fleet.announce(hostname, self.record, {f.name: describe_flow(f) for f in flows})

    def beat(self) -> None:
        """Keep the alive key fresh (called every few seconds)."""
        if self.record:
            get_store().fleet.still_alive(self.hostname)

    def leave(self) -> None:
        """A worker shutting down is no longer live."""
        if self.record:
            get_store().fleet.leave(self.hostname)
