"""How many bytes of database a recorded task run costs, by table and index, on SQLite and PostgreSQL.

    .venv/bin/python -m benchmarks.db_bytes [--tasks 500] [--flows 200] [--only sqlite|postgresql]
        [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/test]

For each database (a fresh SQLite file; a fresh PostgreSQL database created next to
``--postgres-url``'s and dropped at the end, also on error) it starts a private redis-server,
one worker (``benchmarks.workloads``) and the real API with its recorder, and runs:

- ``fan``: W1's flow (a source, ``--tasks`` parallel task runs, a reduce) as one flow run;
- ``flows``: ``--flows`` runs of ``bench-api-five`` (5 task runs each);
- ``logged``: ``--flows`` runs of ``bench-api-five-logged`` (the same, each task logging a line).

After each it waits until every event is recorded, then reads the bytes each table and index
takes (SQLite: ``dbstat``, the pages each holds; PostgreSQL: ``pg_table_size`` with its TOAST
and ``pg_relation_size`` of each index), and divides the growth by the task runs the scenario
finished. Last, every run it made is deleted through ``DELETE /api/flow-runs/{id}``, and what
the database and Redis (the run store's ``orc:*`` keys, ``MEMORY USAGE``) hold of runs before and
after is reported. Results go to ``benchmarks/results/db_bytes.json``. Nothing here asserts a size.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import redis
from sqlalchemy import Engine, create_engine, text

from benchmarks.private_redis import private_redis
from benchmarks.redis_bytes import snapshot, wait_quiet
from orchestrator.devstack.databases import fresh_postgres_database
from orchestrator.devstack.localstack import api_server, worker

RESULTS = Path(__file__).parent / "results"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def sizes(engine: Engine) -> dict[str, int]:
    """Bytes of every table and index of the API's schema (a table's own, without its indexes)."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            rows = connection.execute(text("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name")).all()
            internal = ("sqlite_schema", "sqlite_master", "sqlite_sequence", "sqlite_stat1", "alembic_version")
            return {str(name): int(size) for name, size in rows if str(name) not in internal}  # with autoindexes
        tables = connection.execute(
            text("SELECT tablename, pg_table_size(quote_ident(tablename)) FROM pg_tables WHERE schemaname = 'public'")
        ).all()
        indexes = connection.execute(
            text(
                "SELECT indexname, pg_relation_size(quote_ident(indexname)) FROM pg_indexes WHERE schemaname = 'public'"
            )
        ).all()
        return {str(n): int(s) for n, s in (*tables, *indexes) if n != "alembic_version"}


def scenarios(n: int, flows: int, timeout: float) -> list[tuple[str, Callable[[], list[str]], int]]:
    """The workloads (name, run to completion returning the run ids, task runs finished)."""
    from benchmarks import workloads as w

    def fan() -> list[str]:
        run = w.w1_fan.delay(n=n)
        assert run.result(timeout=timeout) == sum(range(n))
        return [run.id]

    def five(flow: Any) -> Callable[[], list[str]]:
        def run() -> list[str]:
            runs = [flow.delay(x=i) for i in range(flows)]
            for i, one in enumerate(runs):
                assert one.result(timeout=timeout) == 3 * i + 3
            return [one.id for one in runs]

        return run

    return [("fan", fan, n + 2), ("flows", five(w.api_five), 5 * flows), ("logged", five(w.api_five_logged), 5 * flows)]


def measure(database_url: str, n: int, flows: int, timeout: float, folder: Path) -> dict[str, Any]:
    """The scenarios against one database, through a private Redis, a worker and the API."""
    out: dict[str, Any] = {}
    engine = create_engine(database_url)
    with private_redis() as url:
        client = redis.Redis.from_url(url)
        with (
            worker(url, ["benchmarks.workloads"], log_path=folder / "worker.log"),
            api_server(url, database_url, log_path=folder / "api.log") as api,
        ):
            for _, warm, _ in scenarios(5, 2, timeout):  # imports, connections, the tables' first pages
                warm()
            made: list[str] = []  # the measured runs, deleted at the end (the warm-up's stay in both snapshots)
            wait_quiet(client, recorder=True)
            empty = snapshot(client)  # the run store before the scenarios (warm-up runs included)
            for name, run, tasks in scenarios(n, flows, timeout):
                before = sizes(engine)
                started = time.perf_counter()
                made += run()
                wait_quiet(client, recorder=True)
                after = sizes(engine)
                grown = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                total = sum(grown.values())
                out[name] = {
                    "task_runs": tasks,
                    "bytes_per_task_run": round(total / tasks),
                    "per_task_run": {k: round(v / tasks) for k, v in sorted(grown.items(), key=lambda kv: -kv[1]) if v},
                    "seconds": round(time.perf_counter() - started, 1),
                }
                print_row(engine.dialect.name, name, out[name])
            out["deleted"] = delete_all(client, engine, api.url, made, empty)
        client.close()
    engine.dispose()
    return out


