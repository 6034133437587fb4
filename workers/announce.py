"""A worker tells the fleet who it is: its queues, its flows, and that it is alive."""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from orchestrator.authoring import registry
from orchestrator.runstate import keys
from orchestrator.runstate.fleet import ALIVE_SECONDS, describe_flow
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
        store = get_store()
        pipe = store.redis.pipeline(transaction=False)
        if flows:
            pipe.hset(keys.FLOWS, mapping={f.name: json.dumps(describe_flow(f)) for f in flows})
        pipe.hset(keys.WORKERS, hostname, json.dumps(self.record))
        pipe.set(keys.worker_alive(hostname), repr(now()), ex=ALIVE_SECONDS)
        pipe.execute()

    def beat(self) -> None:
        """Keep the alive key fresh (called every few seconds)."""
        if self.record:
            get_store().redis.set(keys.worker_alive(self.hostname), repr(now()), ex=ALIVE_SECONDS)

    def leave(self) -> None:
        """A worker shutting down is no longer live."""
        if self.record:
            get_store().redis.delete(keys.worker_alive(self.hostname))
