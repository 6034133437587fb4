"""Realistic rows for the database scale benchmark, inserted fast (``benchmarks.db_scale`` uses it).

A history the API could have recorded: flow runs of a dozen flows with very different
sizes (a one-task cleanup, a 60-task training run, a rare 2,000-task backfill), spread
over 90 days, two thirds of them from deployments, about 5 % subflow runs, mostly
Completed with some Failed, Crashed, Cancelled and TimedOut, and the last few hundred
still Running, Pending or Scheduled. Task runs belong to their flow run (a subflow's to
its parent's tree too, as the recorder writes them) and are written run after run, as
they would have arrived. Each flow run also has its own history (Pending, Running, its
end) and one log line, so that those tables are not empty (the recorder looks up every
event it writes in them); the task runs' history is left out, which would triple the
rows to insert. Ids are uuid4 as the SDK makes them; the random generator is seeded, so
two databases seeded with the same sizes hold the same rows.

Rows go in with plain multi-row INSERTs through SQLAlchemy Core (``executemany`` on
SQLite, batched ``VALUES`` lists on psycopg), after the API's own migrations, so the
indexes are the ones the API creates and are maintained during the load as in real life.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, insert, text
from sqlmodel import SQLModel

from api import models  # noqa: F401  (registers the tables on SQLModel.metadata)

TABLES = SQLModel.metadata.tables
DAYS = 90
BATCH = 5000  # rows per INSERT round


@dataclass(frozen=True)
class FlowShape:
    """One flow of the seeded history: how often it runs and how many task runs a run has."""

    name: str
    weight: float
    tasks: int
    deployed: bool


FLOWS = (
    FlowShape("etl-hourly", 30, 8, True),
    FlowShape("ingest-events", 20, 4, True),
    FlowShape("cleanup-tmp", 15, 1, True),
    FlowShape("notify-users", 10, 2, False),
    FlowShape("sync-crm", 8, 6, True),
    FlowShape("report-daily", 5, 25, True),
    FlowShape("dedupe-accounts", 4, 12, False),
    FlowShape("export-partner", 3, 9, True),
    FlowShape("ml-train", 2, 60, False),
    FlowShape("audit-log", 2, 3, True),
    FlowShape("ad-hoc-query", 0.9, 2, False),
    FlowShape("backfill", 0.1, 2000, False),
)
FINAL_MIX = (("Completed", 0.88), ("Failed", 0.07), ("Crashed", 0.02), ("Cancelled", 0.02), ("TimedOut", 0.01))
LIVE_MIX = (("Running", 0.5), ("Pending", 0.2), ("Scheduled", 0.25), ("Late", 0.05))
LIVE_TAIL = 300  # the newest runs are still under way
WORKERS = [f"celery@worker-{i}" for i in range(6)]


@dataclass
class Seeded:
    """What went in, for the benchmark to pick its queries from."""

    flow_runs: int
    task_runs: int
    seconds: float
    typical_run: str  # a Completed root run of a flow with a handful of task runs
    largest_run: str  # the run with the most task runs
    largest_tasks: int
    subflow_parent: str  # a run with subflow runs


def make_id(rng: random.Random) -> str:
    """A uuid4 as the SDK makes them, from the seeded generator (the same rows in every database)."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def pick(rng: random.Random, mix: tuple[tuple[str, float], ...]) -> str:
    return rng.choices([s for s, _ in mix], weights=[w for _, w in mix])[0]


def task_counts(rng: random.Random, shapes: list[FlowShape], total: int) -> list[int]:
    """Task runs per flow run: around its flow's size, scaled so that they add up to ``total``."""
    raw = [max(1, round(s.tasks * rng.uniform(0.5, 1.5))) for s in shapes]
    scale = total / sum(raw)
    counts = [int(r * scale) for r in raw]
    short = total - sum(counts)
    for i in rng.sample(range(len(counts)), k=min(abs(short), len(counts))):
        counts[i] += 1 if short > 0 else (-1 if counts[i] > 0 else 0)
    return counts


def plan_of(flow: str, task_ids: list[str], run_id: str) -> dict[str, Any]:
    """The graph part of a static run's plan, as ``api.services.recorder.graph_of`` keeps it."""
    nodes = [
        {"id": tid, "name": f"flows.{flow}.step_{i}", "label": f"step_{i}"}
        | ({"upstream": [task_ids[i - 1]]} if i else {})
        for i, tid in enumerate(task_ids[:200])  # a big map's plan lists its map node, not every item
    ]
    return {"flow_name": flow, "nodes": nodes, "subflows": []}


