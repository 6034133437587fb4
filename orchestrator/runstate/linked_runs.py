"""The linked-runs repository: flow runs that a plan node (or a dynamic body) started as runs of their own.

A subflow whose body needs its actual parameters, ``child.delay()`` inside a flow body and
``run_deployment`` are nodes of the parent's plan. When such a node runs it creates the child
run here, once: the node's id decides the child's id, and :meth:`LinkedRuns.create_once`
writes the record, the child's start message and the node's own message to send again when
the child ends, in one transaction that does nothing if the child exists already. A
redelivered node message therefore never starts a second child, and a worker lost between
"record written" and "start sent" loses nothing: the start goes out through the delayed set
(:mod:`orchestrator.runstate.delayed`) with the record.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import WatchError

from orchestrator.runstate import keys
from orchestrator.runstate.connection import now
from orchestrator.runstate.flow_runs import FlowRuns
from orchestrator.states import StateType


class LinkedRuns:
    """Child runs of their own, the parent they belong to, and who waits for their end."""

    def __init__(self, redis: Any, flow_runs: FlowRuns, ttl: int) -> None:
        self._redis = redis
        self._flow_runs = flow_runs
        self._ttl = ttl

    def create_once(
        self, run_id: str, fields: dict[str, Any], *, tree: str, start: str | None, waiter: str | None
    ) -> bool:
        """Write a child run's record (Pending) unless it exists; False when it did.

        ``start`` (a serialized start message) is made due now and ``waiter`` (the parent
        node's message) waits on the child's end, in the same transaction as the record;
        ``tree`` (the parent's root run) learns of the child, so stopping it stops the child.
        """
        record_key = keys.flow_run(run_id)
        with self._redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(record_key)
                if pipe.exists(record_key):
                    return False
                pipe.multi()
                self._flow_runs.write(run_id, fields | {"state": StateType.PENDING.value}, pipe)
                self._link(pipe, tree, run_id)
                if waiter is not None:
                    pipe.rpush(keys.waiters(run_id), waiter)
                    pipe.expire(keys.waiters(run_id), self._ttl)
                if start is not None:
                    pipe.zadd(keys.DELAYED, {start: now()})
                pipe.execute()
            except WatchError:  # created meanwhile by another delivery of the same node
                return False
        return True

    def wait_for(self, run_id: str, waiter: str) -> StateType | None:
        """Have ``waiter`` sent when ``run_id`` ends; returns the run's state now.

        Used for a run created elsewhere (a deployment's run, made by the API): when it is
        final already, its end has passed and the caller must not wait (the waiter is taken back).
        """
        pipe = self._redis.pipeline(transaction=False)
        pipe.rpush(keys.waiters(run_id), waiter)
        pipe.expire(keys.waiters(run_id), self._ttl)
        pipe.execute()
        state = self._flow_runs.state(run_id)
        if state is not None and state.is_final:
            self._redis.lrem(keys.waiters(run_id), 0, waiter)
        return state

    def link(self, tree: str, run_id: str) -> None:
        """Record that run tree ``tree`` started ``run_id`` (stopping the tree stops it)."""
        pipe = self._redis.pipeline(transaction=False)
        self._link(pipe, tree, run_id)
        pipe.execute()

    def _link(self, pipe: Any, tree: str, run_id: str) -> None:
        pipe.sadd(keys.linked_children(tree), run_id)
        pipe.expire(keys.linked_children(tree), self._ttl)

    def children(self, tree: str) -> set[str]:
        """The runs of their own run tree ``tree`` started."""
        return set(self._redis.smembers(keys.linked_children(tree)))
