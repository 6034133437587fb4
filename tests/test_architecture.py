"""The structure rules that import-linter cannot see, and the typed events' wire format.

import-linter (``scripts/test.sh``, ``pyproject.toml``) checks who imports whom. These
tests check the rest of docs/architecture.md: no module outside the run-state core
reaches for a store's Redis client, ``import orchestrator`` loads neither Celery nor
Redis, and every event producer and the recorder agree on one wire format.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.runstate import events
from orchestrator.runstate.scripts import LUA_DIR, source

ROOT = Path(__file__).resolve().parent.parent
CORE = ROOT / "orchestrator" / "runstate"


def _product_files() -> list[Path]:
    return [
        path
        for package in ("orchestrator", "api", "workers")
        for path in (ROOT / package).rglob("*.py")
        if CORE not in path.parents and "migrations" not in path.parts
    ]


def test_no_module_outside_the_core_touches_a_redis_client() -> None:
    offenders = []
    for path in _product_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr == "redis":
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == [], f"use a repository of orchestrator.runstate instead of store.redis: {offenders}"


def test_importing_the_sdk_and_running_a_flow_in_process_loads_neither_celery_nor_redis() -> None:
    program = """
import sys
import orchestrator
from orchestrator import flow, task

@task
def double(x: int) -> int:
    return 2 * x

@flow
def twice(n: int) -> int:
    return double(double(n))

assert twice(3) == 12
print(sorted(m for m in ("celery", "kombu", "redis") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"loaded by an in-process run: {out.stdout}"


def test_flowrun_is_still_exported_and_loads_the_fleet_machinery_on_first_use() -> None:
    program = """
import sys
import orchestrator
assert "celery" not in sys.modules
from orchestrator import FlowRun
from orchestrator.runs.handle import FlowRun as Defined
assert FlowRun is Defined
print("redis" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_the_cli_loads_its_heavy_libraries_only_in_the_commands_that_use_them() -> None:
    """Every ``orchestrator`` call pays its imports (the tests make about 150): ``--help`` and the
    command table load no HTTP client, settings, Redis, Celery or JSON Schema; a command imports
    what it uses when it runs (docs/architecture.md)."""
    program = """
import sys
from typer.testing import CliRunner
from orchestrator.cli.main import app
out = CliRunner().invoke(app, ["flow-run", "ls", "--help"])
assert out.exit_code == 0, out.output
heavy = ("httpx", "pydantic_settings", "redis", "celery", "kombu", "jsonschema", "sqlalchemy")
print(sorted(m for m in heavy if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"loaded by the CLI's --help: {out.stdout}"


EXAMPLES: list[events.StreamEvent] = [
    events.flow_run_event("run-1", "Running", ts=1.5, message="", record={"flow": "etl", "name": "etl-1"}),
    events.task_run_event("t-1", "AwaitingRetry", ts=2.0, message="retry 1 of 3", reopen=True, cause="crash detector"),
    events.Renamed("run-1", "nightly", cause="rename_flow_run", ts=3.0),
    events.LogLine("run-1", "t-1", "WARNING", "disk almost full", ts=4.0),
    events.LogLine("run-1", "t-1", "INFO", "connected", ts=4.5, logger="sqlalchemy.engine"),
    events.LogLine("run-1", None, "INFO", "from the body", ts=5.0),
]


@pytest.mark.parametrize("event", EXAMPLES, ids=lambda e: f"{e.kind}")
def test_every_event_reads_back_as_it_was_written(event: events.StreamEvent) -> None:
    assert events.decode(events.encode(event)) == event


def test_events_written_before_the_types_are_read_the_same() -> None:
    """The exact texts workers of the previous release wrote (a stream outlives an upgrade)."""
    old_state = (
        '{"kind": "task_run", "id": "t-9", "state": "Crashed", "ts": 10.0, '
        '"message": "gone", "record": {"worker": "w1"}}'
    )
    old_reopen = (
        '{"kind": "flow_run", "id": "r", "state": "Retrying", "ts": 11.0, "message": "", "record": {}, "reopen": true}'
    )
    old_rename = '{"kind": "flow_run_rename", "id": "r", "state": "", "ts": 12.0, "name": "n", "cause": "c"}'
    old_log = (
        '{"kind": "log", "id": "t", "flow_run_id": "r", "task_run_id": "t", '
        '"level": "INFO", "message": "m", "ts": 13.0}'
    )
    old_completed = '{"kind":"flow_run","id":"r","state":"Completed","ts":14.0,"message":""}'  # the Lua-made one
    assert events.decode(old_state) == events.task_run_event(
        "t-9", "Crashed", ts=10.0, message="gone", record={"worker": "w1"}
    )
    assert events.decode(old_reopen) == events.flow_run_event("r", "Retrying", ts=11.0, reopen=True)
    assert events.decode(old_rename) == events.Renamed("r", "n", "c", 12.0)
    assert events.decode(old_log) == events.LogLine("r", "t", "INFO", "m", 13.0)
    assert events.decode(old_completed) == events.flow_run_event("r", "Completed", ts=14.0)
    for text in (old_state, old_reopen, old_rename, old_log):  # and what we write now reads like them:
        # the same object less a state change's empty message and record, which every decoder
        # (the previous release's too) reads as empty when they are missing
        old = json.loads(text)
        if old["kind"] in ("flow_run", "task_run"):
            old = {k: v for k, v in old.items() if not (k in ("message", "record") and not v)}
        assert json.loads(events.encode(events.decode(text))) == old


@pytest.mark.parametrize("text", ["not json", "[1, 2]", '{"kind": "mystery", "id": "x"}'])
def test_an_entry_that_is_no_event_is_refused_with_a_reason(text: str) -> None:
    with pytest.raises(events.EventFormatError):
        events.decode(text)


def test_every_lua_script_defines_the_state_tables_it_uses() -> None:
    scripts = sorted(LUA_DIR.glob("*.lua"))
    assert scripts, "the core's scripts live in orchestrator/runstate/lua"
    for path in scripts:
        text = source(path.stem)
        for table in ("FAILED", "FINAL"):
            if f"{table}[" in path.read_text():
                assert f"local {table} = {{" in text, f"{path.name} uses {table} without its definition"
