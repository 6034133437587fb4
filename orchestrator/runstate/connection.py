"""The Redis connection of the run-state core: one client per URL, outage tolerance, the clock.

Only :mod:`orchestrator.runstate` holds a Redis client (``tests/test_architecture.py``
checks it); everything else asks the core's repositories.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

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


@lru_cache(maxsize=8)
def client(url: str) -> Any:
    """One client (and pool) per URL; ``Any`` because decode_responses=True makes every
    reply a ``str`` while redis-py's annotations say ``bytes | str``."""
    tls = tls_options_for(url, get_settings())  # verified like the broker's
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30, **outage_retry(), **tls)


def answers(url: str, timeout: float = 1.0) -> bool:
    """Whether a Redis at ``url`` answers a PING within ``timeout`` (a throw-away client: nothing cached)."""
    try:
        probe = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
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


def now() -> float:
    """Wall-clock time stamp used in every record (seconds since the epoch)."""
    return time.time()
