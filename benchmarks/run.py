"""Compare the orchestrator with hand-written Celery canvas on the same worker.

    .venv/bin/python -m benchmarks.run [--quick] [--repeat N] [--concurrency C] [--only W0,W2]

Starts one private redis-server and one worker (``benchmarks.workloads``), warms up,
runs every workload both ways (alternating which side goes first), prints a table
and writes ``benchmarks/results/latest.json``. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import redis

from orchestrator.celery_app import client_app
from orchestrator.localstack import redis_server, worker
from orchestrator.settings import reset_settings

RESULTS = Path(__file__).parent / "results"
RATIO_TARGET = 1.3
W0_TARGET_MS = 30.0
FULL_SIZES = {"W0": 50, "W1": 500, "W2": 200, "W3": 5000}
QUICK_SIZES = {"W0": 20, "W1": 50, "W2": 20, "W3": 500}
WARMUP_SIZES = {"W0": 5, "W1": 20, "W2": 10, "W3": 50}
TITLES = {
    "W0": "one task, submit to result (latency, ms)",
    "W1": "fan-out/fan-in: 1 source, {n} parallel, 1 reduce (s)",
    "W2": "chain of {n} dependent tasks (s)",
    "W3": "{n} independent tasks in one flow (s)",
}

Runner = Callable[[int], Any]


@dataclass
class Sides:
    """How to run one workload of size n, and to completion, on each side."""

    raw: Runner
    orchestrator: Runner


def make_sides(timeout: float) -> dict[str, Sides]:
    """Runners for every workload; import the workloads only now (settings are read on import)."""
    from benchmarks import workloads as w

    def raw(build: Callable[[int], Any]) -> Runner:
        return lambda n: build(n).apply_async().get(timeout=timeout)

    def orc(flow: Any, param: str) -> Runner:
        return lambda n: flow.delay(**{param: n}).result(timeout=timeout)

    return {
        # W0 is one task whatever n is: n only counts samples.
        "W0": Sides(raw(lambda _n: w.raw_w0(1)), orc(w.w0_single, "x")),
        "W1": Sides(raw(w.raw_w1), orc(w.w1_fan, "n")),
        "W2": Sides(raw(w.raw_w2), orc(w.w2_chain, "n")),
        "W3": Sides(raw(w.raw_w3), orc(w.w3_independent, "n")),
    }


def timed(key: str, run: Runner, n: int) -> float:
    """Seconds from submit to the final result; the result is checked."""
    from benchmarks.workloads import expected

    start = time.perf_counter()
    value = run(1 if key == "W0" else n)
    elapsed = time.perf_counter() - start
    want = expected(key, 1 if key == "W0" else n)
    if value != want:
        raise AssertionError(f"{key} returned {str(value)[:200]!r}, expected {str(want)[:200]!r}")
    return elapsed


def summary(samples: list[float], scale: float) -> dict[str, Any]:
    """Median, p90, best and every sample, multiplied by ``scale`` (1000 for ms)."""
    values = [s * scale for s in samples]
    p90 = statistics.quantiles(values, n=10)[8] if len(values) > 1 else values[0]
    return {
        "median": round(statistics.median(values), 3),
        "p90": round(p90, 3),
        "best": round(min(values), 3),
        "samples": [round(v, 3) for v in values],
    }


def measure(key: str, sides: Sides, n: int, rounds: int) -> dict[str, list[float]]:
    """``rounds`` timings per side, alternating which side goes first."""
    times: dict[str, list[float]] = {"raw": [], "orchestrator": []}
    for i in range(rounds):
        order = ["raw", "orchestrator"] if i % 2 == 0 else ["orchestrator", "raw"]
        for side in order:
            times[side].append(timed(key, getattr(sides, side), n))
    return times


def machine_info(redis_url: str) -> dict[str, Any]:
    """Where and with what the figures were measured."""
    cpu = ""
    with open("/proc/cpuinfo") if os.path.exists("/proc/cpuinfo") else open(os.devnull) as fh:
        cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), "")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "platform": platform.platform(),
        "cpu": cpu or platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "celery": metadata.version("celery"),
        "kombu": metadata.version("kombu"),
        "redis_py": metadata.version("redis"),
        "redis_server": redis.Redis.from_url(redis_url).info("server")["redis_version"],
        "git_commit": commit,
    }


def log_problems(log: Path) -> dict[str, int]:
    """Count worker log lines that signal trouble (there should be none)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return {word: text.count(word) for word in ("ERROR", "CRITICAL", "Traceback", "WARNING")}


