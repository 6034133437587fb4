"""How the orchestrator's cost grows with the work, beside raw Celery's: the growth table.

    .venv/bin/python -m benchmarks.run --scale [--quick]

Starts one private redis-server and one worker (as ``benchmarks.run`` does) and runs, at
growing sizes, each workload both ways (raw side first, then the orchestrator; one round
per size, two at the smallest), checking every result:

- W3: n independent tasks (5,000, 20,000, 50,000);
- W1M: a map over an upstream task's result, then one reduce (500, 5,000, 20,000, 100,000);
  by hand, a task that replaces itself with the chord (Celery's ``Task.replace``);
- W2: a chain of n links (200, 2,000, 10,000); by hand only up to 2,000, because raw
  Celery carries every remaining link in each message (quadratic: 22 s at 2,000 links).

For each run it records the seconds, the time per task, and the bytes sent into Redis
(``total_net_input_bytes``, everything the client and the worker wrote). The growth of a
side is its time per task at the largest size over the smallest (flat is 1.0; the target
is within 1.5). Then, in a fresh process each, tracing and compiling alone a 50,000-node
plan (a 50,000-task group and a 50,000-link chain): seconds and peak memory; and the
client's peak memory to send W3 at 50,000 both ways (messages only, into a queue no
worker reads, deleted afterwards). Results go to ``benchmarks/results/scale.json``
(``scale-quick.json`` with ``--quick``: sizes divided by 10). Nothing asserts a time.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import redis

from benchmarks.private_redis import private_redis
from benchmarks.run import RESULTS, log_problems, machine_info, make_sides, show_log_on_error, timed
from orchestrator.devstack.localstack import worker

SIZES = {"W3": [5_000, 20_000, 50_000], "W1M": [500, 5_000, 20_000, 100_000], "W2": [200, 2_000, 10_000]}
RAW_MAX = {"W2": 2_000}  # raw Celery's chain is quadratic in bytes: beyond this it takes many minutes
GROWTH_TARGET = 1.5
PLAN_NODES = 50_000


def scaled(quick: bool) -> dict[str, list[int]]:
    return {k: [max(n // 10, 20) for n in v] if quick else v for k, v in SIZES.items()}


def one_run(key: str, side: str, runner: Any, n: int, r: redis.Redis) -> dict[str, Any]:
    """Seconds, time per task and bytes into Redis of one checked run."""
    before = int(r.info("stats")["total_net_input_bytes"])
    seconds = timed(key, runner, n)
    moved = int(r.info("stats")["total_net_input_bytes"]) - before
    print(f"  {key} n={n} {side}: {seconds:.2f} s, {moved / 1e6:.1f} MB into Redis", flush=True)
    return {"seconds": round(seconds, 3), "ms_per_task": round(seconds * 1000 / n, 4), "redis_bytes_in": moved}


def growth_rows(sizes: dict[str, list[int]], timeout: float, r: redis.Redis) -> dict[str, Any]:
    sides = make_sides(timeout)
    rows: dict[str, Any] = {}
    for key, ns in sizes.items():
        for n in ns:
            rounds = 2 if n == ns[0] else 1
            row: dict[str, Any] = {"size": n}
            for side in ("raw", "orchestrator"):
                if side == "raw" and n > RAW_MAX.get(key, n):
                    row[side] = None
                    continue
                runs = [one_run(key, side, getattr(sides[key], side), n, r) for _ in range(rounds)]
                row[side] = min(runs, key=lambda run: run["seconds"])
            if row["raw"]:
                row["ratio"] = round(row["orchestrator"]["seconds"] / row["raw"]["seconds"], 3)
            rows.setdefault(key, []).append(row)
    return rows


def growth(rows: dict[str, Any]) -> dict[str, Any]:
    """Per workload and side: time per task at the largest size over the smallest."""
    out: dict[str, Any] = {}
    for key, sized in rows.items():
        for side in ("raw", "orchestrator"):
            measured = [row[side] for row in sized if row[side]]
            if len(measured) > 1:
                value = round(measured[-1]["ms_per_task"] / measured[0]["ms_per_task"], 3)
                out[f"{key} {side}"] = {"value": value, "limit": GROWTH_TARGET, "met": value <= GROWTH_TARGET}
    return out


PLAN_PROBE = """
import json, resource, sys, time
from benchmarks import workloads
from orchestrator.planning.compiler import compile_plan
from orchestrator.transport.celery_app import client_app
flow = {"group": workloads.w3_independent, "chain": workloads.w2_chain}[sys.argv[1]]
n = int(sys.argv[2])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
plan = flow.plan(n)
traced = time.perf_counter()
compiled = compile_plan(plan, client_app())
done = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"nodes": len(plan.nodes), "trace_s": round(traced - start, 3),
    "compile_s": round(done - traced, 3), "peak_rss_mb_over_start": round((peak - base) / 1024, 1)}))
