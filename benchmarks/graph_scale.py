"""How the cost of reading a run's graph, task runs and history grows with the run's size.

    .venv/bin/python -m benchmarks.graph_scale [--n 2000] [--factor 10] [--repeat 3] [--quick]

Starts a private redis-server, one worker (``benchmarks.graph_flows``) and the API
(``python -m api.server`` on a fresh SQLite file), runs ``bench-graph-map`` (a static map
over n items and a fan-in) at n and at factor x n items, waits until the database holds
every task run Completed, then times over HTTP, for each size:

- ``graph_first``: ``GET /flow-runs/{id}/graph`` with its defaults (what a UI asks first);
- ``graph_all``: the whole graph, every page at the largest page size, following
  ``next_offset`` (an API without paging answers everything in one response);
- ``task_runs_all`` and ``states_all``: every page of ``/task-runs`` and ``/states``,
  following the ``X-Next-Offset`` header.

Each figure is the median of ``--repeat`` rounds; bytes are response body sizes. The
ratio of the large size to the small one tells the growth: about ``factor`` (10) is
linear, about ``factor`` squared (100) is quadratic. Nothing here asserts a time.
Results go to ``benchmarks/results/graph.json`` (``graph-quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from benchmarks.private_redis import private_redis
from orchestrator.devstack.localstack import api_server, worker

RESULTS = Path(__file__).parent / "results"
FLOW = "bench-graph-map"
PAGE_MAX = 5000  # the largest `limit` the routes accept
FINAL = {"Completed", "Failed", "TimedOut", "Crashed", "UpstreamFailed", "Skipped", "Cancelled"}

Reader = Callable[[httpx.Client, str], tuple[int, int, int]]  # -> (items, bytes, requests)


def wait_recorded(http: httpx.Client, db_url: str, run_id: str, tasks: int, timeout: float) -> None:
    """Block until the run is final over HTTP and the database holds all its task runs Completed."""
    engine = create_engine(db_url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            state = http.get(f"/flow-runs/{run_id}").json().get("state")
            with engine.connect() as c:
                done = c.execute(
                    text(  # the tree's task runs, as api.models.in_run_tree finds them: a root's own keep root_id ''
                        "SELECT count(*) FROM task_run WHERE (flow_run_id = :r OR root_id = :r) AND state = 'Completed'"
                    ),
                    {"r": run_id},
                ).scalar_one()
            if state in FINAL and done >= tasks:
                if state != "Completed":
                    raise RuntimeError(f"run {run_id} ended {state}; see the worker log")
                return
            time.sleep(1.0)
    finally:
        engine.dispose()
    raise TimeoutError(f"run {run_id} not recorded with {tasks} completed task runs within {timeout}s")


def graph_first(http: httpx.Client, run_id: str) -> tuple[int, int, int]:
    """The graph's first page with the route's defaults."""
    response = http.get(f"/flow-runs/{run_id}/graph")
    response.raise_for_status()
    return len(response.json()["nodes"]), len(response.content), 1


def graph_all(http: httpx.Client, run_id: str) -> tuple[int, int, int]:
    """Every node of the graph, page by page (one page from an API that does not page)."""
    offset: int | None = 0
    items = size = requests = 0
    while offset is not None:
        response = http.get(f"/flow-runs/{run_id}/graph", params={"limit": PAGE_MAX, "offset": offset})
        response.raise_for_status()
        body = response.json()
        items, size, requests = items + len(body["nodes"]), size + len(response.content), requests + 1
        offset = body.get("next_offset")
    return items, size, requests


def list_all(route: str) -> Reader:
    """A reader of every page of a list route that pages with the X-Next-Offset header."""

    def read(http: httpx.Client, run_id: str) -> tuple[int, int, int]:
        offset: str | None = "0"
        items = size = requests = 0
        while offset is not None:
            response = http.get(f"/flow-runs/{run_id}/{route}", params={"limit": PAGE_MAX, "offset": offset})
            response.raise_for_status()
            items, size, requests = items + len(response.json()), size + len(response.content), requests + 1
            offset = response.headers.get("X-Next-Offset")
        return items, size, requests

    return read


READERS: dict[str, Reader] = {
    "graph_first": graph_first,
    "graph_all": graph_all,
    "task_runs_all": list_all("task-runs"),
    "states_all": list_all("states"),
}


def measure(http: httpx.Client, run_id: str, repeat: int) -> dict[str, dict[str, Any]]:
    """Median seconds (and items, bytes, requests of the last round) of every reader."""
    out: dict[str, dict[str, Any]] = {}
    for name, reader in READERS.items():
        times: list[float] = []
        for _ in range(repeat):
            start = time.perf_counter()
            items, size, requests = reader(http, run_id)
            times.append(time.perf_counter() - start)
        out[name] = {
            "median_s": round(statistics.median(times), 4),
            "best_s": round(min(times), 4),
            "items": items,
            "bytes": size,
            "requests": requests,
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="items of the small map (the large one: factor x n)")
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900, help="seconds for one run to be recorded")
    parser.add_argument("--quick", action="store_true", help="n = 200")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.n = 200
    output = args.output or RESULTS / ("graph-quick.json" if args.quick else "graph.json")
    folder = Path(tempfile.mkdtemp(prefix="orc-graph-bench-"))
    db_url = f"sqlite:///{folder / 'bench.db'}"
    sizes = [args.n, args.n * args.factor]
    results: dict[str, Any] = {
        "measured_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "sizes": sizes,
        "repeat": args.repeat,
        "runs": {},
    }
    with (
        private_redis() as redis_url,
        worker(redis_url, ["benchmarks.graph_flows"], concurrency=args.concurrency, log_path=folder / "worker.log"),
        api_server(redis_url, db_url, log_path=folder / "api.log") as api,
        httpx.Client(base_url=api.url, timeout=600) as http,
    ):
        for size in sizes:
            created = http.post(f"/flows/{FLOW}/runs", json={"parameters": {"n": size}})
            created.raise_for_status()
            run_id = created.json()["id"]
            started = time.perf_counter()
            wait_recorded(http, db_url, run_id, size + 1, args.timeout)
            print(f"n={size}: run {run_id} recorded in {time.perf_counter() - started:.1f} s", flush=True)
            results["runs"][str(size)] = measure(http, run_id, args.repeat)
    small, large = (results["runs"][str(s)] for s in sizes)
    results["ratios"] = {
        name: round(large[name]["median_s"] / max(small[name]["median_s"], 1e-9), 1) for name in READERS
    }
    print(f"\n{'reader':<14} {'n=' + str(sizes[0]):>22} {'n=' + str(sizes[1]):>24} {'ratio':>7}")
    for name in READERS:
        a, b = small[name], large[name]
        print(
            f"{name:<14} {a['median_s']:>8.3f} s {a['bytes'] / 1e6:>6.2f} MB {a['requests']:>3} req"
            f" {b['median_s']:>8.3f} s {b['bytes'] / 1e6:>6.2f} MB {b['requests']:>3} req {results['ratios'][name]:>7}"
        )
    print(f"\nlinear is about {args.factor}x, quadratic about {args.factor**2}x; logs in {folder}")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
