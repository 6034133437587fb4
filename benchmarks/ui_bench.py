"""The web UI on a large database: the run list's server time, and a 5,000-task-run graph in a real browser.

    .venv/bin/python -m benchmarks.ui_bench [--flow-runs 100000] [--task-runs 200000] [--repeat 10]
        [--graph-tasks 5000] [--postgres-url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--only sqlite]

1. **Run list** (issue 20: under 300 ms server time at 100,000 flow runs): a fresh SQLite file
   (and a fresh PostgreSQL database created next to ``--postgres-url``'s and dropped at the
   end, skipped with a message when it does not answer) is migrated and seeded by
   ``benchmarks.db_seed``; the real API (``python -m api.server``, services off) answers the
   UI's list page ``/ui`` and the API's ``/api/flow-runs`` with each filter of :data:`LISTS`,
   ``--repeat`` times after two warm-up calls. Server time: the ``Server-Timing`` header.
2. **Graph** (a run of 5,000 task runs renders without freezing the page): two runs are
   written into the same database, each with a plan of ``--graph-tasks`` task nodes and as
   many task runs, half Completed and half Running: ``map`` (one source, a static map over
   N items, one reducer: the map folds into one box) and ``wide`` (N distinct tasks over 50
   levels, none folded: N boxes, the worst case). Headless Chromium (Debian's, as the UI
   tests) opens each run's page; the page's own timing of the drawing
   (``window.__graphDrawMs``, around the one pass that builds the SVG), the longest task the
   browser saw (a ``longtask`` PerformanceObserver installed before the page's scripts),
   the time from navigation to the graph on screen, and ``graph.json``'s server time.

Nothing here asserts a time. Results go to ``benchmarks/results/ui_bench.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Engine, insert, select

from api.db import engine_for, migrate
from api.models import Deployment, FlowRun, TaskRun
from benchmarks.db_seed import seed
from benchmarks.db_targets import on_each_database
from benchmarks.http_timing import percentile, timed_gets
from orchestrator.devstack.localstack import api_server

RESULTS = Path(__file__).parent / "results"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"  # a fresh database is made next to it
TARGET_MS = 300.0
LONGTASK_OBSERVER = """
window.__longest = 0; window.__longtasks = 0;
new PerformanceObserver((list) => { for (const e of list.getEntries()) {
  window.__longtasks += 1; window.__longest = Math.max(window.__longest, e.duration); } })
  .observe({ type: "longtask", buffered: true });
