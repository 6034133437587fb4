"""The run list API and the recorder on a large database: SQLite and PostgreSQL.

    .venv/bin/python -m benchmarks.db_scale [--flow-runs 100000] [--task-runs 1000000] [--quick]
        [--repeat 20] [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres]

For each database (a fresh SQLite file, and a fresh PostgreSQL database created next to
``--postgres-url``'s and dropped at the end, even on error; skipped with a message when
PostgreSQL does not answer):

1. **Seed**: the API's migrations, then ``--flow-runs`` flow runs and ``--task-runs`` task
   runs of a realistic history (``benchmarks.db_seed``), with plain bulk INSERTs.
2. **List routes**: the real API (``python -m api.server``, its background services off so
   that nothing else queries the database meanwhile) answers each query of :data:`QUERIES`
   ``--repeat`` times after two warm-up calls. Server time is the ``Server-Timing`` header
   (``api.timing``: arrival to response headers); client time is the wall time of the HTTP
   call. Median and p90 of each.
3. **Recorder**: a burst of the events a static run of a few task runs sends (flow Pending,
   Running, each task Running and Completed, a log line, flow Completed), written to a
   private redis-server's event stream as workers write them, then drained by the real
   :class:`api.services.recorder.Recorder` (read, apply, acknowledge, batch after batch) into
   the seeded database. Events/s = events / wall time of the drain: the rate it sustains
   with a backlog.

The target of issue 18: first page and a filtered page under 100 ms server time at 100,000
flow runs and 1,000,000 task runs. Nothing here asserts a time. Results go to
``benchmarks/results/db_scale.json`` (``db_scale-quick.json`` with ``--quick``: 10,000 and
100,000 rows).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from api.db import engine_for, migrate
from benchmarks.db_recorder import recorder_rate
from benchmarks.db_seed import Seeded, seed
from benchmarks.db_targets import on_each_database
from benchmarks.http_timing import percentile, timed_gets
from orchestrator.devstack.localstack import api_server

RESULTS = Path(__file__).parent / "results"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TARGET_MS = 100.0
TARGET_QUERIES = ("first_page", "state_failed", "flow", "flow_and_state")  # what issue 18 bounds


def queries(seeded: Seeded) -> dict[str, tuple[str, dict[str, Any]]]:
    """The list requests people make, by name: (path, query parameters)."""
    week_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=7)).isoformat()
    return {
        "first_page": ("/flow-runs", {}),
        "state_failed": ("/flow-runs", {"state": "Failed"}),
        "state_running": ("/flow-runs", {"state": ["Running", "Pending"]}),
        "flow": ("/flow-runs", {"flow": "report-daily"}),
        "flow_and_state": ("/flow-runs", {"flow": "sync-crm", "state": "Failed"}),
        "since_week": ("/flow-runs", {"since": week_ago}),
        "name_contains": ("/flow-runs", {"name": "ml-train-0"}),
        "parent": ("/flow-runs", {"parent": seeded.subflow_parent}),
        "deep_page": ("/flow-runs", {"offset": seeded.flow_runs // 2}),
        "task_runs": (f"/flow-runs/{seeded.typical_run}/task-runs", {}),
        "task_runs_largest": (f"/flow-runs/{seeded.largest_run}/task-runs", {}),
    }


def time_query(http: httpx.Client, path: str, params: dict[str, Any], repeat: int) -> dict[str, Any]:
    """Median and p90 of the server's and the client's time for one request, and what it answered."""
    timed = timed_gets(http, path, params, repeat)
    server, client, response = timed.server_ms, timed.client_ms, timed.response
    body = response.json()
    items = body["items"] if isinstance(body, dict) else body
    total = body["total"] if isinstance(body, dict) else int(response.headers.get("x-total-count", len(items)))
    return {
        "server_ms_median": round(statistics.median(server), 1),
        "server_ms_p90": round(percentile(server, 0.9), 1),
        "client_ms_median": round(statistics.median(client), 1),
        "client_ms_p90": round(percentile(client, 0.9), 1),
        "items": len(items),
        "total": total,
        "bytes": len(response.content),
    }


def bench_database(label: str, db_url: str, redis_url: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Seed one database, time the list routes over HTTP, then the recorder's drain rate."""
    migrate(db_url)
    engine = engine_for(db_url)
    seeded = seed(engine, args.flow_runs, args.task_runs)
    print(
        f"{label}: seeded {seeded.flow_runs:,} flow runs, {seeded.task_runs:,} task runs in {seeded.seconds} s",
        flush=True,
    )
    out: dict[str, Any] = {"seeded": vars(seeded), "queries": {}}
    services_off = {"ORCHESTRATOR_API_SERVICES": "false"}
    with (
        api_server(redis_url, db_url, log_path=folder / f"api-{label}.log", extra_env=services_off) as api,
        httpx.Client(base_url=api.url, timeout=120) as http,
    ):
        for name, (path, params) in queries(seeded).items():
            found = time_query(http, path, params, args.repeat)
            out["queries"][name] = found
            print(
                f"  {name:<18} server {found['server_ms_median']:>7.1f} ms (p90 {found['server_ms_p90']:>7.1f})"
                f"  client {found['client_ms_median']:>7.1f} ms  {found['items']:>4} of {found['total']:,}",
                flush=True,
            )
    out["recorder"] = recorder_rate(redis_url, engine, args.recorder_runs, args.recorder_tasks)
    rate = out["recorder"]
    print(f"  recorder: {rate['events']:,} events in {rate['seconds']} s = {rate['events_per_s']:,.0f} events/s")
    engine.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flow-runs", type=int, default=100_000)
    parser.add_argument("--task-runs", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20, help="timed requests per query (after 2 warm-up ones)")
    parser.add_argument("--recorder-runs", type=int, default=2000, help="flow runs in the recorder's burst")
    parser.add_argument("--recorder-tasks", type=int, default=10, help="task runs per flow run of the burst")
    parser.add_argument(
        "--postgres-url", default=POSTGRES_URL, help="an existing database to create the fresh one from"
    )
    parser.add_argument("--only", choices=["sqlite", "postgresql"], default=None)
    parser.add_argument("--quick", action="store_true", help="10,000 flow runs, 100,000 task runs, 5 repeats")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.flow_runs, args.task_runs, args.repeat, args.recorder_runs = 10_000, 100_000, 5, 300
    output = args.output or RESULTS / ("db_scale-quick.json" if args.quick else "db_scale.json")
    folder = Path(tempfile.mkdtemp(prefix="orc-db-bench-"))
    results: dict[str, Any] = {
        "measured_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "flow_runs": args.flow_runs,
        "task_runs": args.task_runs,
        "repeat": args.repeat,
        "target_server_ms": TARGET_MS,
    }
    results["databases"] = on_each_database(bench_database, args, folder, sqlite_file="scale.db", prefix="orc_bench")
    for label, found in results["databases"].items():
        if "queries" in found:
            slow = [q for q in TARGET_QUERIES if found["queries"][q]["server_ms_median"] > TARGET_MS]
            verdict = "yes" if not slow else "no: " + ", ".join(slow)
            print(f"{label}: first page and filtered pages under {TARGET_MS:.0f} ms server time: {verdict}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results in {output}; logs in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
