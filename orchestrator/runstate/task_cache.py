"""The task cache repository: results of cached task runs, one Redis hash per (task, cache key).

An entry holds what the executor stores as a task result (the serialized text), or, for
a task with ``persist_result=True``, the id of the task run whose result the result storage
keeps (the text is not copied into Redis then). Its expiration is the key's TTL, so Redis
itself forgets an expired entry; with no expiration an entry lives as long as results do
(``result_ttl_seconds``), which keeps Redis's memory bounded as before.

Entries are not under a run tree's root: they outlive the run that made them, by design.
Two runs that miss the same key at once both run and both write; the last write wins
(the results are meant to be interchangeable: that is what sharing a key says).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from orchestrator.runstate import keys
from orchestrator.runstate.connection import now


@dataclass(frozen=True)
class CacheEntry:
    """One cached result."""

    task_run_id: str  # the task run that executed and stored it
    text: str | None  # the result text; None when the result storage keeps it (persisted)
    created: float

    @property
    def persisted(self) -> bool:
        return self.text is None


class TaskCache:
    """Cached task results by task name and cache key."""

    def __init__(self, redis: Any, default_ttl: int) -> None:
        self._redis = redis
        self._default_ttl = default_ttl

    def get(self, task_name: str, cache_key: str) -> CacheEntry | None:
        """The entry under ``cache_key`` for ``task_name`` (None: none, or it expired)."""
        raw: dict[str, str] = self._redis.hgetall(keys.task_cache(task_name, cache_key))
        if not raw or "task_run_id" not in raw:
            return None
        persisted = raw.get("persisted") == "1"
        return CacheEntry(
            raw["task_run_id"], None if persisted else raw.get("result", ""), float(raw.get("created") or 0)
        )

    def put(self, task_name: str, cache_key: str, task_run_id: str, text: str | None, expiration: float | None) -> None:
        """Keep a result under ``cache_key`` for ``expiration`` seconds (None: ``result_ttl_seconds``).

        ``text`` None means the result storage keeps it under ``task_run_id``. Written in
        one transaction, so a reader never sees an entry without its expiry.
        """
        key = keys.task_cache(task_name, cache_key)
        fields = {
            "task_run_id": task_run_id,
            "persisted": "1" if text is None else "0",
            "result": text or "",
            "created": repr(now()),
        }
        pipe = self._redis.pipeline(transaction=True)
        pipe.delete(key)
        pipe.hset(key, mapping=fields)
        pipe.pexpire(key, max(1, round((expiration or self._default_ttl) * 1000)))
        pipe.execute()

    def forget(self, task_name: str, cache_key: str) -> None:
        """Drop one entry (its result storage text, if any, stays)."""
        self._redis.delete(keys.task_cache(task_name, cache_key))