def seed(engine: Engine, flow_runs: int, task_runs: int, seed_value: int = 18) -> Seeded:
    """Insert ``flow_runs`` flow runs and ``task_runs`` task runs (and their deployments) into a migrated database."""
    rng = random.Random(seed_value)
    started = time.perf_counter()
    now = time.time()
    first = now - DAYS * 86400
    step = (now - first) / max(flow_runs, 1)
    shapes = rng.choices(FLOWS, weights=[f.weight for f in FLOWS], k=flow_runs)
    counts = task_counts(rng, shapes, task_runs)
    deployments = {f.name: make_id(rng) for f in FLOWS if f.deployed}
    with engine.begin() as connection:
        connection.execute(
            insert(TABLES["deployment"]),
            [
                {
                    "id": dep_id,
                    "name": f"{flow}-prod",
                    "flow_name": flow,
                    "queue": None,
                    "parameters": {},
                    "cron": "0 * * * *",
                    "interval_seconds": None,
                    "timezone": "UTC",
                    "paused": False,
                    "late_policy": "run_all",
                    "late_max_age_seconds": None,
                    "concurrency_limit": None,
                    "created": first,
                    "updated": first,
                    "scheduled_until": now,
                }
                for flow, dep_id in deployments.items()
            ],
        )
    facts: dict[str, Any] = {"largest": ("", -1), "typical": "", "parent": ""}
    flows_out: list[dict[str, Any]] = []
    tasks_out: list[dict[str, Any]] = []
    history_out: list[dict[str, Any]] = []
    logs_out: list[dict[str, Any]] = []
    recent_roots: dict[str, str] = {}  # flow -> its last root run, the parent of a subflow run
    children: dict[str, int] = {}
    with engine.begin() as connection:
        for i, (shape, count) in enumerate(zip(shapes, counts, strict=True)):
            created = first + i * step + rng.uniform(0, step * 0.5)
            run, tasks = flow_run_row(rng, shape, count, created, i >= flow_runs - LIVE_TAIL, deployments)
            parent = recent_roots.get(shape.name)
            if parent is not None and rng.random() < 0.05:  # a subflow run of the flow's previous run
                run |= {"parent_id": parent, "root_id": parent, "deployment_id": None, "plan": None}
                run["name"] = f"{shape.name}-sub-{run['id'][:8]}"
                for task in tasks:
                    task["root_id"] = parent
                children[parent] = children.get(parent, 0) + 1
            else:
                recent_roots[shape.name] = run["id"]
            flows_out.append(run)
            tasks_out.extend(tasks)
            history_out.extend(history_rows(run, i))
            if run["started"] is not None:
                logs_out.append(log_row(run, i))
            if count > facts["largest"][1]:
                facts["largest"] = (run["id"], count)
            if (
                not facts["typical"]
                and shape.name == "etl-hourly"
                and run["state"] == "Completed"
                and i > flow_runs // 2
            ):
                facts["typical"] = run["id"]
            if len(flows_out) >= BATCH // 5:
                connection.execute(insert(TABLES["flow_run"]), flows_out)
                flows_out.clear()
            for table, rows in (("task_run", tasks_out), ("state_event", history_out), ("log_line", logs_out)):
                if len(rows) >= BATCH:
                    connection.execute(insert(TABLES[table]), rows)
                    rows.clear()
        for table, rows in (
            ("flow_run", flows_out),
            ("task_run", tasks_out),
            ("state_event", history_out),
            ("log_line", logs_out),
        ):
            if rows:
                connection.execute(insert(TABLES[table]), rows)
    settle(engine)
    largest, largest_tasks = facts["largest"]
    return Seeded(
        flow_runs=flow_runs,
        task_runs=sum(counts),
        seconds=round(time.perf_counter() - started, 1),
        typical_run=facts["typical"] or largest,
        largest_run=largest,
        largest_tasks=largest_tasks,
        subflow_parent=max(children, key=lambda k: children[k]) if children else largest,
    )


