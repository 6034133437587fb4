"""Every Redis key the product uses, on one screen.

``root`` is the id of the top-level flow run; all keys of a run tree carry it so a
cleanup can find them.
"""

from __future__ import annotations

PREFIX = "orc"
EVENTS_STREAM = f"{PREFIX}:events"  # state and log events for the API recorder
DELAYED = f"{PREFIX}:delayed"  # sorted set: messages to send at their score (epoch seconds)
WORKERS = f"{PREFIX}:workers"  # hash hostname -> announced worker record (JSON)
FLOWS = f"{PREFIX}:flows"  # hash flow name -> announced flow record with parameter schema
HEARTBEATS = f"{PREFIX}:heartbeats"  # sorted set: running task run id -> time of its last heartbeat
HEARTBEAT_RECORDS = f"{PREFIX}:hbrec"  # hash task run id -> what the crash detector needs (JSON)
CONCURRENCY_LIMITS = f"{PREFIX}:climits"  # hash tag -> how many task runs with that tag may run at once
SLOTS_PREFIX = f"{PREFIX}:slots:"  # + tag: sorted set task run id -> when its lease on a slot expires


def slots(tag: str) -> str:
    """Sorted set of the task runs holding a slot of tag's concurrency limit (score: lease expiry)."""
    return SLOTS_PREFIX + tag


def worker_alive(hostname: str) -> str:
    """Short-lived key a running worker keeps refreshing."""
    return f"{PREFIX}:alive:{hostname}"


def flow_run(run_id: str) -> str:
    """Hash: name, state, parameters, timestamps, return template, deciders."""
    return f"{PREFIX}:fr:{run_id}"


def flow_done(run_id: str) -> str:
    """List used as a latch: one item is pushed when the flow run is final."""
    return f"{PREFIX}:frdone:{run_id}"


def task_run(task_run_id: str) -> str:
    """Hash: task name, flow run, state, start/end times, worker, attempts, message."""
    return f"{PREFIX}:tr:{task_run_id}"


def result(task_run_id: str) -> str:
    """String: the serialized return value of a completed task run."""
    return f"{PREFIX}:res:{task_run_id}"


def finals(root: str) -> str:
    """Hash task_run_id -> final state: a task run is made final exactly once (HSETNX).

    Kept for a grace (``Settings.finished_grace_seconds``), not the TTL, once the tree completed.
    """
    return f"{PREFIX}:fin:{root}"


def remaining(root: str) -> str:
    """Counter of task runs of the run tree not yet final; the one reaching 0 ends the run (kept as finals)."""
    return f"{PREFIX}:rem:{root}"


def downstream(task_run_id: str) -> str:
    """Set of task run ids that depend on this one (for failure propagation and joins)."""
    return f"{PREFIX}:next:{task_run_id}"


def join_pending(root: str) -> str:
    """Hash task_run_id -> upstreams still running, for nodes started by a Redis join."""
    return f"{PREFIX}:jp:{root}"


def join_signature(root: str) -> str:
    """Hash task_run_id -> Celery signature (JSON) sent when its join count reaches 0."""
    return f"{PREFIX}:js:{root}"


def inputs(root: str) -> str:
    """Hash task_run_id -> input template JSON, for inputs too large to ride in messages."""
    return f"{PREFIX}:in:{root}"


def tolerant(root: str) -> str:
    """Set of task run ids that are sent by their join even after an upstream failed."""
    return f"{PREFIX}:tol:{root}"


def expanded(task_run_id: str) -> str:
    """Set once when a map node is expanded, so a redelivered expansion counts nothing twice."""
    return f"{PREFIX}:exp:{task_run_id}"


def plan(root: str) -> str:
    """String: the traced plan of a run tree as zlib-compressed JSON (for retries and the API's graph)."""
    return f"{PREFIX}:plan:{root}"


def flow_logs(run_id: str) -> str:
    """List of the log lines (JSON) written by a flow run and its task runs."""
    return f"{PREFIX}:logs:{run_id}"


def flow_tasks(run_id: str) -> str:
    """Set of the task run ids that belong to one flow run."""
    return f"{PREFIX}:frtasks:{run_id}"


def subflow_ends(root: str) -> str:
    """Hash end-node task run id -> child flow run id, for the subflows of a tree."""
    return f"{PREFIX}:ends:{root}"


def task_cache(task_name: str, cache_key: str) -> str:
    """Hash: a cached task result (its text, or where result storage keeps it) under one task's cache key.

    Its TTL is the entry's expiration. Not under a run tree's root: an entry outlives the run that made it.
    """
    return f"{PREFIX}:cache:{task_name}:{cache_key}"


def waiters(run_id: str) -> str:
    """List of messages to send when a flow run ends (the parent nodes that wait for it)."""
    return f"{PREFIX}:waiters:{run_id}"


def linked_children(parent_run_id: str) -> str:
    """Set of the flow runs a flow run started as runs of their own (subflow nodes, triggers)."""
    return f"{PREFIX}:children:{parent_run_id}"


def journal(flow_run_id: str) -> str:
    """Hash call position -> the call a dynamic body made there (JSON), which a resumed body replays."""
    return f"{PREFIX}:journal:{flow_run_id}"


def wakeups(root: str) -> str:
    """List: task runs of a dynamic run tree that just ended, to wake its body's waits (BLPOP)."""
    return f"{PREFIX}:wake:{root}"
