"""The recorder's sustained rate: a backlog of run events drained into a database (``benchmarks.db_scale``).

The events are those static runs send, in the order they send them, through the run
store's own writers (the event stream, the plan a static run keeps for ``/graph``):
per flow run its Pending and Running events with the run's record, for each task run a
Running event with its start record and a Completed one, a log line, and the flow run's
Completed event. They go to the stream first; then the real
:class:`~api.services.recorder.Recorder`, built as ``api.services.runner`` builds it, reads,
applies and acknowledges batch after batch until the stream is drained. A drained backlog
measures what the recorder sustains, not how fast workers produce.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from sqlalchemy import Engine

from api.services.recorder import Recorder
from orchestrator.config.settings import get_settings
from orchestrator.runstate.events import LogLine, StreamEvent, flow_run_event, task_run_event
from orchestrator.runstate.store import RunStore


def run_events(store: RunStore, pipe: Any, tasks: int, at: float) -> list[StreamEvent]:
    """The events of one static flow run of ``tasks`` task runs, its plan queued in ``pipe``."""
    run_id = str(uuid.uuid4())
    task_ids = [str(uuid.uuid4()) for _ in range(tasks)]
    record = {
        "id": run_id,
        "flow": "recorded-burst",
        "name": f"recorded-burst-{run_id[:8]}",
        "root": run_id,
        "queue": "default",
        "parameters": {"day": "2026-12-06", "limit": 100},
        "created": at,
    }
    nodes = [
        {"id": tid, "kind": "task", "name": "flows.burst.step", "label": f"step_{n}", "flow_run_id": run_id}
        for n, tid in enumerate(task_ids)
    ]
    store.flow_runs.keep_plan(pipe, run_id, {"flow_name": "recorded-burst", "nodes": nodes, "subflows": []}, {})
    events: list[StreamEvent] = [
        flow_run_event(run_id, "Pending", ts=at, record=record),
        flow_run_event(run_id, "Running", ts=at + 0.01, record=record | {"mode": "static", "started": at + 0.01}),
    ]
    for n, tid in enumerate(task_ids):
        started = at + 0.02 + n * 0.01
        begun = {
            "started": started,
            "worker": "celery@bench",
            "attempts": 1,
            "flow_run_id": run_id,
            "root": run_id,
            "name": "flows.burst.step",
            "label": f"step_{n}",
        }
        events.append(task_run_event(tid, "Running", ts=started, record=begun))
        events.append(task_run_event(tid, "Completed", ts=started + 0.005, record={"ended": started + 0.005}))
    events.append(LogLine(run_id, task_ids[-1] if task_ids else None, "INFO", "wrote 100 rows", at + 0.5))
    events.append(flow_run_event(run_id, "Completed", ts=at + 1))
    return events


def recorder_rate(redis_url: str, engine: Engine, runs: int, tasks: int) -> dict[str, Any]:
    """Write ``runs`` runs' events to the stream, drain them with the recorder; events per second."""
    store = RunStore(redis_url)
    sent = 0
    at = time.time()
    for start in range(0, runs, 100):
        pipe = store.pipeline()
        for n in range(start, min(runs, start + 100)):
            events = run_events(store, pipe, tasks, at + n)
            store.events.append_all(pipe, events)
            sent += len(events)
        pipe.execute()
    settings = get_settings()
    recorder = Recorder(store, engine, f"bench-{uuid.uuid4().hex[:6]}", settings.recorder_batch_size)
    recorder.ensure_group()
    batches = 0
    began = time.perf_counter()
    while recorder.recorded < sent:
        if recorder.step(block_ms=1000) == 0:
            raise RuntimeError(f"the stream ran dry after {recorder.recorded} of {sent} events")
        batches += 1
    seconds = time.perf_counter() - began
    return {
        "runs": runs,
        "tasks_per_run": tasks,
        "events": sent,
        "batches": batches,
        "batch_size": settings.recorder_batch_size,
        "seconds": round(seconds, 2),
        "events_per_s": round(sent / seconds),
    }
