"""What one ``POST /api/flows/{name}/runs`` costs the API process: CPU per run, Redis commands per run.

    .venv/bin/python -m benchmarks.api_submit_cpu [--runs 2000] [--clients 32] [--no-worker]

``benchmarks.api_bench`` reports runs per second, which on a shared 2-core machine moves
with whatever else runs there (425-587 runs/s across runs of the same code). This one
starts the same stack (a private redis-server, the worker, ``python -m api.server`` on a
fresh SQLite file), sends the same 2,000 runs of ``bench-api-five`` with the same client,
and reads the API process's own CPU time (user + system, from ``/proc``) before and after
the submit phase: CPU milliseconds per run move far less with the machine's load, so two
versions can be compared from a few alternating runs.

With ``--no-worker`` a worker announces the flow and stops first: the API's recorder then
records only the runs' creation, and nothing else competes for the cores (the submit
path's own cost). Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import redis

from benchmarks.api_bench import FLOW, by_thread, cpu_seconds, submit_all, thread_cpu_seconds
from benchmarks.private_redis import private_redis
from orchestrator.devstack.localstack import ApiProcess, worker

WARM_UP_RUNS = 50  # the first requests build caches (the flow's schema validator, the Celery producer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--no-worker", action="store_true", help="no worker while submitting (the submit path alone)")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="orc-api-cpu-"))
    with private_redis() as redis_url:
        if args.no_worker:  # the flow stays announced in Redis after its worker left
            with worker(redis_url, ["benchmarks.workloads"], concurrency=1, log_path=folder / "announce.log"):
                pass
        fleet: AbstractContextManager[Any] = (
            nullcontext()
            if args.no_worker
            else worker(redis_url, ["benchmarks.workloads"], concurrency=2, log_path=folder / "worker.log")
        )
        with fleet:
            server = ApiProcess(redis_url, f"sqlite:///{folder / 'bench.db'}", log_path=folder / "api.log")
            server.start()
            try:
                assert server.proc is not None
                asyncio.run(submit_all(server.url, WARM_UP_RUNS, 4))
                client = redis.Redis.from_url(redis_url)
                client.config_resetstat()
                before = cpu_seconds(server.proc.pid)
                threads_before = thread_cpu_seconds(server.proc.pid)
                ids, elapsed, refused = asyncio.run(submit_all(server.url, args.runs, args.clients))
                spent = cpu_seconds(server.proc.pid) - before
                threads = by_thread(threads_before, thread_cpu_seconds(server.proc.pid), args.runs)
                commands = client.info("commandstats")
                client.close()
            finally:
                server.stop()
    report = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "flow": FLOW,
        "runs": args.runs,
        "clients": args.clients,
        "worker": not args.no_worker,
        "created": len(ids),
        "refused": refused[:20],
        "runs_per_s": round(len(ids) / elapsed, 1),
        "api_cpu_ms_per_run": round(spent * 1000 / args.runs, 3),
        "thread_cpu_ms_per_run": threads,  # loop, submitter, recorder, services, others (start order)
        "redis_commands_per_run": round(sum(c["calls"] for c in commands.values()) / args.runs, 2),
        "load_average": os.getloadavg()[0],
    }
    print(json.dumps(report, indent=2))
    return 0 if len(ids) == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
