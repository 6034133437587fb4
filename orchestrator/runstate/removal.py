"""The removal repository: every Redis key of finished flow runs, removed at once.

``DELETE /api/flow-runs/{id}`` and the retention service delete a run's rows from the
database; this removes what Redis still holds of it (its record, latch, plan, counts,
logs, journal, and each task run's record, result and edges) instead of leaving it to
its TTL (``ORCHESTRATOR_RESULT_TTL_SECONDS``). Task cache entries are not a run's: they
outlive the run that made them (``keys.task_cache``), and are left alone.

Two round trips, whatever the size: the task runs each flow run's set names (a run the
database never fully recorded still has them there), then one pipeline of ``UNLINK``s
(freed off Redis's main thread). Removing keys that are already gone is a no-op, so a
deletion that fails half-way can be repeated.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from orchestrator.runstate import keys

CHUNK = 1000  # keys per UNLINK


def flow_run_keys(run_id: str) -> list[str]:
    """Every key named after a flow run (as a run of its own, or as the root of a run tree)."""
    return [
        keys.flow_run(run_id),
        keys.flow_done(run_id),
        keys.plan(run_id),
        keys.finals(run_id),
        keys.remaining(run_id),
        keys.join_pending(run_id),
        keys.join_signature(run_id),
        keys.inputs(run_id),
        keys.tolerant(run_id),
        keys.subflow_ends(run_id),
        keys.flow_logs(run_id),
        keys.flow_tasks(run_id),
        keys.waiters(run_id),
        keys.linked_children(run_id),
        keys.journal(run_id),
        keys.wakeups(run_id),
    ]


def task_run_keys(task_run_id: str) -> list[str]:
    """Every key named after a task run: its record, its result, its downstream set, its map expansion."""
    return [
        keys.task_run(task_run_id),
        keys.result(task_run_id),
        keys.downstream(task_run_id),
        keys.expanded(task_run_id),
    ]


class Removal:
    """Removes finished runs from Redis."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis

    def forget(self, flow_run_ids: Sequence[str], task_run_ids: Iterable[str] = ()) -> int:
        """Remove every key of these flow runs and of their task runs (those given, and those each
        run's task set names); returns how many keys existed. The runs must be final: a run still
        under way would find its record gone and stop short."""
        if not flow_run_ids:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for run_id in flow_run_ids:
            pipe.smembers(keys.flow_tasks(run_id))
        tasks = set(task_run_ids)
        for members in pipe.execute():
            tasks.update(members)
        doomed = [key for run_id in flow_run_ids for key in flow_run_keys(run_id)]
        doomed += [key for trid in sorted(tasks) for key in task_run_keys(trid)]
        unlinks = list(_chunks(doomed))
        pipe = self._redis.pipeline(transaction=False)
        for part in unlinks:
            pipe.unlink(*part)
        for part in _chunks(sorted(tasks)):  # a crashed run's leftovers: never a live run's (it is final)
            pipe.zrem(keys.HEARTBEATS, *part)
            pipe.hdel(keys.HEARTBEAT_RECORDS, *part)
        replies = pipe.execute()
        return sum(int(n) for n in replies[: len(unlinks)])  # the UNLINKs' counts, not the heartbeat cleanup's


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(items), CHUNK):
        yield items[i : i + CHUNK]