def history_rows(run: dict[str, Any], i: int) -> list[dict[str, Any]]:
    """The ``i``-th flow run's transitions as the recorder keeps them; event ids look like stream
    ids (milliseconds, then a sequence number that the run's index keeps unique)."""
    steps = [("Pending", run["created"]), ("Running", run["started"]), (run["state"], run["ended"])]
    rows = []
    for n, (state, at) in enumerate(steps):
        if at is None or (n and state == rows[-1]["state"]):
            continue
        rows.append(
            {
                "event_id": f"{int(at * 1000)}-{i * 4 + n}",
                "kind": "flow_run",
                "run_id": run["id"],
                "flow_run_id": run["id"],
                "state": state,
                "ts": at,
                "recorded": at + 0.01,
                "message": run["state_message"] if n == 2 else "",
                "cause": "worker celery@worker-0",
                "applied": True,
            }
        )
    return rows


def log_row(run: dict[str, Any], i: int) -> dict[str, Any]:
    """The ``i``-th flow run's first log line."""
    return {
        "event_id": f"{int(run['started'] * 1000)}-{i * 4 + 3}",
        "flow_run_id": run["id"],
        "task_run_id": None,
        "level": "INFO",
        "message": f"{run['flow_name']}: started with {run['parameters']}",
        "ts": run["started"],
    }


def settle(engine: Engine) -> None:
    """Leave the database as if it had grown over the 90 days, not just taken a bulk load: on
    PostgreSQL analyzed and vacuumed (autovacuum's work) and checkpointed; on SQLite with its
    write-ahead log folded into the file. Otherwise the measurements pay for the load."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("VACUUM ANALYZE"))
            connection.execute(text("CHECKPOINT"))
        else:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def flow_run_row(
    rng: random.Random, shape: FlowShape, count: int, created: float, live: bool, deployments: dict[str, str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One root flow run and its task runs, as the recorder would have written them."""
    run_id = make_id(rng)
    state = pick(rng, LIVE_MIX) if live else pick(rng, FINAL_MIX)
    scheduled = state in ("Scheduled", "Late")
    duration = rng.uniform(2, 30) * max(1, count) ** 0.5
    started = None if scheduled or state == "Pending" else created + rng.uniform(0.05, 2)
    ended = started + duration if started is not None and state not in ("Running",) else None
    deployed = shape.deployed and rng.random() < 0.9
    task_ids = [make_id(rng) for _ in range(0 if scheduled or state == "Pending" else count)]
    static = shape.tasks < 100
    run = {
        "id": run_id,
        "flow_name": shape.name,
        "name": f"{shape.name}-{run_id[:8]}",
        "renamed": False,
        "state": state,
        "state_message": "ValueError: upstream file is empty" if state == "Failed" else "",
        "parent_id": None,
        "root_id": run_id,
        "queue": "default",
        "parameters": {"day": time.strftime("%Y-%m-%d", time.gmtime(created)), "limit": rng.randint(1, 1000)},
        "mode": "static" if static else "dynamic",
        "attempt": 1,
        "created": created,
        "scheduled_start": created if deployed else None,
        "dispatched": not scheduled,
        "started": started,
        "ended": ended,
        "updated": ended or started or created,
        "result_refs": task_ids[-1:],
        "plan": plan_of(shape.name, task_ids, run_id) if static and task_ids else None,
        "deployment_id": deployments.get(shape.name) if deployed else None,
    }
    return run, list(task_rows(rng, shape, run_id, task_ids, started, state))


def task_rows(
    rng: random.Random, shape: FlowShape, run_id: str, task_ids: list[str], started: float | None, state: str
) -> Iterator[dict[str, Any]]:
    """The task runs of one flow run: all Completed, but the last one of a run that did not complete."""
    at = started or 0.0
    for n, tid in enumerate(task_ids):
        last = n == len(task_ids) - 1
        task_state = "Completed" if not last or state == "Completed" else state
        if state == "Running" and last:
            task_state = "Running"
        begun = at + rng.uniform(0.001, 0.5)
        ended = None if task_state == "Running" else begun + rng.uniform(0.01, 3)
        at = ended or begun
        label = f"step_{n % 20}" if shape.tasks < 100 else f"item[{n}]"
        yield {
            "id": tid,
            "flow_run_id": run_id,
            "root_id": "",  # as the recorder keeps it: set only on a subflow's task runs (the root's id)
            "task_name": f"flows.{shape.name}.{label.split('[')[0]}",
            "label": label,
            "state": task_state,
            "state_message": "ValueError: upstream file is empty" if task_state == "Failed" else "",
            "worker": rng.choice(WORKERS),
            "attempts": 1,
            "created": begun - 0.01,
            "started": begun,
            "ended": ended,
            "updated": ended or begun,
            "cached": False,
            "cache_key": "",
        }