"""

SEND_PROBE = """
import json, resource, sys, time
from benchmarks import workloads
from orchestrator.transport.messaging import client_messaging
side, n, queue = sys.argv[1], int(sys.argv[2]), sys.argv[3]
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if side == "raw":
    workloads.raw_w3(n).apply_async(queue=queue)
else:
    messaging = client_messaging()
    messaging.send_canvas(messaging.compile(workloads.w3_independent.plan(n)).canvas)
done = time.perf_counter()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": round(done - start, 3), "peak_rss_mb_over_start": round((peak - base) / 1024, 1)}))
"""


def probe(code: str, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter (its own peak memory) and read the JSON it prints."""
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, env=env or dict(os.environ)
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def client_memory(n: int, url: str) -> dict[str, Any]:
    """Peak memory of a client sending W3 at ``n``, each side: messages to a queue nobody reads."""
    queue = f"bench-scale-unread-{os.getpid()}"
    env = dict(os.environ, ORCHESTRATOR_DEFAULT_QUEUE=queue)
    try:
        return {side: probe(SEND_PROBE, side, str(n), queue, env=env) for side in ("raw", "orchestrator")}
    finally:
        redis.Redis.from_url(url).delete(queue)


def print_table(report: dict[str, Any]) -> None:
    print(
        f"\n{'workload':<10} {'size':>8} {'raw s':>9} {'orch s':>9} {'raw ms/t':>9} {'orch ms/t':>10} "
        f"{'raw MB in':>10} {'orch MB in':>11} {'ratio':>6}"
    )
    for key, sized in report["growth_table"].items():
        for row in sized:
            raw, orc = row["raw"] or {}, row["orchestrator"]
            print(
                f"{key:<10} {row['size']:>8} {raw.get('seconds', float('nan')):>9.2f} {orc['seconds']:>9.2f} "
                f"{raw.get('ms_per_task', float('nan')):>9.3f} {orc['ms_per_task']:>10.3f} "
                f"{raw.get('redis_bytes_in', float('nan')) / 1e6:>10.1f} {orc['redis_bytes_in'] / 1e6:>11.1f} "
                f"{row.get('ratio', float('nan')):>6.2f}"
            )
    for name, check in report["growth"].items():
        print(f"  {'met ' if check['met'] else 'MISS'} growth {name}: {check['value']} (limit {check['limit']})")
    for name, value in report["plan_alone"].items():
        print(f"  plan alone, {name}: {value}")
    print(f"  client sending W3 at {report['client_memory']['size']}: {report['client_memory']['sides']}")


def main(quick: bool, timeout: float, concurrency: int, output: Path | None) -> int:
    sizes = scaled(quick)
    plan_nodes = PLAN_NODES // 10 if quick else PLAN_NODES
    load_start = round(os.getloadavg()[0], 2)
    for name in ("ORCHESTRATOR_BROKER_URL", "ORCHESTRATOR_RESULT_BACKEND_URL", "ORCHESTRATOR_FLOW_MODULES"):
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory(prefix="orc-scale-") as tmp, private_redis() as url:
        log = Path(tmp) / "worker.log"
        r = redis.Redis.from_url(url)
        plan_alone = {
            f"{shape} of {plan_nodes}": probe(PLAN_PROBE, shape, str(plan_nodes)) for shape in ("group", "chain")
        }
        memory = {"size": plan_nodes, "sides": client_memory(plan_nodes, url)}
        with worker(url, ["benchmarks.workloads"], concurrency=concurrency, log_path=log), show_log_on_error(log):
            info = machine_info(url)
            print(f"redis {url}, worker prefork c={concurrency}; sizes {sizes}", flush=True)
            rows = growth_rows(sizes, timeout, r)
            problems = log_problems(log)
    report = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            [Path(sys.executable).name, "-m", "benchmarks.run", "--scale", *(["--quick"] if quick else [])]
        ),
        "machine": info,
        "config": {"quick": quick, "concurrency": concurrency, "sizes": sizes, "raw_max": RAW_MAX},
        "growth_table": rows,
        "growth": growth(rows),
        "plan_alone": plan_alone,
        "client_memory": memory,
        "worker_log_problems": problems,
        "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
        "client_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    output = output or RESULTS / ("scale-quick.json" if quick else "scale.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"worker log problems: {problems}\nwrote {output}")
    return 0
