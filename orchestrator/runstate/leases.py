"""The leases repository: who holds a singleton job (the recorder, the services loop),
and which task runs are alive (their heartbeats).

A lease is a key with an owner and an expiry: a holder that dies stops renewing it,
and another takes over after at most the lease's length. A heartbeat is a task run's
score in a sorted set (when it was last heard from), with the record the crash
detector needs if it goes silent.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis
from redis.exceptions import LockError

from orchestrator.runstate import keys
from orchestrator.runstate.connection import now
from orchestrator.runstate.scripts import Scripts

RECORDER_LEASE = f"{keys.PREFIX}:recorder-lease"
SERVICES_LOCK = f"{keys.PREFIX}:lock:dispatcher"  # the services loop's lock (the key name predates the loop's name)


class Leases:
    """Singleton jobs across API processes, and the heartbeats of running task runs."""

    def __init__(self, redis: Any, scripts: Scripts) -> None:
        self._redis = redis
        self._scripts = scripts

    # -- singleton jobs ------------------------------------------------------------------
    def hold(self, name: str, owner: str, seconds: int) -> bool:
        """Take or renew the lease ``name`` for ``owner``; False while someone else holds it."""
        if self._redis.set(name, owner, nx=True, ex=seconds):
            return True
        if self._redis.get(name) == owner:
            self._redis.expire(name, seconds)
            return True
        return False

    def release(self, name: str, owner: str) -> None:
        """Give the lease up if ``owner`` still holds it (never fails: the lease expires anyway)."""
        try:
            if self._redis.get(name) == owner:
                self._redis.delete(name)
        except redis.RedisError:
            pass

    def try_lock(self, name: str, timeout: float) -> Any:
        """Take the lock ``name`` if it is free (None if another holder has it); ``release_lock`` it after."""
        lock = self._redis.lock(name, timeout=timeout)
        return lock if lock.acquire(blocking=False) else None

    @staticmethod
    def release_lock(lock: Any) -> None:
        """Give a lock back (one that expired during a very slow pass is simply gone)."""
        try:
            lock.release()
        except LockError:
            pass

    # -- heartbeats of running task runs -----------------------------------------------------
    def beat(
        self,
        running: dict[str, Any],
        new: dict[str, dict[str, Any]],
        finished: set[str],
        slots: Callable[[Any], None],
    ) -> None:
        """One round trip for a worker process: refresh the running task runs (``slots``: their
        concurrency leases, a callable that renews them in a pipeline), record the new ones' crash
        records, forget the finished ones."""
        pipe = self._redis.pipeline(transaction=False)
        if running:
            pipe.zadd(keys.HEARTBEATS, dict.fromkeys(running, now()))
            slots(pipe)
        if new:
            pipe.hset(keys.HEARTBEAT_RECORDS, mapping={t: json.dumps(r, default=str) for t, r in new.items()})
        if finished:
            self.forget(pipe, *finished)
        pipe.execute()

    @staticmethod
    def forget(pipe: Any, *task_run_ids: str) -> None:
        """Take task runs off the heartbeat set, with their crash records (in ``pipe``)."""
        pipe.zrem(keys.HEARTBEATS, *task_run_ids)
        pipe.hdel(keys.HEARTBEAT_RECORDS, *task_run_ids)

    def forget_now(self, *task_run_ids: str) -> None:
        """:meth:`forget` in a round trip of its own."""
        pipe = self._redis.pipeline(transaction=False)
        self.forget(pipe, *task_run_ids)
        pipe.execute()

    def silent_since(self, cutoff: float, limit: int = 200) -> list[str]:
        """Task runs whose last heartbeat is older than ``cutoff``."""
        return list(self._redis.zrangebyscore(keys.HEARTBEATS, "-inf", cutoff, start=0, num=limit))

    def claim_crash(self, task_run_id: str, cutoff: float) -> tuple[str, dict[str, Any]] | None:
        """Claim one silent task run for the crash detector (``lua/claim_crash.lua``).

        None when it beats again or another detector took it; else ("restarted", record) when
        an execution began after the one that went silent, or ("crashed", record) having made
        every message of that attempt or an older one stale.
        """
        claimed = self._scripts["claim_crash"](
            keys=[keys.HEARTBEATS, keys.HEARTBEAT_RECORDS, keys.task_run(task_run_id)], args=[task_run_id, repr(cutoff)]
        )
        if not claimed:
            return None
        verdict, raw = claimed
        return str(verdict), json.loads(raw)

    def claim_body(self, run_id: str, attempt: int, body_task_run_id: str, record: dict[str, Any]) -> bool:
        """Take an attempt of a dynamic body and put it under the crash detector, in one step
        (``lua/claim_body.lua``); False if the run ended, a newer attempt is live, or it was taken."""
        return bool(
            self._scripts["claim_body"](
                keys=[keys.flow_run(run_id), keys.HEARTBEATS, keys.HEARTBEAT_RECORDS],
                args=[attempt, body_task_run_id, json.dumps(record, default=str), repr(now())],
            )
        )

    def redis_uptime(self, default: float) -> float:
        """How long Redis has been up (a restarted Redis silenced every heartbeat with it)."""
        return float(self._redis.info("server").get("uptime_in_seconds", default))
