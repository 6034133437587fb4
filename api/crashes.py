"""The crash detector: a running task run whose heartbeats stopped is marked Crashed.

Workers beat every ``heartbeat_interval_seconds`` for the task runs they are running
(``workers/heartbeat.py``). One whose last beat is older than
``crash_after_heartbeats`` intervals lost its worker: it is marked Crashed with a
message that names the worker, and run again (its saved message, as the next
attempt) if it has retries left; otherwise it ends Crashed and its downstream
UpstreamFailed, like any failure. Each stale entry is claimed with ZREM, so two
detectors never handle one twice.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from celery import Celery

from orchestrator import concurrency, keys
from orchestrator.runs import end_task_run, send_signatures
from orchestrator.settings import get_settings
from orchestrator.states import StateType
from orchestrator.store import RunStore

log = logging.getLogger("orchestrator.crashes")


def detect_crashes(store: RunStore, app: Celery) -> int:
    """Handle every task run whose heartbeat stopped; returns how many were marked Crashed."""
    settings = get_settings()
    silent_for = settings.heartbeat_interval_seconds * settings.crash_after_heartbeats
    stale = store.redis.zrangebyscore(keys.HEARTBEATS, "-inf", time.time() - silent_for, start=0, num=200)
    crashed = 0
    for task_run_id in stale:
        if not store.redis.zrem(keys.HEARTBEATS, task_run_id):
            continue  # another detector took it
        raw = store.redis.hget(keys.HEARTBEAT_RECORDS, task_run_id)
        store.redis.hdel(keys.HEARTBEAT_RECORDS, task_run_id)
        if not raw:
            continue
        record = json.loads(raw)
        concurrency.release(store, task_run_id, concurrency.held_tags(record))  # its slots are free now
        if store.final_states(record["root"], [task_run_id]).get(task_run_id) is not None:
            continue  # it ended; only the worker's last clean-up beat was missing
        crash(store, app, task_run_id, record, silent_for)
        crashed += 1
    return crashed


def crash(store: RunStore, app: Celery, task_run_id: str, record: dict[str, Any], silent_for: float) -> None:
    """Mark one task run Crashed; run it again if it has retries left."""
    message = (
        f"worker {record.get('worker')} (pid {record.get('pid')}) stopped heartbeating for {silent_for:g}s while "
        f"it ran this task (attempt {record.get('attempt')}): the process was likely killed (SIGKILL, the "
        "out-of-memory killer) or lost its network"
    )
    fields = {"flow_run_id": record["flow_run_id"], "root": record["root"], "worker": record.get("worker", "")}
    again = record.get("again")
    if again:
        pipe = store.redis.pipeline(transaction=False)
        used, allowed = int(record.get("retries_used", 0)) + 1, record.get("retries")
        pipe.hset(keys.task_run(task_run_id), mapping={"state": StateType.AWAITING_RETRY.value, "message": message})
        events = [
            store.event("task_run", task_run_id, StateType.CRASHED.value, message=message, record=fields),
            store.event(
                "task_run",
                task_run_id,
                StateType.AWAITING_RETRY.value,
                message=f"retry {used} of {allowed} after the crash",
                record=fields,
                reopen=True,
                cause="crash detector",
            ),
        ]
        store.emit_task_events(events, pipe)
        pipe.execute()
        app.signature(again).apply_async()
        log.warning("task run %s crashed on %s; sent again", task_run_id, record.get("worker"))
        return
    end_task_run(
        store,
        record["root"],
        task_run_id,
        StateType.CRASHED,
        fields | {"ended": time.time(), "message": message},
        record.get("label") or task_run_id,
        lambda sigs: send_signatures(app, sigs),
    )
    log.warning("task run %s crashed on %s; no retries left", task_run_id, record.get("worker"))
