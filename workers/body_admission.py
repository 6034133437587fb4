"""Taking dynamic flow bodies into a worker process, and handing them over when it stops.

A worker that receives a body's start (or resume) message takes that attempt of the body
(``claim_body``: from then on it is under the crash detector) and queues it for one of the
process's ``max_dynamic_flows_per_process`` driver threads; bodies beyond that wait, supervised,
and the run's diagnosis says so. A worker shutting down gracefully hands every body it holds to
the next attempt at once, instead of leaving them to the crash window.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import threading
from dataclasses import replace
from typing import Any

from celery import Celery

from orchestrator.authoring.flows import Flow
from orchestrator.config.settings import get_settings
from orchestrator.planning.compiler import FLOW_CRASH_HOOKS_TASK, RESUME_FLOW_BODY_TASK
from orchestrator.runstate.records import body_task_run_id
from orchestrator.runstate.store import get_store
from orchestrator.transport.messaging import Messaging

from .body_attempts import BodyAttempt
from .driver import drive
from .heartbeat import HEARTBEATS

log = logging.getLogger(__name__)

_pool: cf.ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _driver_pool() -> cf.ThreadPoolExecutor:
    """One pool of driver threads per worker process (re-created after a fork)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = cf.ThreadPoolExecutor(
                max_workers=get_settings().max_dynamic_flows_per_process, thread_name_prefix="flow-driver"
            )
            _pool_pid = os.getpid()
        return _pool


class LiveBodies:
    """The bodies this process drives or holds for a driver thread (handed over on shutdown)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: dict[str, tuple[str, dict[str, Any]]] = {}  # run id -> (heartbeat id, crash record)

    def add(self, run_id: str, heartbeat_id: str, record: dict[str, Any]) -> int:
        """Returns how many bodies this process holds now."""
        with self._lock:
            self._bodies[run_id] = (heartbeat_id, record)
            return len(self._bodies)

    def remove(self, run_id: str) -> None:
        with self._lock:
            self._bodies.pop(run_id, None)

    def take_all(self) -> dict[str, tuple[str, dict[str, Any]]]:
        with self._lock:
            bodies, self._bodies = self._bodies, {}
            return bodies


LIVE_BODIES = LiveBodies()


def body_crash_record(
    app: Celery, flow: Flow, run_id: str, queue: str, body: BodyAttempt, hooks_queue: str
) -> dict[str, Any]:
    """What the crash detector needs if this body's worker dies: its resume message (it adds the
    attempt), and the flow's on_crashed hooks message for when it stops resuming it."""
    return {
        "body": True,
        "root": run_id,
        "flow_run_id": run_id,
        "label": "body",
        "task": flow.name,
        "worker": body.worker,
        "pid": os.getpid(),
        "attempt": body.attempt,
        "again": dict(app.signature(RESUME_FLOW_BODY_TASK, kwargs={"run_id": run_id}, queue=queue)),
        "on_crashed": dict(app.signature(FLOW_CRASH_HOOKS_TASK, kwargs={"run_id": run_id}, queue=hooks_queue))
        if flow.hooks.get("on_crashed")
        else None,
    }


def start_driver(
    app: Celery, flow: Flow, run_id: str, parameters: dict[str, Any], queue: str, body: BodyAttempt
) -> None:
    """Take an attempt of a dynamic body and hand it to this process's driver threads; return at once.

    From the moment it is taken the body heartbeats (queued for a thread too), so a worker that
    dies with it, or never gets to it, is noticed within the crash window and the body resumes
    elsewhere. A redelivered start or resume message finds the attempt taken and does nothing.
    """
    store = get_store()
    record = body_crash_record(app, flow, run_id, queue, body, queue)
    hb = f"{body_task_run_id(run_id)}{body.heartbeat_id}"
    if not store.leases.claim_body(run_id, body.attempt, hb, record):
        log.info("flow run %s: body attempt %d is taken, ended or superseded; nothing to do", run_id, body.attempt)
        return
    HEARTBEATS.begin(hb, record, announced=True)
    if body.kind == "resume":
        body = replace(body, why=store.flow_runs.field(run_id, "body_status") or "")
    held = LIVE_BODIES.add(run_id, hb, record)
    limit = get_settings().max_dynamic_flows_per_process
    if held > limit:
        store.flow_runs.write(
            run_id,
            {
                "body_status": f"its body waits for a driver thread on {body.worker} (pid {os.getpid()}): all {limit} "
                "drive other bodies; raise ORCHESTRATOR_MAX_DYNAMIC_FLOWS_PER_PROCESS or add workers"
            },
        )

    def guarded() -> None:
        try:
            if held > limit:
                store.flow_runs.write(run_id, {"body_status": ""})
            drive(app, flow, run_id, parameters, queue, body)
        except Exception:  # never lose a driver silently
            log.exception("flow run %s: the dynamic driver failed", run_id)
        finally:
            HEARTBEATS.end(hb)
            LIVE_BODIES.remove(run_id)

    _driver_pool().submit(guarded)


def hand_over_bodies(messaging: Messaging) -> int:
    """This worker is shutting down: every body it drives or holds resumes elsewhere now, as its
    next attempt, instead of waiting out the crash window; the attempts here stop at their next
    call into the orchestrator. Returns how many were handed over."""
    bodies = LIVE_BODIES.take_all()
    if not bodies:
        return 0
    store = get_store()
    handed = 0
    for run_id, (hb, record) in bodies.items():
        state, live = store.flow_runs.state_and_body_attempt(run_id)
        HEARTBEATS.end(hb)
        if state is None or state.is_final or live != record["attempt"]:
            continue
        attempt = store.flow_runs.next_body_attempt(run_id)
        message = f"worker {record.get('worker')} is shutting down; body attempt {attempt} resumes on another worker"
        store.flow_runs.write(run_id, {"body_status": message})
        messaging.send_signature(dict(record["again"]) | {"kwargs": {"run_id": run_id, "attempt": attempt}})
        log.warning("flow run %s: %s", run_id, message)
        handed += 1
    return handed
