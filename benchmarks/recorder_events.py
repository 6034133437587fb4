"""The recorder's CPU per event, by kind, for runs the API created (issue 18).

    .venv/bin/python -m benchmarks.recorder_events [--runs 2000] [--tasks 5] [--profile KIND]

``benchmarks.api_submit_cpu`` measures the whole API process; this one measures only the
recorder (the API's event-stream consumer), on a private redis-server and a fresh SQLite
file, so a change to it can be compared by CPU microseconds per event, which move far less
with the machine's load than wall time. The runs are created as the API's submitter
creates them (their rows and "created over HTTP" history in one transaction, then each
run's record and its Pending event in Redis), then their events are sent kind by kind
and drained by the real :class:`~api.services.recorder.Recorder` after each kind, in
batches of ``recorder_batch_size``: the flow runs' Pending events (the API created them:
nothing to change), their Running events, the task runs' Running and Completed events,
a log line per run, the flow runs' Completed events. ``--profile KIND`` prints the top
of a cProfile of that kind's drain.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert
from sqlmodel import Session

from api.db import engine_for, migrate
from api.models import FlowRun, StateEvent
from api.services.created_runs import CreatedRuns
from api.services.recorder import Recorder
from api.submit import api_event_row, flow_run_row
from benchmarks.private_redis import private_redis
from orchestrator.config.settings import get_settings
from orchestrator.runstate.events import LogLine, StreamEvent, flow_run_event, task_run_event
from orchestrator.runstate.records import NewFlowRun
from orchestrator.runstate.store import RunStore
from orchestrator.states import StateType

KINDS = ("flow Pending (API-created)", "flow Running", "task Running", "task Completed", "log line", "flow Completed")


def create_runs(engine: Engine, store: RunStore, created: CreatedRuns, runs: int) -> list[NewFlowRun]:
    """Runs written as the API's submitter writes them: rows and history committed, then Redis."""
    now = time.time()
    made = [
        NewFlowRun(
            id=str(uuid.uuid4()),
            flow="bench-api-five",
            name=f"bench-{n}",
            name_given=False,
            queue="default",
            parameters={"n": n},
            created=now,
            scheduled_start=now,
        )
        for n in range(runs)
    ]
    for start in range(0, runs, 256):  # the submitter's batch size at most
        part = made[start : start + 256]
        rows = [flow_run_row(r, state=StateType.PENDING, dispatched=True) for r in part]
        with Session(engine) as session:
            session.execute(insert(FlowRun.__table__), rows)  # type: ignore[attr-defined]
            history = [api_event_row(r["id"], StateType.PENDING, "created over HTTP", r["created"]) for r in rows]
            session.execute(insert(StateEvent.__table__), history)  # type: ignore[attr-defined]
            session.commit()
        created.add_all(r.id for r in part)
        pipe = store.pipeline()
        for run in part:
            store.flow_runs.write(run.id, run.to_redis() | {"state": StateType.PENDING.value}, pipe)
        pipe.execute()
    return made


def later_events(made: list[NewFlowRun], tasks: int) -> dict[str, list[StreamEvent]]:
    """The events that follow each run's Pending one, by kind, as a worker sends them."""
    out: dict[str, list[StreamEvent]] = {kind: [] for kind in KINDS[1:]}
    for run in made:
        at = run.created
        task_ids = [str(uuid.uuid4()) for _ in range(tasks)]
        record = run.to_redis() | {"mode": "dynamic", "started": at + 0.01, "attempt": 1}
        out["flow Running"].append(flow_run_event(run.id, "Running", ts=at + 0.01, record=record))
        for n, tid in enumerate(task_ids):
            begun = {
                "started": at + 0.02,
                "worker": "celery@bench",
                "attempts": 1,
                "flow_run_id": run.id,
                "root": run.id,
                "name": "benchmarks.workloads.step",
                "label": f"step_{n}",
            }
            out["task Running"].append(task_run_event(tid, "Running", ts=at + 0.02, record=begun))
            out["task Completed"].append(task_run_event(tid, "Completed", ts=at + 0.03, record={"ended": at + 0.03}))
        out["log line"].append(LogLine(run.id, task_ids[-1], "INFO", "wrote 100 rows", at + 0.04))
        out["flow Completed"].append(flow_run_event(run.id, "Completed", ts=at + 0.05))
    return out


def drain(recorder: Recorder, until: int, profile: cProfile.Profile | None) -> tuple[float, int]:
    """Step the recorder until it has recorded ``until`` entries in all; CPU seconds and batches."""
    began = time.process_time()
    batches = 0
    if profile is not None:
        profile.enable()
    while recorder.recorded < until:
        if recorder.step(block_ms=1000) == 0:
            raise RuntimeError(f"the stream ran dry after {recorder.recorded} of {until} events")
        batches += 1
    if profile is not None:
        profile.disable()
    return time.process_time() - began, batches


def measure(redis_url: str, engine: Engine, runs: int, tasks: int, profiled: str | None) -> dict[str, Any]:
    """CPU µs per event of each kind, drained kind after kind."""
    store = RunStore(redis_url)
    created = CreatedRuns()
    recorder = Recorder(store, engine, f"bench-{uuid.uuid4().hex[:6]}", get_settings().recorder_batch_size)
    recorder.created = created
    recorder.ensure_group()
    made = create_runs(engine, store, created, runs)
    sending: dict[str, Callable[[], int]] = {KINDS[0]: lambda: runs}
    later = later_events(made, tasks)
    for kind, events in later.items():

        def send(events: list[StreamEvent] = events) -> int:
            for start in range(0, len(events), 1000):
                pipe = store.pipeline()
                store.events.append_all(pipe, events[start : start + 1000])
                pipe.execute()
            return len(events)

        sending[kind] = send
    out: dict[str, Any] = {}
    total = 0
    for kind in KINDS:
        sent = sending[kind]()
        total += sent
        profile = cProfile.Profile() if kind == profiled else None
        seconds, batches = drain(recorder, total, profile)
        out[kind] = {"events": sent, "batches": batches, "cpu_us_per_event": round(seconds * 1e6 / sent, 1)}
        if profile is not None:
            pstats.Stats(profile, stream=sys.stderr).sort_stats("cumulative").print_stats(30)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--profile", choices=KINDS, default=None, help="cProfile this kind's drain (to stderr)")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="orc-recorder-events-"))
    url = f"sqlite:///{folder / 'recorder.db'}"
    with private_redis() as redis_url:
        migrate(url)
        engine = engine_for(url)
        by_kind = measure(redis_url, engine, args.runs, args.tasks, args.profile)
        engine.dispose()
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": args.runs,
        "tasks_per_run": args.tasks,
        "by_kind": by_kind,
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