def print_table(report: dict[str, Any]) -> None:
    """The human-readable table: median per side, ratio, target."""
    print(f"\n{'workload':<58} {'raw':>10} {'orch':>10} {'ratio':>7}  target")
    for key, row in report["workloads"].items():
        unit = "ms" if key == "W0" else "s"
        raw, orc = row["raw"]["median"], row["orchestrator"]["median"]
        met = "ok" if row["ratio"] <= RATIO_TARGET else "MISSED"
        print(f"{key} {row['title']:<55} {raw:>8.3f}{unit:<2} {orc:>8.3f}{unit:<2} {row['ratio']:>7.2f}  {met}")
        if key == "W0":
            print(f"{'   p90':<58} {row['raw']['p90']:>8.3f}ms {row['orchestrator']['p90']:>8.3f}ms")
    for check in report["targets"]["checks"]:
        print(f"  {'met ' if check['met'] else 'MISS'} {check['name']}: {check['value']} (limit {check['limit']})")


def targets(rows: dict[str, Any]) -> dict[str, Any]:
    """Every ratio <= 1.3 and W0 orchestrator median latency <= 30 ms."""
    checks = [
        {"name": f"{k} ratio orchestrator/raw", "value": r["ratio"], "limit": RATIO_TARGET,
         "met": r["ratio"] <= RATIO_TARGET}
        for k, r in rows.items()
    ]
    if "W0" in rows:
        w0 = rows["W0"]["orchestrator"]["median"]
        checks.append({"name": "W0 orchestrator median latency ms", "value": w0, "limit": W0_TARGET_MS,
                       "met": w0 <= W0_TARGET_MS})
    return {"ratio_max": RATIO_TARGET, "w0_latency_max_ms": W0_TARGET_MS, "checks": checks,
            "all_met": all(c["met"] for c in checks)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a fast check")
    parser.add_argument("--repeat", type=int, default=None, help="runs per side of W1-W3 (default 5, quick 2)")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork processes of the worker")
    parser.add_argument("--only", default="W0,W1,W2,W3", help="comma-separated workloads to run")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one run may take")
    parser.add_argument("--output", type=Path, default=RESULTS / "latest.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    repeat = args.repeat or (2 if args.quick else 5)
    selected = [k.strip().upper() for k in args.only.split(",") if k.strip()]
    for name in ("ORCHESTRATOR_BROKER_URL", "ORCHESTRATOR_RESULT_BACKEND_URL", "ORCHESTRATOR_FLOW_MODULES"):
        os.environ.pop(name, None)  # both sides must use the private server only
    with tempfile.TemporaryDirectory(prefix="orc-bench-") as tmp, redis_server() as url:
        os.environ["ORCHESTRATOR_REDIS_URL"] = url
        reset_settings()
        client_app.cache_clear()
        log = Path(tmp) / "worker.log"
        with worker(url, ["benchmarks.workloads"], concurrency=args.concurrency, log_path=log):
            all_sides = make_sides(args.timeout)
            print(f"redis {url}, worker prefork c={args.concurrency}; warming up ...", flush=True)
            for key in selected:
                measure(key, all_sides[key], WARMUP_SIZES[key], 2)
            rows: dict[str, Any] = {}
            for key in selected:
                n = sizes[key]
                rounds = n if key == "W0" else repeat
                print(f"{key}: n={n}, {rounds} rounds per side ...", flush=True)
                times = measure(key, all_sides[key], n, rounds)
                scale = 1000.0 if key == "W0" else 1.0
                raw, orc = summary(times["raw"], scale), summary(times["orchestrator"], scale)
                rows[key] = {
                    "title": TITLES[key].format(n=n), "size": n, "rounds": rounds,
                    "unit": "ms" if key == "W0" else "s", "raw": raw, "orchestrator": orc,
                    "ratio": round(orc["median"] / raw["median"], 3),
                }
            info = machine_info(url)
        problems = log_problems(log)
    report = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.run", *(argv or sys.argv[1:])]),
        "machine": info,
        "config": {"quick": args.quick, "repeat": repeat, "concurrency": args.concurrency, "pool": "prefork",
                   "sizes": {k: sizes[k] for k in selected}, "ratio_of": "median orchestrator / median raw"},
        "workloads": rows,
        "targets": targets(rows),
        "worker_log_problems": problems,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"worker log problems: {problems}\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