def run_store_bytes(client: redis.Redis, empty: Any) -> int:
    """Bytes the run store's keys (``orc:*``, the event stream aside) hold beyond ``empty``."""
    now = snapshot(client)
    runs = [f for f in now.families if f.startswith("orc:") and not f.startswith("orc:events")]
    return sum(now.families[f] - empty.families.get(f, 0) for f in runs)


def delete_all(client: redis.Redis, engine: Engine, api_url: str, run_ids: list[str], empty: Any) -> dict[str, Any]:
    """Every run made, deleted through the API: what the database and Redis held before and after."""
    held, redis_before = sum(sizes(engine).values()), run_store_bytes(client, empty)
    started = time.perf_counter()
    with httpx.Client(base_url=api_url, timeout=60) as http:
        for run_id in run_ids:
            response = http.delete(f"/flow-runs/{run_id}")
            assert response.status_code == 200, response.text
    seconds = time.perf_counter() - started
    with engine.connect() as connection:
        rows = {t: int(connection.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in ROW_TABLES}
    found = {
        "flow_runs": len(run_ids),
        "seconds": round(seconds, 1),
        "database_bytes_before": held,
        "database_bytes_after": sum(sizes(engine).values()),
        "rows_left": rows,
        "redis_run_bytes_before": redis_before,
        "redis_run_bytes_after": run_store_bytes(client, empty),
    }
    print(f"[{engine.dialect.name}] deleted {len(run_ids)} runs in {seconds:.1f} s: {found}", flush=True)
    return found


ROW_TABLES = ("flow_run", "task_run", "state_event", "log_line")


def print_row(dialect: str, name: str, row: dict[str, Any]) -> None:
    print(f"[{dialect}] {name}: {row['bytes_per_task_run']} B per task run ({row['seconds']} s)", flush=True)
    for obj, size in row["per_task_run"].items():
        print(f"    {obj:<36} {size:>7} B", flush=True)


@contextlib.contextmanager
def databases(only: str | None, postgres_url: str, folder: Path) -> Iterator[list[tuple[str, str]]]:
    """The databases to measure: an SQLite file, and a fresh PostgreSQL database (dropped afterwards)."""
    found = [("sqlite", f"sqlite:///{folder / 'api.db'}")] if only in (None, "sqlite") else []
    with contextlib.ExitStack() as stack:
        if only in (None, "postgresql"):
            try:
                found.append(("postgresql", stack.enter_context(fresh_postgres_database(postgres_url, "orc_bytes"))))
            except Exception as exc:  # no server: say so, and measure SQLite
                print(f"postgresql: skipped, {postgres_url} does not answer ({exc})", flush=True)
        yield found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=500, help="parallel task runs of the fan-out")
    parser.add_argument("--flows", type=int, default=200, help="flow runs of 5 task runs each, per scenario")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one scenario may take")
    parser.add_argument("--only", choices=["sqlite", "postgresql"], default=None)
    parser.add_argument("--postgres-url", default=POSTGRES_URL, help="an existing database to make the fresh one from")
    parser.add_argument("--output", type=Path, default=RESULTS / "db_bytes.json")
    args = parser.parse_args(argv)
    for name in ("ORCHESTRATOR_BROKER_URL", "ORCHESTRATOR_RESULT_BACKEND_URL", "ORCHESTRATOR_FLOW_MODULES"):
        os.environ.pop(name, None)  # everything on the private server
    folder = Path(tempfile.mkdtemp(prefix="orc-db-bytes-"))
    report: dict[str, Any] = {
        "measured_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["python -m benchmarks.db_bytes", *(argv if argv is not None else sys.argv[1:])]),
        "databases": {},
    }
    with databases(args.only, args.postgres_url, folder) as found:
        for dialect, url in found:
            sub = folder / dialect
            sub.mkdir()
            report["databases"][dialect] = measure(url, args.tasks, args.flows, args.timeout, sub)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written to {args.output}; logs in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
