"""The orchestrator command as a user types it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from orchestrator.devstack.localstack import free_port, stop_process, wait_for_worker

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "orchestrator.cli"]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env or os.environ.copy()
    )


def test_plan_shows_graph_and_canvas() -> None:
    out = run_cli("plan", "examples.quickstart:etl", "-p", "day=2026-01-02")
    assert out.returncode == 0, out.stderr
    assert "extract-0" in out.stdout and "chord(" in out.stdout and "load-0" in out.stdout


def test_plan_json() -> None:
    out = run_cli("plan", "tests.flows:non_sp_flow", "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["mode"] == "static"
    assert data["canvas"] == ["group", ["sleepy-0", "sleepy-1"]]
    assert data["joins"] == {"sleepy-2": 2, "sleepy-3": 1}


def test_plan_reports_dynamic_flows_and_bad_input() -> None:
    out = run_cli("plan", "tests.flows:dynamic_flow", "--json")
    assert json.loads(out.stdout)["mode"] == "dynamic"
    bad = run_cli("plan", "tests.flows:chain_flow", "-p", "nope=1")
    assert bad.returncode == 2
    assert "no parameter 'nope'" in bad.stdout
    typed = run_cli("plan", "examples.quickstart:etl", "-p", "day=not-a-date")
    assert typed.returncode == 2 and "day" in typed.stdout


def test_worker_start_imports_flows_and_passes_celery_options(redis_url: str, tmp_path: Path) -> None:
    env = os.environ.copy() | {"ORCHESTRATOR_REDIS_URL": redis_url}
    queue = f"cli-{free_port()}"
    log = open(tmp_path / "cli-worker.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            *CLI,
            "worker",
            "start",
            "--flows",
            "tests.flows",
            "-Q",
            queue,
            "-c",
            "1",
            "-n",
            "cli@%h",
            "--without-gossip",
            "--loglevel",
            "INFO",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_worker(redis_url, proc, queue)
        from tests import flows

        run = flows.chain_flow.apply_async(parameters={"x": 2}, queue=queue)
        assert run.result(timeout=30) == 8
        assert {r["worker"].split("@")[0] for r in run.task_runs()} == {"cli"}
    finally:
        stop_process(proc)
        log.close()
    assert "tests.flows.inc" in (tmp_path / "cli-worker.log").read_text()
