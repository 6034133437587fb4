"""The API under load: submit throughput over HTTP and the recorder's lag.

    .venv/bin/python -m benchmarks.api_bench [--runs 2000] [--clients 32] [--w3 5000] [--quick]

Starts a private redis-server, one worker (prefork, ``--concurrency``) and the API
(``python -m api.server``, SQLite file by default or ``--database-url``), then:

1. **Submit**: ``--runs`` flow runs of 5 tasks (``bench-api-five``) are POSTed to
   ``/api/flows/{name}/runs`` by ``--clients`` concurrent HTTP clients; throughput is
   runs created (201) per second of wall time.
2. **Lag under load**: right after, W3 (one flow of ``--w3`` independent tasks) is sent
   with ``.delay()``, so the fleet and the recorder are busy with the 2,000 runs and W3
   at once. For every task run's final state the lag is the time from its end (the
   worker's stamp in the event) to the moment the recorder wrote it (just before the
   commit); p50, p99 and max are reported, for W3 and for the HTTP runs.
3. **Completeness**: once everything is final in Redis, the database must show every
   flow run and every task run of the workload in its final state.

Results go to ``benchmarks/results/api.json`` (``api-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import create_engine, text

from benchmarks.private_redis import private_redis
from orchestrator.devstack.localstack import ApiProcess, worker

RESULTS = Path(__file__).parent / "results"
FLOW = "bench-api-five"
TASKS_PER_RUN = 5
SUBMIT_TARGET = 500.0  # runs/s
LAG_P99_TARGET = 1.0  # s


class RawHttpClient:
    """A minimal keep-alive HTTP/1.1 client for JSON POSTs.

    httpx costs about 2 ms of CPU per request here, more than the server spends on a
    run: on 2 cores it would measure the client. This one writes the request bytes and
    reads the status line, headers and body, nothing more (about 0.1 ms).
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n"
        ).encode()
        self.writer.write(head + payload)
        headers = await self.reader.readuntil(b"\r\n\r\n")
        status = int(headers.split(b" ", 2)[1])
        length = 0
        for line in headers.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def submit_all(base: str, runs: int, clients: int) -> tuple[list[str], float, list[int]]:
    """POST ``runs`` flow runs over ``clients`` keep-alive connections; ids, seconds, refused statuses."""
    url = urlsplit(base)
    ids: list[str] = []
    failures: list[int] = []
    todo = list(range(runs))
    connections = [RawHttpClient(url.hostname or "127.0.0.1", url.port or 80) for _ in range(clients)]

    async def one_client(client: RawHttpClient) -> None:
        while todo:
            i = todo.pop()
            status, body = await client.post(f"{url.path}/flows/{FLOW}/runs", {"parameters": {"x": i}})
            if status == 201:
                ids.append(json.loads(body)["id"])
            else:
                failures.append(status)

    start = time.perf_counter()
    await asyncio.gather(*(one_client(c) for c in connections))
    elapsed = time.perf_counter() - start
    for client in connections:
        await client.close()
    return ids, elapsed, failures


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads; Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """User + system CPU time of each thread of process ``pid`` so far, by thread id."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue  # ended meanwhile
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def by_thread(before: dict[int, float], after: dict[int, float], runs: int) -> list[float]:
    """CPU ms per run of each thread, in the order the threads started (ids grow): for ``python -m
    api.server`` the event loop, the submitter, the recorder, the services loop, then any others."""
    return [round((after[tid] - before.get(tid, 0.0)) * 1000 / runs, 3) for tid in sorted(after)]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def lag_summary(lags: list[float]) -> dict[str, float]:
    return {
        "count": len(lags),
        "p50_s": round(percentile(lags, 50), 4),
        "p99_s": round(percentile(lags, 99), 4),
        "max_s": round(max(lags), 4) if lags else 0.0,
        "mean_s": round(statistics.fmean(lags), 4) if lags else 0.0,
    }


def wait_recorded(db_url: str, run_ids: list[str], tasks_expected: int, timeout: float) -> dict[str, int]:
    """Poll the database until every run and task run is final (or time runs out); return the counts."""
    engine = create_engine(db_url)
    final = "('Completed','Failed','TimedOut','Crashed','UpstreamFailed','Skipped','Cancelled')"
    deadline = time.monotonic() + timeout
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        with engine.connect() as c:
            counts = {
                "flow_runs_final": c.execute(
                    text(f"SELECT count(*) FROM flow_run WHERE state IN {final}")
                ).scalar_one(),
                "flow_runs_completed": c.execute(
                    text("SELECT count(*) FROM flow_run WHERE state = 'Completed'")
                ).scalar_one(),
                "task_runs_final": c.execute(
                    text(f"SELECT count(*) FROM task_run WHERE state IN {final}")
                ).scalar_one(),
                "task_runs_completed": c.execute(
                    text("SELECT count(*) FROM task_run WHERE state = 'Completed'")
                ).scalar_one(),
            }
        if counts["flow_runs_final"] >= len(run_ids) and counts["task_runs_final"] >= tasks_expected:
            break
        time.sleep(0.5)
    engine.dispose()
    return counts


def lags(db_url: str, flow_run_ids: list[str]) -> list[float]:
    """Recording lag of every task run's final state in these flow runs."""
    engine = create_engine(db_url)
    out: list[float] = []
    with engine.connect() as c:
        for i in range(0, len(flow_run_ids), 500):
            part = flow_run_ids[i : i + 500]
            marks = ",".join(f":p{j}" for j in range(len(part)))
            rows = c.execute(
                text(
                    "SELECT recorded - ts FROM state_event WHERE kind = 'task_run' AND applied "
                    f"AND state IN ('Completed','Failed') AND flow_run_id IN ({marks})"
                ),
                {f"p{j}": v for j, v in enumerate(part)},
            )
            out.extend(float(r[0]) for r in rows)
    engine.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--w3", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--database-url", default=None, help="default: a fresh SQLite file")
    parser.add_argument("--quick", action="store_true", help="200 runs and a W3 of 500")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.w3 = 200, 500
    output = args.output or RESULTS / ("api-quick.json" if args.quick else "api.json")
    folder = Path(tempfile.mkdtemp(prefix="orc-api-bench-"))
    db_url = args.database_url or f"sqlite:///{folder / 'bench.db'}"
    with private_redis() as redis_url:
        log = folder / "worker.log"
        with worker(redis_url, ["benchmarks.workloads"], concurrency=args.concurrency, log_path=log):
            server = ApiProcess(redis_url, db_url, log_path=folder / "api.log")
            server.start()
            try:
                from benchmarks.workloads import w3_independent

                print(f"submitting {args.runs} runs of {FLOW} with {args.clients} clients ...", flush=True)
                assert server.proc is not None
                cpu_began = cpu_seconds(server.proc.pid)
                threads_began = thread_cpu_seconds(server.proc.pid)
                ids, elapsed, failures = asyncio.run(submit_all(server.url, args.runs, args.clients))
                cpu_submit = cpu_seconds(server.proc.pid) - cpu_began
                rate = len(ids) / elapsed
                print(f"  {len(ids)} created in {elapsed:.2f}s: {rate:.0f} runs/s ({len(failures)} refused)")
                w3 = w3_independent.delay(n=args.w3)
                print(f"W3: {args.w3} tasks sent as flow run {w3.id}", flush=True)
                w3_state = w3.wait(timeout=900)
                from orchestrator.runs.handle import FlowRun

                for run_id in ids:
                    FlowRun(run_id).wait(timeout=900)
                ended = time.perf_counter()
                expected_tasks = len(ids) * TASKS_PER_RUN + args.w3
                counts = wait_recorded(db_url, [*ids, w3.id], expected_tasks, timeout=300)
                caught_up = time.perf_counter() - ended
                cpu_all = cpu_seconds(server.proc.pid) - cpu_began  # creating and recording it all, W3 too
                threads = by_thread(threads_began, thread_cpu_seconds(server.proc.pid), 1)
                w3_lags = lags(db_url, [w3.id])
                http_lags = lags(db_url, ids)
            finally:
                server.stop()
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "database": db_url.split(":", 1)[0],
        "runs": args.runs,
        "clients": args.clients,
        "worker_concurrency": args.concurrency,
        "submit": {
            "created": len(ids),
            "refused": failures[:20],
            "seconds": round(elapsed, 3),
            "runs_per_s": round(rate, 1),
        },
        # The API process's CPU (load-independent, unlike runs/s): while submitting, and from the first
        # request until everything was recorded (the HTTP runs' 7 events each and W3's 5,000 tasks too).
        "api_cpu_s": {
            "submit": round(cpu_submit, 3),
            "until_recorded": round(cpu_all, 3),
            "until_recorded_by_thread": [round(ms / 1000, 3) for ms in threads],  # loop, submitter, recorder, ...
        },
        "w3": {"tasks": args.w3, "state": w3_state.value},
        "recorded": counts,
        "expected": {"flow_runs": len(ids) + 1, "task_runs": expected_tasks},
        "seconds_to_catch_up_after_fleet_done": round(caught_up, 3),
        "lag_w3": lag_summary(w3_lags),
        "lag_http_runs": lag_summary(http_lags),
    }
    report["checks"] = {
        "submit_runs_per_s>=500": rate >= SUBMIT_TARGET,
        "lag_p99<1s": report["lag_w3"]["p99_s"] < LAG_P99_TARGET and report["lag_http_runs"]["p99_s"] < LAG_P99_TARGET,
        "nothing_missing": counts.get("flow_runs_final", 0) >= len(ids) + 1
        and counts.get("task_runs_final", 0) >= expected_tasks
        and not failures,
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if all(report["checks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
