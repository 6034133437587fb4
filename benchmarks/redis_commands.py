"""Redis commands and client round trips per task, both sides: figures that load cannot change.

    .venv/bin/python -m benchmarks.redis_commands [--only W0,W2,W3] [--sizes W0=50,W2=200,W3=1000]

Starts one private redis-server and one worker (``benchmarks.workloads``), like
``benchmarks.run``, warms up, then runs each workload once per side and reports, per task:
Redis commands by type (``INFO commandstats`` before and after, every client together, Lua
scripts' inner commands included and the ``EVALSHA`` itself counted as one), and the client's
round trips (writes of a command or a pipeline on its sockets, counted in this process).
A quiet interval as long as the run is measured first and subtracted (heartbeats, the
services loop), so what is left is the workload's. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from redis.connection import Connection

from benchmarks.private_redis import private_redis
from benchmarks.run import make_sides, measure
from orchestrator.devstack.localstack import worker

DEFAULT_SIZES = {"W0": 50, "W2": 200, "W3": 1000, "W1": 500}
ROUND_TRIPS = Counter[str]()


def _count_round_trips() -> None:
    """Count each write of a command (or a whole pipeline) by this process's redis-py connections."""
    original = Connection.send_packed_command

    def counted(self: Connection, command: Any, check_health: bool = True) -> None:
        ROUND_TRIPS["client"] += 1
        original(self, command, check_health)

    Connection.send_packed_command = counted  # type: ignore[method-assign]


def commandstats(client: redis.Redis) -> Counter[str]:
    """Calls per command so far (``cmdstat_evalsha`` → ``evalsha``), and microseconds Redis spent in
    scripts (``usec:scripts``, their inner commands included) and in the other commands (``usec:other``;
    a script's inner commands count there too, so the two overlap)."""
    stats = client.info("commandstats")
    calls = Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})
    scripts = ("cmdstat_evalsha", "cmdstat_eval")
    calls["usec:scripts"] = sum(int(v["usec"]) for name, v in stats.items() if name in scripts)
    calls["usec:other"] = sum(int(v["usec"]) for name, v in stats.items() if name not in scripts)
    return calls


def one_side(client: redis.Redis, run: Any, n: int, samples: int) -> tuple[Counter[str], int, float]:
    """Commands, client round trips and seconds for ``samples`` runs of size ``n``."""
    before, trips = commandstats(client), ROUND_TRIPS["client"]
    start = time.perf_counter()
    for _ in range(samples):
        run(n)
    elapsed = time.perf_counter() - start
    time.sleep(0.5)  # the last acknowledgements and events land
    trips = ROUND_TRIPS["client"] - trips - 1  # the INFO below is not the workload's
    after = commandstats(client)
    after["info"] -= 1
    return after - before, trips, elapsed


def quiet(client: redis.Redis, seconds: float) -> Counter[str]:
    """Commands over ``seconds`` with nothing submitted (heartbeats, the services loop)."""
    before = commandstats(client)
    time.sleep(seconds)
    after = commandstats(client)
    after["info"] -= 1
    return after - before


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.redis_commands", description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="W0,W2,W3")
    parser.add_argument("--sizes", default="", help="e.g. W0=50,W3=1000 (W0: samples)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    sizes = DEFAULT_SIZES | {k: int(v) for k, v in (p.split("=") for p in args.sizes.split(",") if p)}
    only = [k.strip().upper() for k in args.only.split(",") if k.strip()]
    for name in ("ORCHESTRATOR_BROKER_URL", "ORCHESTRATOR_RESULT_BACKEND_URL", "ORCHESTRATOR_FLOW_MODULES"):
        os.environ.pop(name, None)
    _count_round_trips()
    report: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="orc-cmds-") as tmp,
        private_redis() as url,
        worker(url, ["benchmarks.workloads"], concurrency=2, log_path=Path(tmp) / "worker.log"),
    ):
        sides = make_sides(600)
        client = redis.Redis.from_url(url)
        for key in only:
            measure(key, sides[key], 5 if key == "W0" else 20, 2)  # warm up
        for key in only:
            n, samples = (1, sizes[key]) if key == "W0" else (sizes[key], 1)
            tasks = n * samples
            row: dict[str, Any] = {"tasks": tasks}
            for side in ("raw", "orchestrator"):
                cmds, trips, elapsed = one_side(client, getattr(sides[key], side), n, samples)
                idle = quiet(client, elapsed + 0.5)
                cmds.subtract(idle)
                usec = {k: round(cmds.pop(k, 0) / tasks, 1) for k in ("usec:scripts", "usec:other")}
                per = {c: round(v / tasks, 2) for c, v in sorted(cmds.items()) if round(v / tasks, 2) != 0}
                row[side] = {
                    "commands_per_task": per,
                    "total_per_task": round(sum(cmds.values()) / tasks, 2),
                    "redis_usec_per_task": usec,
                    "client_round_trips_per_task": round(trips / tasks, 2),
                    "seconds": round(elapsed, 3),
                }
            report[key] = row
            print(key, json.dumps(row, indent=1), flush=True)
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
