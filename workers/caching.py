"""Task caching on a worker: look a task run's key up in Redis before it runs, keep its result after.

The executor calls :func:`open_cache` only for a task with cache options (``task.cache``),
once its inputs are resolved. A hit means the function is not called: the task run ends
Completed with the cached result and says so in its record (``cached`` = "1", ``cache_key``,
``cached_from`` and a message), which the events carry to the API. A miss runs as usual,
then :meth:`CacheUse.keep` stores the result under the key for the next caller, on any
worker: the cache lives in Redis (``store.task_cache``). A task with ``persist_result=True``
keeps only a pointer in Redis; the text stays in the result storage, under the task run
that executed, and the entry is written there too (``cache-<hash>.json``, with its expiry),
so the cache of persisted results outlives Redis's TTL or a flushed Redis.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from orchestrator.authoring.caching import CacheContext, digest
from orchestrator.authoring.tasks import Task
from orchestrator.data.results import persist, read_persisted
from orchestrator.runstate.connection import RedisError
from orchestrator.runstate.store import RunStore, now
from orchestrator.runtime.context import RunInfo

log = logging.getLogger(__name__)


@dataclass
class CacheUse:
    """One task run's use of the cache: its key, and the cached result when it was a hit."""

    store: RunStore
    task: Task[Any, Any]
    task_run_id: str
    key: str
    hit: str | None = None  # the cached result text
    source: str = ""  # the task run that executed the cached result

    def fields(self) -> dict[str, str]:
        """What the task run's final record says about the cache (shown by the API)."""
        if self.hit is None:
            return {"cached": "0", "cache_key": self.key}
        message = f"cached result (key {self.key}) of task run {self.source}; the function did not run"
        return {"cached": "1", "cache_key": self.key, "cached_from": self.source, "message": message}

    def keep(self, text: str) -> None:
        """Store this run's result under the key (a hit keeps nothing: the entry is there).

        Best effort: a cache that cannot be written costs a later run its shortcut, never
        this run its result, so a Redis error is logged and the task run still completes.
        """
        if self.hit is not None:
            return
        settings = self.task.cache
        assert settings is not None
        persisted = self.task.persist_result  # its text is already on the result storage
        try:
            self.store.task_cache.put(
                self.task.name, self.key, self.task_run_id, None if persisted else text, settings.expiration
            )
        except RedisError:
            log.warning("task run %s: its result could not be cached under key %s", self.task_run_id, self.key)
        if persisted:
            expires = now() + settings.expiration if settings.expiration else None
            entry = {"task": self.task.name, "key": self.key, "task_run_id": self.task_run_id, "expires": expires}
            try:
                persist(storage_name(self.task.name, self.key), json.dumps(entry))
            except Exception:  # fsspec backends raise many types; the result itself is stored already
                log.warning("task run %s: its cache entry could not be written to result storage", self.task_run_id)


def open_cache(store: RunStore, task: Task[Any, Any], info: RunInfo, inputs: dict[str, Any]) -> CacheUse | None:
    """The cache use of one task run, or None when its policy gives no key for this call.

    Raises :class:`~orchestrator.errors.CacheKeyError` when the key cannot be computed (an
    input with no JSON form): the executor fails the task run with that message.
    """
    settings = task.cache
    assert settings is not None and info.task_run_id is not None
    context = CacheContext(
        task,
        info.task_run_id,
        info.flow_run_id,
        info.flow_name,
        info.attempt,
        lambda: _flow_parameters(store, info.flow_run_id),
    )
    key = settings.policy.compute_key(context, inputs)
    if key is None:
        return None
    use = CacheUse(store, task, info.task_run_id, key)
    if settings.refresh:
        return use  # run anyway; keep() overwrites the entry
    entry = store.task_cache.get(task.name, key)
    if entry is not None and not entry.persisted:
        use.hit, use.source = entry.text, entry.task_run_id
        return use
    source = entry.task_run_id if entry is not None else _source_in_storage(task, key)
    text = read_persisted([source])[source] if source else None
    if text is not None and source:  # a persisted result gone from its storage is a miss: the task runs again
        use.hit, use.source = text, source
    return use


def storage_name(task_name: str, key: str) -> str:
    """The name a persisted task's cache entry has in the result storage (a result-like id)."""
    return f"cache-{digest(task_name, key)}"


def _source_in_storage(task: Task[Any, Any], key: str) -> str | None:
    """The task run whose persisted result the result storage's cache entry names, unless it expired.

    Only for ``persist_result=True`` tasks whose Redis entry is gone (its TTL, a flushed Redis):
    their cache lives as long as the result storage keeps it, as in Prefect.
    """
    if not task.persist_result:
        return None
    text = read_persisted([storage_name(task.name, key)])[storage_name(task.name, key)]
    try:
        entry = json.loads(text) if text else None
    except ValueError:
        return None
    if not isinstance(entry, dict) or entry.get("task") != task.name or entry.get("key") != key:
        return None
    expires = entry.get("expires")
    if isinstance(expires, (int, float)) and expires <= now():
        return None
    source = entry.get("task_run_id")
    return source if isinstance(source, str) and source else None


def _flow_parameters(store: RunStore, flow_run_id: str) -> dict[str, Any]:
    """The flow run's parameters as its record keeps them (JSON data), for FLOW_PARAMETERS."""
    text = store.flow_runs.field(flow_run_id, "parameters")
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
