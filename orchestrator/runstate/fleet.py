"""The fleet repository: live workers, their queues, the flows they announced.

Workers write these records when they start and refresh a short-lived "alive" key
while they run (``workers.announce``); the API reads them here to list flows, show
workers and explain why a run waits. No flow code is needed to read them.
"""

from __future__ import annotations

import json
from typing import Any

from orchestrator.runstate import keys
from orchestrator.runstate.connection import now

ALIVE_SECONDS = 15  # a worker not heard from for this long is not live


class Fleet:
    """Worker and flow announcements."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis

    def announce(self, hostname: str, record: dict[str, Any], flows: dict[str, dict[str, Any]]) -> None:
        """Record a worker that is ready and the flows it imported (name -> description), and mark it alive."""
        pipe = self._redis.pipeline(transaction=False)
        if flows:
            pipe.hset(keys.FLOWS, mapping={name: json.dumps(description) for name, description in flows.items()})
        pipe.hset(keys.WORKERS, hostname, json.dumps(record))
        pipe.set(keys.worker_alive(hostname), repr(now()), ex=ALIVE_SECONDS)
        pipe.execute()

    def still_alive(self, hostname: str) -> None:
        """Keep a worker's alive key fresh."""
        self._redis.set(keys.worker_alive(hostname), repr(now()), ex=ALIVE_SECONDS)

    def leave(self, hostname: str) -> None:
        """A worker shutting down is no longer live."""
        self._redis.delete(keys.worker_alive(hostname))

    def live_workers(self) -> list[dict[str, Any]]:
        """Workers whose alive key exists, with their queues and flows."""
        records = self._redis.hgetall(keys.WORKERS)
        names = sorted(records)
        if not names:
            return []
        alive = self._redis.mget([keys.worker_alive(n) for n in names])
        return [json.loads(records[n]) for n, ok in zip(names, alive, strict=True) if ok]

    def registered_flows(self) -> list[dict[str, Any]]:
        """Every flow some worker has announced (the newest announcement wins)."""
        return [json.loads(v) for _, v in sorted(self._redis.hgetall(keys.FLOWS).items())]

    def queue_lengths(self, queues: list[str]) -> dict[str, int]:
        """Messages waiting in each broker queue (kombu keeps a Redis queue's messages in a list named after it)."""
        if not queues:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        for name in queues:
            pipe.llen(name)
        return dict(zip(queues, pipe.execute(), strict=True))

    def flow_description(self, name: str) -> dict[str, Any] | None:
        """What a worker announced for one flow (None: no worker ever did)."""
        found = self._redis.hget(keys.FLOWS, name)
        return json.loads(found) if found else None
