"""The Redis connection of the run-state core: one client per URL, outage tolerance, the clock.

Only :mod:`orchestrator.runstate` holds a Redis client (``tests/test_architecture.py``
checks it); everything else asks the core's repositories.

A ``redis+sentinel://`` URL (:mod:`orchestrator.config.redis_urls`) gives a client on the
master that the sentinels name: after a failover its next connection asks them again, and a
call that was cut off is retried there like one cut off by a restart (:func:`outage_retry`).
A new master, like a restarted Redis, has no scripts loaded: :class:`ScriptSafeRedis` loads
them again when a pipeline is sent a second time.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import redis
import redis.client
import redis.sentinel
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from orchestrator.config.redis_urls import SentinelUrl, is_sentinel_url, parse_sentinel_url
from orchestrator.config.settings import get_settings
from orchestrator.config.tls import tls_options_for

_outage_seconds = 0.0  # how long this process's Redis calls wait for a lost Redis (see set_outage_seconds)

RedisError = redis.RedisError  # what a Redis call raises; callers outside the core catch this name
RedisConnectionError = redis.ConnectionError
RedisUnavailable = (redis.ConnectionError, redis.TimeoutError)  # Redis away, as opposed to a refused command


def outage_retry(seconds: float | None = None) -> dict[str, Any]:
    """redis-py connection options that retry a lost connection for about ``seconds``
    (by default what :func:`orchestrator.runstate.store.ride_out_outages` set).

    Empty (fail at once, redis-py's default) for 0. The backoff grows from 0.1 s to 1 s, so a
    quick restart costs little and a long one is polled once a second.
    """
    seconds = _outage_seconds if seconds is None else seconds
    if seconds <= 0:
        return {}
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=int(seconds) + 3)
    return {"retry": retry, "retry_on_error": [redis.ConnectionError, redis.TimeoutError]}


def set_outage_seconds(seconds: float) -> None:
    """Clients made from now on wait about ``seconds`` for a lost Redis (see ``ride_out_outages``)."""
    global _outage_seconds
    _outage_seconds = seconds
    client.cache_clear()


class ScriptSafePipeline(redis.client.Pipeline):
    """A pipeline whose scripts survive a pipeline sent again on another server.

    redis-py loads a pipeline's scripts (SCRIPT EXISTS, SCRIPT LOAD) once, then sends it, and
    sends it again when the connection is lost on the way (:func:`outage_retry`). When that
    second send lands on a new master after a failover, or on a restarted Redis, the server
    has no script cache: every EVALSHA of the batch answers NOSCRIPT and the batch's steps
    (a task run's end, a flow run's waiters) are lost. Here each send after the first loads
    the scripts again first, on the connection it is about to use. The first send costs
    nothing more.
    """

    _sends = 0

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        self._sends = 0
        return super().execute(raise_on_error)

    def _execute_pipeline(self, connection: Any, commands: Any, raise_on_error: bool) -> Any:
        self._reload_on_resend()
        return super()._execute_pipeline(connection, commands, raise_on_error)

    def _execute_transaction(self, connection: Any, commands: Any, raise_on_error: bool) -> Any:
        self._reload_on_resend()
        return super()._execute_transaction(connection, commands, raise_on_error)

    def _reload_on_resend(self) -> None:
        self._sends += 1
        if self._sends > 1 and self.scripts:
            self.load_scripts()


class ScriptSafeRedis(redis.Redis):
    """The run store's client class: redis-py's, with :class:`ScriptSafePipeline` pipelines."""

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        return ScriptSafePipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)


@lru_cache(maxsize=8)
def client(url: str) -> Any:
    """One client (and pool) per URL; ``Any`` because decode_responses=True makes every
    reply a ``str`` while redis-py's annotations say ``bytes | str``."""
    options: dict[str, Any] = {"decode_responses": True, "health_check_interval": 30, **outage_retry()}
    if is_sentinel_url(url):
        return sentinel_master(parse_sentinel_url(url), **options)
    tls = tls_options_for(url, get_settings())  # verified like the broker's
    return ScriptSafeRedis.from_url(url, **options, **tls)


def sentinel_master(where: SentinelUrl, **options: Any) -> Any:
    """A client on the master the sentinels of ``where`` name now, and after any failover.

    Each new connection asks the sentinels (in the order given, the first that answers) for
    the master's address; a connection to a master that became a replica is closed on its
    first refused write (READONLY), and the call retried when ``options`` carry a retry.
    """
    manager = redis.sentinel.Sentinel(list(where.sentinels), sentinel_kwargs=where.sentinel_kwargs())
    return manager.master_for(
        where.master, redis_class=ScriptSafeRedis, db=where.db, **where.redis_credentials(), **options
    )


def answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis at ``url`` answers a PING within ``timeout`` (a throw-away client: nothing cached)."""
    try:
        limits = {"socket_connect_timeout": timeout, "socket_timeout": timeout}
        if is_sentinel_url(url):
            probe = sentinel_master(parse_sentinel_url(url), **limits)
        else:
            probe = redis.Redis.from_url(url, **limits)
        try:
            return bool(probe.ping())
        finally:
            probe.close()
    except (redis.RedisError, OSError):
        return False


def read_hashes(client: Any, names: list[str]) -> list[dict[str, str]]:
    """Several hashes in one round trip (empty where a key does not exist)."""
    if not names:
        return []
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(name)
    return list(pipe.execute())


def queued_hset(pipe: Any, name: str, mapping: dict[str, Any]) -> None:
    """Queue ``HSET name field value ...`` in ``pipe``: the command ``pipe.hset(name, mapping=mapping)``
    queues, without redis-py's command method (its checks and argument building cost a few µs a
    command on the path of every ``.delay()``, which queues about ten)."""
    if not mapping:
        raise redis.DataError("'hset' with no key value pairs")  # as redis-py refuses it, before anything is sent
    pipe.execute_command("HSET", name, *[part for pair in mapping.items() for part in pair])


def now() -> float:
    """Wall-clock time stamp used in every record (seconds since the epoch)."""
    return time.time()
