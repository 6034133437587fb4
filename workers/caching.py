"""Task caching on a worker: look a task run's key up in Redis before it runs, keep its result after.

The executor calls :func:`open_cache` only for a task with cache options (``task.cache``),
once its inputs are resolved. A hit means the function is not called: the task run ends
Completed with the cached result and says so in its record (``cached`` = "1", ``cache_key``,
``cached_from`` and a message), which the events carry to the API. A miss runs as usual,
then :meth:`CacheUse.keep` stores the result under the key for the next caller, on any
worker: the cache lives in Redis (``store.task_cache``). A task with ``persist_result=True``
keeps only a pointer in Redis; the text stays in the result storage, under the task run
that executed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from orchestrator.authoring.caching import CacheContext
from orchestrator.authoring.tasks import Task
from orchestrator.data.results import read_persisted
from orchestrator.runstate.connection import RedisError
from orchestrator.runstate.store import RunStore
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
    if entry is None:
        return use
    text = entry.text if not entry.persisted else read_persisted([entry.task_run_id])[entry.task_run_id]
    if text is not None:  # a persisted result gone from its storage is a miss: the task runs again
        use.hit, use.source = text, entry.task_run_id
    return use


def _flow_parameters(store: RunStore, flow_run_id: str) -> dict[str, Any]:
    """The flow run's parameters as its record keeps them (JSON data), for FLOW_PARAMETERS."""
    text = store.flow_runs.field(flow_run_id, "parameters")
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
