"""The crash detector: a running task run whose heartbeats stopped is marked Crashed.

Workers beat every ``heartbeat_interval_seconds`` for the task runs they are running
(``workers/heartbeat.py``). One whose last beat is older than
``crash_after_heartbeats`` intervals lost its worker: it is marked Crashed with a
message that names the worker, and run again (its saved message, as the next
attempt) if it has retries left; otherwise it ends Crashed and its downstream
UpstreamFailed, like any failure. Each stale entry is claimed in one script, so two
detectors never handle one twice, and a crash is never declared for a task run whose
message was delivered again and began meanwhile (a pool process that died: Celery
requeues its message). Claiming a crash also makes the dead execution's message stale:
when Redis redelivers it after the visibility timeout, it does not run beside the
next attempt.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from orchestrator.config.settings import get_settings
from orchestrator.runs.lifecycle import end_task_run
from orchestrator.runstate import slots as concurrency
from orchestrator.runstate.connection import RedisUnavailable
from orchestrator.runstate.events import task_run_event
from orchestrator.runstate.store import RunStore
from orchestrator.states import StateType
from orchestrator.supervision.bodies import resume_body
from orchestrator.transport.messaging import Messaging, TaskRunEnd

log = logging.getLogger("orchestrator.crashes")


class OutageWatch:
    """Whether heartbeat silence can be trusted right now.

    A Redis that was away (restarted, failed over, or just unreachable from here) silenced
    every worker's heartbeats with it, while their tasks kept running. Until a whole crash
    window has passed since Redis came back, a missing beat says nothing about a worker, so
    the detector waits: it reads Redis's uptime (a restart the services never saw) and
    remembers its own failed passes (an outage that was only a lost connection).
    """

    def __init__(self) -> None:
        self.was_lost = False  # a pass failed to reach Redis since the last one that did
        self.back_at = 0.0  # when Redis answered again after that

    def lost(self) -> None:
        self.was_lost = True

    def blind(self, store: RunStore, window: float) -> bool:
        now = time.time()
        if self.was_lost:
            self.back_at, self.was_lost = now, False
        uptime = store.leases.redis_uptime(window)
        return now - self.back_at < window or uptime < window


OUTAGES = OutageWatch()


def detect_crashes(store: RunStore, messaging: Messaging) -> int:
    """Handle every task run whose heartbeat stopped; returns how many were marked Crashed."""
    try:
        return _detect_crashes(store, messaging)
    except RedisUnavailable:
        OUTAGES.lost()
        raise


def _detect_crashes(store: RunStore, messaging: Messaging) -> int:
    silent_for = get_settings().crash_window_seconds
    if OUTAGES.blind(store, silent_for):
        return 0  # Redis was away lately: the heartbeats it missed prove nothing yet
    cutoff = time.time() - silent_for
    crashed = 0
    for task_run_id in store.leases.silent_since(cutoff):
        claimed = store.leases.claim_crash(task_run_id, cutoff)
        if claimed is None:
            continue  # beating again, or another detector took it
        verdict, record = claimed
        if verdict == "restarted":
            log.info("task run %s went silent on %s but runs again elsewhere", task_run_id, record.get("worker"))
            continue  # its slots are held by the new execution now
        if record.get("body"):  # a dynamic body: it resumes on another worker, replaying its journal
            crashed += resume_body(store, messaging, record, _silence(record, silent_for))
            continue
        concurrency.release(store, task_run_id, concurrency.held_tags(record))  # its slots are free now
        if store.task_runs.ended(record["root"], task_run_id):
            continue  # it ended; only the worker's last clean-up beat was missing
        crash(store, messaging, task_run_id, record, silent_for)
        crashed += 1
    return crashed


def _silence(record: dict[str, Any], silent_for: float) -> str:
    what = "drove this flow's body" if record.get("body") else "ran this task"
    return (
        f"worker {record.get('worker')} (pid {record.get('pid')}) stopped heartbeating for {silent_for:g}s while "
        f"it {what} (attempt {record.get('attempt')}): the process was likely killed (SIGKILL, the "
        "out-of-memory killer) or lost its network"
    )


def crash(store: RunStore, messaging: Messaging, task_run_id: str, record: dict[str, Any], silent_for: float) -> None:
    """Mark one task run Crashed; run it again if it has retries left. Its on_crashed hooks, if it has
    any, run on a worker of its queue (the message its worker left in the crash record)."""
    message = _silence(record, silent_for)
    hooks = record.get("on_crashed")
    if hooks:  # once per claimed crash: claim_crash lets one detector through
        messaging.send_signature(dict(hooks) | {"kwargs": dict(hooks.get("kwargs") or {}) | {"message": message}})
    fields = {"flow_run_id": record["flow_run_id"], "root": record["root"], "worker": record.get("worker", "")}
    again = record.get("again")
    if again:
        used, allowed = int(record.get("retries_used", 0)) + 1, record.get("retries")
        state = {"state": StateType.AWAITING_RETRY.value, "message": message}
        events = [
            task_run_event(task_run_id, StateType.CRASHED.value, message=message, record=fields),
            task_run_event(
                task_run_id,
                StateType.AWAITING_RETRY.value,
                message=f"retry {used} of {allowed} after the crash",
                record=fields,
                reopen=True,
                cause="crash detector",
            ),
        ]
        store.task_runs.set_fields(task_run_id, state, events)
        messaging.send_signature(again)
        log.warning("task run %s crashed on %s; sent again", task_run_id, record.get("worker"))
        return
    end_task_run(
        store,
        record["root"],
        task_run_id,
        StateType.CRASHED,
        fields | {"ended": time.time(), "message": message},
        record.get("label") or task_run_id,
        messaging.send_signatures,
        report=lambda ends: messaging.report_ends(ends, ""),
    )
    # Celery last saw it started on a worker that is gone: Flower learns the end here
    messaging.report_ends([TaskRunEnd(task_run_id, record.get("task") or "", StateType.CRASHED, message)], "")
    log.warning("task run %s crashed on %s; no retries left", task_run_id, record.get("worker"))
