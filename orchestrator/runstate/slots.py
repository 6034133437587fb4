"""Tag concurrency limits across the fleet: slots held as leases in Redis.

A limit says how many task runs carrying a tag may run at once, on every worker
together (``orchestrator concurrency-limit create db 2``). Before a tagged task run
starts, it takes one slot of every limited tag it carries, all or none, in one
atomic script. A slot is a member of a sorted set whose score is when its lease
expires: the heartbeat of the worker process renews the leases of the task runs it
runs, and the executor releases them when a task run ends. A worker that dies stops
renewing, so its slots free themselves within ``crash_after_heartbeats`` heartbeat
intervals, and the crash detector releases them as soon as it notices.

A task run that finds a limit full does not wait inside its worker: its message is
sent again from Redis after ``slot_poll_seconds`` and it shows
AwaitingConcurrencySlot meanwhile, so a full limit never blocks other work.
Waiting task runs are not queued in order; a freed slot goes to whichever asks first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orchestrator.config.settings import get_settings
from orchestrator.runstate import keys

if TYPE_CHECKING:
    from orchestrator.runstate.store import RunStore


@dataclass(frozen=True)
class LimitFull:
    """Why a task run cannot start yet: the first full limit among its tags."""

    tag: str
    limit: int
    state: str  # the task run's current state (to record the wait only once)
    holders: list[str] = field(default_factory=list)  # task run ids holding its slots

    def message(self, store: RunStore) -> str:
        holders = describe(store, self.holders)
        held = ", ".join(f"{h['label'] or h['task_run_id']} on {h['worker'] or '?'}" for h in holders)
        return (
            f"waiting for a slot of concurrency limit {self.tag!r}: all {self.limit} slots are held"
            + (f" (by {held})" if held else "")
            + "; it waits in Redis, not in a worker slot."
        )


@dataclass(frozen=True)
class Taken:
    """The slots a task run holds once :func:`acquire` let it start."""

    tags: list[str]  # every limited tag of the task run: it holds a slot of each now
    fresh: list[str]  # those it did not hold before: what a message refused at start gives back


NOTHING = Taken([], [])  # no limited tag


def lease_seconds() -> float:
    """How long a slot stays held without a heartbeat renewing it."""
    return get_settings().crash_window_seconds


def acquire(store: RunStore, root: str, task_run_id: str, tags: Sequence[str]) -> Taken | LimitFull | None:
    """Take a slot of every limited tag, or none; None when the task run is already final.

    Returns the slots held (no tag when none is limited), telling apart those this call took
    from those the task run id held already, or the first full limit.
    """
    now = time.time()
    out = store.scripts["acquire_slots"](  # lua/acquire_slots.lua
        keys=[keys.CONCURRENCY_LIMITS, keys.finals(root), keys.task_run(task_run_id)],
        args=[task_run_id, repr(now), repr(now + lease_seconds()), keys.SLOTS_PREFIX, *tags],
    )
    if out[0] == -1:
        return None
    if out[0] == 0:
        return LimitFull(out[1], int(out[2]), out[3], list(out[4:]))
    return Taken(list(out[2:]), list(out[2 : 2 + int(out[1])]))


def release(store: RunStore, task_run_id: str, tags: Sequence[str]) -> None:
    """Give back the slots ``task_run_id`` holds (safe to call twice)."""
    if not tags:
        return
    pipe = store.redis.pipeline(transaction=False)
    for tag in tags:
        pipe.zrem(keys.slots(tag), task_run_id)
    pipe.execute()


def renew(pipe: Any, held: dict[str, Sequence[str]]) -> None:
    """Extend the leases of running task runs (task run id -> tags), only where still held."""
    expiry = time.time() + lease_seconds()
    for task_run_id, tags in held.items():
        for tag in tags:
            pipe.zadd(keys.slots(tag), {task_run_id: expiry}, xx=True)


def read_limits(store: RunStore) -> dict[str, int]:
    """Every limit, tag -> slots."""
    return {tag: int(limit) for tag, limit in store.redis.hgetall(keys.CONCURRENCY_LIMITS).items()}


def publish_limits(store: RunStore, limits: dict[str, int]) -> None:
    """Make Redis hold exactly ``limits`` (the API's table is the source of truth)."""
    if read_limits(store) == limits:
        return
    pipe = store.redis.pipeline(transaction=True)
    pipe.delete(keys.CONCURRENCY_LIMITS)
    if limits:
        pipe.hset(keys.CONCURRENCY_LIMITS, mapping={tag: str(n) for tag, n in limits.items()})
    pipe.execute()


def live_holders(store: RunStore, tag: str) -> list[str]:
    """Task run ids whose lease on a slot of ``tag`` has not expired."""
    return list(store.redis.zrangebyscore(keys.slots(tag), time.time(), "+inf"))


def describe(store: RunStore, task_run_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Who holds slots: each task run's label, task, flow run and worker, from its Redis record."""
    if not task_run_ids:
        return []
    rows = store.task_runs.fields_of(task_run_ids, "label", "name", "flow_run_id", "worker", "state")
    return [
        {
            "task_run_id": trid,
            "label": label or "",
            "task": name or "",
            "flow_run_id": flow_run_id or "",
            "worker": worker or "",
            "state": state or "",
        }
        for trid, (label, name, flow_run_id, worker, state) in zip(task_run_ids, rows, strict=True)
    ]


def drop_tag(store: RunStore, tag: str) -> None:
    """Forget a tag's slots when its limit is deleted."""
    store.redis.delete(keys.slots(tag))


def held_tags(record: dict[str, Any]) -> list[str]:
    """The tags a crash record says its task run held slots of."""
    return [str(t) for t in record.get("slots") or []]
