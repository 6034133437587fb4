"""Compare the orchestrator with hand-written Celery canvas on the same worker.

    .venv/bin/python -m benchmarks.run [--quick] [--repeat N] [--concurrency C] [--only W0,W2]
    .venv/bin/python -m benchmarks.run --scale [--quick]    # the growth table (benchmarks/scale.py)

Starts one private redis-server and one worker (``benchmarks.workloads``), warms up,
runs every workload both ways (alternating which side goes first), prints a table
and writes ``benchmarks/results/latest.json``. See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import redis
from celery.backends.redis import RedisBackend
from celery.result import ResultSet

from benchmarks.private_redis import private_redis
from orchestrator.devstack.localstack import worker

RESULTS = Path(__file__).parent / "results"
RATIO_TARGET = 1.3
# The workloads the ratio target holds for; the others (subflows, runs of their own) are reported.
TARGETED = frozenset({"W0", "W1", "W2", "W3"})
W0_TARGET_MS = 30.0
FULL_SIZES = {"W0": 50, "W1": 500, "W2": 200, "W3": 5000, "W4": 20, "W4L": 20, "W5": 500, "D2": 200, "D3": 5000}
QUICK_SIZES = {"W0": 20, "W1": 50, "W2": 20, "W3": 500, "W4": 5, "W4L": 5, "W5": 50, "D2": 20, "D3": 500}
WARMUP_SIZES = {"W0": 5, "W1": 20, "W2": 10, "W3": 50, "W4": 2, "W4L": 2, "W5": 20, "D2": 5, "D3": 50}
TITLES = {
    "W0": "one task, submit to result (latency, ms)",
    "W1": "fan-out/fan-in: 1 source, {n} parallel, 1 reduce (s)",
    "W2": "chain of {n} dependent tasks (s)",
    "W3": "{n} independent tasks in one flow (s)",
    "W4": "{n} concurrent subflows of 10 tasks each (s)",
    "W4L": "{n} subflows of 10 tasks that compute with their inputs: runs of their own (s)",
    "W5": "W1 with async tasks: 1 source, {n} parallel, 1 reduce (s)",
    "D2": "dynamic: {n} sequential submit(x).result() calls (s)",
    "D3": "dynamic: {n} tasks mapped at once, all results read (s)",
}

Runner = Callable[[int], Any]


@dataclass
class Sides:
    """How to run one workload of size n, and to completion, on each side."""

    raw: Runner
    orchestrator: Runner


def make_sides(timeout: float) -> dict[str, Sides]:
    """Runners for every workload; import the workloads only now (settings are read on import)."""

    # The raw side waits like a plain Celery client, with Celery's Redis backend (only the
    # orchestrator's own client app uses the send-only backend). The worker app's backend is
    # Celery's plus retries on a lost Redis, which only a running worker switches on.
    from benchmarks import workloads as w
    from orchestrator.transport.celery_app import SendOnlyRedisBackend

    backend = w.raw_noop.backend
    if not isinstance(backend, RedisBackend) or isinstance(backend, SendOnlyRedisBackend):
        raise RuntimeError(f"raw client backend is {type(backend)}, expected Celery's RedisBackend")

    def raw(build: Callable[[int], Any]) -> Runner:
        def run(n: int) -> Any:
            result = build(n).apply_async()
            if isinstance(result, ResultSet):  # a group: join the member results
                # interval: the Redis backend MGETs the members once, then sleeps one interval
                # (default 0.5 s) before it listens for results; keep that nap short.
                return result.get(timeout=timeout, interval=0.005)
            # follow_parents=False: by default get() also polls every parent result (the 500
            # chord header results, the 199 earlier links) on each wake-up, slowing the raw side.
            return result.get(timeout=timeout, follow_parents=False)

        return run

    def orc(flow: Any, param: str) -> Runner:
        return lambda n: flow.delay(**{param: n}).result(timeout=timeout)

    return {
        # W0 is one task whatever n is: n only counts samples.
        "W0": Sides(raw(lambda _n: w.raw_w0(1)), orc(w.w0_single, "x")),
        "W1": Sides(raw(w.raw_w1), orc(w.w1_fan, "n")),
        "W1M": Sides(raw(w.raw_w1m), orc(w.w1m_map, "n")),  # the growth table's (benchmarks.scale)
        "W2": Sides(raw(w.raw_w2), orc(w.w2_chain, "n")),
        "W3": Sides(raw(w.raw_w3), orc(w.w3_independent, "n")),
        "W4": Sides(raw(w.raw_w4), orc(w.w4_subflows, "n")),
        "W4L": Sides(raw(w.raw_w4l), orc(w.w4l_subflows, "n")),
        "W5": Sides(raw(w.raw_w5), orc(w.w5_async_fan, "n")),
        "D2": Sides(lambda n: w.raw_d2(n, timeout), orc(w.d2_sequential, "n")),
        "D3": Sides(raw(w.raw_d3), orc(w.d3_many, "n")),
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
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if ln.startswith("model name")), "")

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    return {
        "platform": platform.platform(),
        "cpu": cpu or platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "celery": metadata.version("celery"),
        "kombu": metadata.version("kombu"),
        "redis_py": metadata.version("redis"),
        "redis_server": redis.Redis.from_url(redis_url).info("server")["redis_version"],
        "git_commit": git("rev-parse", "--short", "HEAD"),
        # uncommitted changes to the measured code, if any (the figures are then not of git_commit)
        "git_dirty": git("status", "--porcelain", "--", "orchestrator", "workers").splitlines(),
    }


def log_problems(log: Path) -> dict[str, Any]:
    """Count worker log lines that signal trouble (there should be none); keep the first few."""
    words = ("ERROR", "CRITICAL", "Traceback", "WARNING")
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    bad = [ln for ln in lines if any(w in ln for w in words)]
    return {w: sum(w in ln for ln in bad) for w in words} | {"first": [ln[:300] for ln in bad[:5]]}


@contextlib.contextmanager
def show_log_on_error(log: Path, lines: int = 40) -> Iterator[None]:
    """If the block fails, print the end of the worker log (it lives in a temp dir)."""
    try:
        yield
    except BaseException:
        tail = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
        print("--- worker log (end) ---", *tail, "---", sep="\n", file=sys.stderr)
        raise


def print_table(report: dict[str, Any]) -> None:
    """The human-readable table: median per side, ratio, target."""
    print(f"\n{'workload':<58} {'raw':>10} {'orch':>10} {'ratio':>7}  target")
    for key, row in report["workloads"].items():
        unit = "ms" if key == "W0" else "s"
        raw, orc = row["raw"]["median"], row["orchestrator"]["median"]
        met = ("ok" if row["ratio"] <= RATIO_TARGET else "MISSED") if key in TARGETED else "(reported)"
        print(f"{key} {row['title']:<55} {raw:>8.3f}{unit:<2} {orc:>8.3f}{unit:<2} {row['ratio']:>7.2f}  {met}")
        if key == "W0":
            print(f"{'   p90':<58} {row['raw']['p90']:>8.3f}ms {row['orchestrator']['p90']:>8.3f}ms")
    for check in report["targets"]["checks"]:
        print(f"  {'met ' if check['met'] else 'MISS'} {check['name']}: {check['value']} (limit {check['limit']})")


def targets(rows: dict[str, Any]) -> dict[str, Any]:
    """Every ratio of W0-W3 <= 1.3 and W0 orchestrator median latency <= 30 ms."""
    checks = [
        {
            "name": f"{k} ratio orchestrator/raw",
            "value": r["ratio"],
            "limit": RATIO_TARGET,
            "met": r["ratio"] <= RATIO_TARGET,
        }
        for k, r in rows.items()
        if k in TARGETED
    ]
    if "W0" in rows:
        w0 = rows["W0"]["orchestrator"]["median"]
        checks.append(
            {"name": "W0 orchestrator median latency ms", "value": w0, "limit": W0_TARGET_MS, "met": w0 <= W0_TARGET_MS}
        )
    return {
        "ratio_max": RATIO_TARGET,
        "w0_latency_max_ms": W0_TARGET_MS,
        "checks": checks,
        "all_met": all(c["met"] for c in checks),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a fast check")
    parser.add_argument("--repeat", type=int, default=None, help="runs per side, W0 aside (default 5, quick 2)")
    parser.add_argument("--concurrency", type=int, default=2, help="prefork processes of the worker")
    parser.add_argument("--only", default=",".join(FULL_SIZES), help="comma-separated workloads to run")
    parser.add_argument("--timeout", type=float, default=600, help="seconds one run may take")
    parser.add_argument("--output", type=Path, default=None, help="default results/latest.json (quick.json)")
    parser.add_argument(
        "--scale", action="store_true", help="the growth table instead (benchmarks/scale.py; about 20 minutes)"
    )
    args = parser.parse_args(argv)
    args.only = [k.strip().upper() for k in args.only.split(",") if k.strip()]
    if not args.only or set(args.only) - set(FULL_SIZES):
        parser.error(f"--only takes a comma-separated subset of {', '.join(FULL_SIZES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop redis and the worker on TERM too
    if args.scale:
        from benchmarks import scale

        return scale.main(args.quick, args.timeout, args.concurrency, args.output)
    load_start = round(os.getloadavg()[0], 2)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    repeat = args.repeat or (2 if args.quick else 5)
    selected: list[str] = args.only
    for name in ("ORCHESTRATOR_BROKER_URL", "ORCHESTRATOR_RESULT_BACKEND_URL", "ORCHESTRATOR_FLOW_MODULES"):
        os.environ.pop(name, None)  # both sides must use the private server only
    with tempfile.TemporaryDirectory(prefix="orc-bench-") as tmp, private_redis() as url:
        log = Path(tmp) / "worker.log"
        with worker(url, ["benchmarks.workloads"], concurrency=args.concurrency, log_path=log), show_log_on_error(log):
            info = machine_info(url)  # now: git_dirty must describe the code the worker imported
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
                    "title": TITLES[key].format(n=n),
                    "size": n,
                    "rounds": rounds,
                    "unit": "ms" if key == "W0" else "s",
                    "raw": raw,
                    "orchestrator": orc,
                    "ratio": round(orc["median"] / raw["median"], 3),
                }
            # read before the worker stops: localstack TERMs the whole process group, and the
            # main process then logs its pool children's exit as errors.
            problems = log_problems(log)
    report = {
        "timestamp": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, "-m", "benchmarks.run", *(argv or sys.argv[1:])]),
        "machine": info,
        "config": {
            "quick": args.quick,
            "repeat": repeat,
            "concurrency": args.concurrency,
            "pool": "prefork",
            "sizes": {k: sizes[k] for k in selected},
            "ratio_of": "median orchestrator / median raw",
        },
        "workloads": rows,
        "targets": targets(rows),
        "worker_log_problems": problems,
        # other processes on the machine skew the figures: compare with the cores in use
        "load_average_1min": {"start": load_start, "end": round(os.getloadavg()[0], 2)},
    }
    if args.output is None:  # a quick check never overwrites the full figures
        args.output = RESULTS / ("quick.json" if args.quick else "latest.json")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"worker log problems: {problems}\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
