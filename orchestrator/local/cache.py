"""Task caching in an in-process run: the same policies, the cache in this process's memory.

An in-process run has no Redis, so cached results live in a process-wide table with
expirations (a monotonic clock): every flow run of this process shares it, as every worker
shares the Redis cache on the fleet. It holds at most :data:`MAX_ENTRIES` entries (the
oldest go first) and is gone with the process. A hit ends the task run Completed with
the cached value (loaded from its serialized text, so no caller shares a mutable object
with another), and its state history says "cached result (key ...)".
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.authoring.caching import CacheContext
from orchestrator.authoring.hooks import call_hooks
from orchestrator.data.serialization import loads, to_jsonable
from orchestrator.errors import TaskRunFailed
from orchestrator.runtime.context import RunInfo
from orchestrator.states import StateType

if TYPE_CHECKING:
    from orchestrator.authoring.tasks import Task
    from orchestrator.local.runner import LocalEngine, LocalFuture

MAX_ENTRIES = 10_000
DEFAULT_SECONDS: float | None = None  # no expiration: kept while the process lives


class MemoryCache:
    """(task name, cache key) -> (result text, the task run that made it, expiry on the monotonic clock)."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], tuple[str, str, float | None]] = {}
        self._lock = threading.Lock()

    def get(self, task_name: str, key: str) -> tuple[str, str] | None:
        """(text, source task run id) of a live entry, or None."""
        with self._lock:
            entry = self._entries.get((task_name, key))
            if entry is None:
                return None
            text, source, expires = entry
            if expires is not None and time.monotonic() >= expires:
                del self._entries[(task_name, key)]
                return None
            return text, source

    def put(self, task_name: str, key: str, text: str, source: str, seconds: float | None) -> None:
        with self._lock:
            self._entries.pop((task_name, key), None)  # a refreshed entry counts as the newest
            self._entries[(task_name, key)] = (text, source, None if seconds is None else time.monotonic() + seconds)
            while len(self._entries) > MAX_ENTRIES:
                del self._entries[next(iter(self._entries))]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


MEMORY = MemoryCache()


@dataclass
class LocalCacheUse:
    """One in-process task run's use of the cache (``answered``: it ended here, from the cache or failing)."""

    task: Task[Any, Any]
    key: str | None
    task_run_id: str
    answered: bool = False

    def keep(self, text: str) -> None:
        """Store the result of the run that executed under its key."""
        if self.key is not None and self.task.cache is not None:
            MEMORY.put(self.task.name, self.key, text, self.task_run_id, self.task.cache.expiration or DEFAULT_SECONDS)


def open_local_cache(
    engine: LocalEngine, future: LocalFuture, task: Task[Any, Any], inputs: dict[str, Any]
) -> LocalCacheUse:
    """Look the task run up; on a hit (or a key that cannot be computed) end ``future`` here.

    The key error fails the task run as the fleet does (Failed, the message naming the
    parameter and the fix), and nothing else of the flow run is lost.
    """
    settings = task.cache
    assert settings is not None
    info = RunInfo(
        engine.run_id, engine.flow.name, future.task_run_id, task.name, extra={"local": True}, tags=list(task.tags)
    )
    parameters = engine.parameters
    context = CacheContext(
        task,
        future.task_run_id,
        engine.run_id,
        engine.flow.name,
        1,
        lambda: {k: to_jsonable(v, f"flow {engine.flow.name!r} parameter {k!r}") for k, v in parameters.items()},
    )
    try:
        key = settings.policy.compute_key(context, inputs)
    except Exception as exc:
        future.set_state(StateType.FAILED, str(exc))
        call_hooks(task, task.hooks, info, StateType.FAILED, str(exc))
        error = TaskRunFailed(f"task {future.label} ended Failed: {exc}")
        error.__cause__ = exc
        future.cf.set_exception(error)
        return LocalCacheUse(task, None, future.task_run_id, answered=True)
    use = LocalCacheUse(task, key, future.task_run_id)
    found = MEMORY.get(task.name, key) if key is not None and not settings.refresh else None
    if found is None:
        return use
    text, source = found
    value = loads(text, allow_pickle=task.result_serializer == "pickle", where=f"task {future.label} cached result")
    future.set_state(StateType.RUNNING)
    future.set_state(StateType.COMPLETED, f"cached result (key {key}) of task run {source}; the function did not run")
    call_hooks(task, task.hooks, info, StateType.COMPLETED)
    future.cf.set_result(value)
    use.answered = True
    return use


def clear_local_cache() -> None:
    """Forget every in-process cached result (tests, notebooks)."""
    MEMORY.clear()
