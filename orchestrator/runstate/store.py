"""The run-state core's entry point: one :class:`RunStore` per Redis, holding its repositories.

Workers, clients, the API and its services read and write runs only through the
repositories a store holds, each named after what it keeps:

- ``flow_runs`` (:mod:`~orchestrator.runstate.flow_runs`): flow run records, end latches, plans, counts;
- ``task_runs`` (:mod:`~orchestrator.runstate.task_runs`): task run records, starts and ends, joins, maps;
- ``events`` (:mod:`~orchestrator.runstate.event_stream`): the event stream and the recorder's reading of it;
- ``delayed`` (:mod:`~orchestrator.runstate.delayed`): retries and pokes waiting to be sent;
- ``fleet`` (:mod:`~orchestrator.runstate.fleet`): live workers and the flows they announced;
- ``leases`` (:mod:`~orchestrator.runstate.leases`): singleton jobs and the heartbeats of running task runs;
- ``task_cache`` (:mod:`~orchestrator.runstate.task_cache`): cached task results by task and cache key;
- ``linked`` (:mod:`~orchestrator.runstate.linked_runs`): child runs of their own, and who waits for them;
- ``removal`` (:mod:`~orchestrator.runstate.removal`): every key of finished runs, removed at once;

Tag concurrency limits (slots held as leases) are :mod:`~orchestrator.runstate.slots`.

Key names live in :mod:`~orchestrator.runstate.keys`, the Lua scripts in ``lua/``
(:mod:`~orchestrator.runstate.scripts`), the records' encoding in
:mod:`~orchestrator.runstate.records` and the events' in :mod:`~orchestrator.runstate.events`.
Nothing outside this package holds a Redis client or builds a key.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from orchestrator.config.settings import get_settings
from orchestrator.errors import ConnectionProblem
from orchestrator.guards.redaction import mask_urls_in, masked_url
from orchestrator.runstate import connection
from orchestrator.runstate.connection import RedisError, now, outage_retry
from orchestrator.runstate.delayed import DelayedMessages
from orchestrator.runstate.event_stream import EventStream
from orchestrator.runstate.fleet import Fleet
from orchestrator.runstate.flow_runs import FlowRuns
from orchestrator.runstate.journal import Journal
from orchestrator.runstate.leases import Leases
from orchestrator.runstate.linked_runs import LinkedRuns
from orchestrator.runstate.records import JSON_FIELDS, describe_record
from orchestrator.runstate.removal import Removal
from orchestrator.runstate.scripts import Scripts
from orchestrator.runstate.task_cache import TaskCache
from orchestrator.runstate.task_runs import STALE, Finished, Started, TaskRuns

__all__ = [
    "JSON_FIELDS",
    "STALE",
    "Finished",
    "RunStore",
    "Started",
    "describe_record",
    "get_store",
    "now",
    "outage_retry",
    "ride_out_outages",
]


def ride_out_outages(seconds: float) -> None:
    """Make this process's run-store calls wait up to about ``seconds`` for a lost Redis to come back.

    Workers call it (``workers/app.py``): a task that ends while Redis restarts must still
    record its end (and send what comes next) once Redis is back; failing at once loses the
    end, and its flow run would wait forever. Clients and the API keep failing at once, so a
    request answers 503 instead of hanging. Call it before the first :func:`get_store`.
    """
    connection.set_outage_seconds(seconds)
    _store_for.cache_clear()


class RunStore:
    """The run state of one Redis, reached through its repositories."""

    def __init__(self, url: str | None = None) -> None:
        settings = get_settings()
        self.url = url or settings.redis_url
        self.redis: Any = connection.client(self.url)  # the core's own; tests may read it, nothing else may
        self.ttl = settings.result_ttl_seconds
        self.scripts = Scripts(self.redis)
        self.events = EventStream(self.redis, self.scripts, self.ttl)
        grace = settings.finished_grace_seconds
        self.flow_runs = FlowRuns(self.redis, self.scripts, self.ttl, self.events, grace)
        self.task_runs = TaskRuns(self.redis, self.scripts, self.ttl, self.events, grace)
        self.delayed = DelayedMessages(self.redis, self.scripts)
        self.fleet = Fleet(self.redis)
        self.leases = Leases(self.redis, self.scripts)
        self.task_cache = TaskCache(self.redis, self.ttl)
        self.linked = LinkedRuns(self.redis, self.flow_runs, self.ttl)
        self.journal = Journal(self.redis, self.scripts, self.ttl)
        self.removal = Removal(self.redis)

    def pipeline(self) -> Any:
        """A pipeline that queues writes of several repositories for one round trip (``execute()``)."""
        return self.redis.pipeline(transaction=False)

    def server(self) -> tuple[Any, ...] | None:
        """Which Redis database this store writes to (host, port, db, unix socket), to tell whether a
        broker shares it; None when that is not known up front (a sentinel-named master)."""
        return server_of(getattr(getattr(self.redis, "connection_pool", None), "connection_kwargs", None) or {})

    def unreachable(self, exc: Exception) -> ConnectionProblem:
        """The error to raise when Redis does not answer: it names the URL (its password masked:
        this text reaches 503 bodies, health answers, CLI output and logs) and the fix."""
        return ConnectionProblem(
            f"cannot reach Redis at {masked_url(self.url)} ({mask_urls_in(str(exc))}); start redis-server or set "
            "ORCHESTRATOR_REDIS_URL to a Redis that is running."
        )

    def ping(self) -> None:
        """Raise ConnectionProblem with the URL if Redis does not answer."""
        try:
            self.redis.ping()
        except RedisError as exc:
            raise self.unreachable(exc) from exc


@lru_cache(maxsize=8)
def _store_for(url: str) -> RunStore:
    return RunStore(url)


def server_of(connection_kwargs: dict[str, Any]) -> tuple[Any, ...] | None:
    """(host, port, db, unix socket) from a redis-py pool's connection options; None without a host or socket."""
    host, path = connection_kwargs.get("host"), connection_kwargs.get("path")
    if not host and not path:
        return None
    return (host, int(connection_kwargs.get("port") or 6379), int(connection_kwargs.get("db") or 0), path)


def get_store() -> RunStore:
    """The process's store for the configured Redis (built once: scripts hashed once)."""
    return _store_for(get_settings().redis_url)