"""


def lists(deployment: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """The list requests timed, by name: (path, query parameters)."""
    week_ago = (dt.datetime.now(dt.UTC) - dt.timedelta(days=7)).replace(microsecond=0)
    ui_since = week_ago.strftime("%Y-%m-%dT%H:%M")
    return {
        "ui_first_page": ("/ui", {}),
        "ui_state_failed": ("/ui", {"state": "Failed"}),
        "ui_deployment": ("/ui", {"deployment": deployment}),
        "ui_since_week": ("/ui", {"since": ui_since}),
        "ui_deep_page": ("/ui", {"offset": 50_000}),
        "api_first_page": ("/api/flow-runs", {}),
        "api_deployment": ("/api/flow-runs", {"deployment": deployment}),
        "api_deployment_since": ("/api/flow-runs", {"deployment": deployment, "since": week_ago.isoformat()}),
    }


def time_get(http: httpx.Client, path: str, params: dict[str, Any], repeat: int) -> dict[str, Any]:
    """Median and p90 server time (and the client's median) of one request."""
    timed = timed_gets(http, path, params, repeat)
    return {
        "server_ms_median": round(statistics.median(timed.server_ms), 1),
        "server_ms_p90": round(percentile(timed.server_ms, 0.9), 1),
        "client_ms_median": round(statistics.median(timed.client_ms), 1),
        "bytes": len(timed.response.content),
    }


def graph_run(engine: Engine, shape: str, n: int) -> str:
    """A finished-looking static run with a plan of ``n`` task nodes and their task runs (half still Running)."""
    run_id = str(uuid.uuid4())
    now = time.time()
    nodes: list[dict[str, Any]] = []
    if shape == "map":
        source = f"{run_id}-src"
        nodes.append({"id": source, "kind": "task", "name": "bench.source", "label": "source-0", "upstream": []})
        items = [f"{run_id}-item-{i}" for i in range(n - 2)]
        nodes += [
            {"id": i, "kind": "task", "name": "bench.work", "label": f"work-{k}", "upstream": [source]}
            for k, i in enumerate(items)
        ]
        nodes.append(
            {"id": f"{run_id}-sum", "kind": "task", "name": "bench.total", "label": "total-0", "upstream": items}
        )
    else:  # wide: 50 levels of n/50 distinct tasks, each waiting for one of the level before
        per = max(n // 50, 1)
        for level in range(50):
            for k in range(per):
                up = [f"{run_id}-{level - 1}-{(k * 7) % per}"] if level else []
                name = f"bench.step_{level}_{k}"
                nodes.append(
                    {"id": f"{run_id}-{level}-{k}", "kind": "task", "name": name, "label": f"{name}-0", "upstream": up}
                )
    for node in nodes:
        node["flow_run_id"] = run_id
    with engine.begin() as connection:
        connection.execute(
            insert(FlowRun.__table__),  # type: ignore[attr-defined]
            [
                {
                    "id": run_id,
                    "flow_name": f"bench-graph-{shape}",
                    "name": f"graph-{shape}-{n}",
                    "state": "Running",
                    "state_message": "",
                    "root_id": run_id,
                    "queue": "default",
                    "parameters": {},
                    "mode": "static",
                    "attempt": 1,
                    "created": now,
                    "started": now,
                    "dispatched": True,
                    "updated": now,
                    "result_refs": [],
                    "plan": {"nodes": nodes},
                    "renamed": False,
                }
            ],
        )
        rows = [
            {
                "id": node["id"],
                "flow_run_id": run_id,
                "root_id": run_id,
                "task_name": node["name"],
                "label": node["label"],
                "state": "Completed" if i % 2 else "Running",
                "state_message": "",
                "worker": f"bench@host{i % 4}",
                "attempts": 1,
                "created": now + i / 1000,
                "started": now + i / 1000,
                "ended": now + i / 1000 + 0.5 if i % 2 else None,
                "updated": now,
                "cached": False,
                "cache_key": "",
                "error_type": "",
                "traceback": "",
            }
            for i, node in enumerate(nodes)
        ]
        for i in range(0, len(rows), 2000):
            connection.execute(insert(TaskRun.__table__), rows[i : i + 2000])  # type: ignore[attr-defined]
    return run_id


def browser() -> Any:
    """Debian's headless Chromium, as tests/test_ui.py starts it (None when it is not installed)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (binary and driver_path):
        return None
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_window_size(1280, 900)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": LONGTASK_OBSERVER})
    return driver


def time_graph(driver: Any, site: str, http: httpx.Client, run_id: str, repeat: int) -> dict[str, Any]:
    """The graph of one run: graph.json's server time, and in the browser the drawing and the longest task."""
    layout = time_get(http, f"/ui/runs/{run_id}/graph.json", {}, repeat)
    draws: list[float] = []
    longest: list[float] = []
    to_screen: list[float] = []
    boxes = 0
    for _ in range(3):
        began = time.perf_counter()
        driver.get(f"{site}/ui/runs/{run_id}")
        deadline = time.monotonic() + 120
        while driver.execute_script("return window.__graphDrawMs === undefined;"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the graph of {run_id} was not drawn in 120 s")
            time.sleep(0.02)
        to_screen.append((time.perf_counter() - began) * 1000)
        time.sleep(3)  # a poll or two of the live updates, and the timeline, inside the observed window
        found = driver.execute_script(
            "return [window.__graphDrawMs, window.__longest, document.querySelectorAll('#graph g.node').length];"
        )
        draws.append(float(found[0]))
        longest.append(float(found[1]))
        boxes = int(found[2])
    return {
        "graph_json": layout,
        "boxes": boxes,
        "draw_ms_median": round(statistics.median(draws), 1),
        "longest_task_ms_max": round(max(longest), 1),
        "navigation_to_graph_ms_median": round(statistics.median(to_screen), 1),
    }


def bench_database(label: str, url: str, redis_url: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    migrate(url)
    engine = engine_for(url)
    seeded = seed(engine, args.flow_runs, args.task_runs)
    with engine.connect() as connection:
        deployment = connection.execute(select(Deployment.name).order_by(Deployment.name)).scalars().first() or ""
    graphs = {shape: graph_run(engine, shape, args.graph_tasks) for shape in ("map", "wide")}
    print(
        f"{label}: seeded {seeded.flow_runs:,} flow runs, {seeded.task_runs:,} task runs in {seeded.seconds} s",
        flush=True,
    )
    out: dict[str, Any] = {"seeded": vars(seeded), "lists": {}, "graphs": {}}
    services_off = {"ORCHESTRATOR_API_SERVICES": "false"}
    with (
        api_server(redis_url, url, log_path=folder / f"api-{label}.log", extra_env=services_off) as api,
        httpx.Client(base_url=f"http://127.0.0.1:{api.port}", timeout=120) as http,
    ):
        for name, (path, params) in lists(deployment).items():
            found = time_get(http, path, params, args.repeat)
            out["lists"][name] = found
            print(
                f"  {name:<22} server {found['server_ms_median']:>7.1f} ms (p90 {found['server_ms_p90']:>7.1f})"
                f"  client {found['client_ms_median']:>7.1f} ms",
                flush=True,
            )
        driver = browser()
        if driver is None:
            out["graphs"] = {"skipped": "chromium and chromedriver are not installed (scripts/setup.sh --dev)"}
        else:
            try:
                for shape, run_id in graphs.items():
                    found = time_graph(driver, f"http://127.0.0.1:{api.port}", http, run_id, args.repeat)
                    out["graphs"][shape] = found
                    print(
                        f"  graph {shape:<5} {args.graph_tasks} task runs -> {found['boxes']} boxes: graph.json "
                        f"{found['graph_json']['server_ms_median']} ms server, draw {found['draw_ms_median']} ms, "
                        f"longest task {found['longest_task_ms_max']} ms, on screen after "
                        f"{found['navigation_to_graph_ms_median']} ms",
                        flush=True,
                    )
            finally:
                driver.quit()
    engine.dispose()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flow-runs", type=int, default=100_000)
    parser.add_argument("--task-runs", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--graph-tasks", type=int, default=5000)
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--only", choices=["sqlite", "postgresql"], default=None)
    parser.add_argument("--output", type=Path, default=RESULTS / "ui_bench.json")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="orc-ui-bench-"))
    results: dict[str, Any] = {
        "measured_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M"),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "flow_runs": args.flow_runs,
        "task_runs": args.task_runs,
        "graph_tasks": args.graph_tasks,
        "target_server_ms": TARGET_MS,
    }
    results["databases"] = on_each_database(bench_database, args, folder, sqlite_file="ui.db", prefix="orc_ui_bench")
    for label, found in results["databases"].items():
        if "lists" in found:
            slow = [q for q, v in found["lists"].items() if v["server_ms_median"] > TARGET_MS]
            verdict = "yes" if not slow else "no: " + ", ".join(slow)
            print(f"{label}: every list under {TARGET_MS:.0f} ms server time: {verdict}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"results in {args.output}; logs in {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
