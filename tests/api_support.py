"""Helpers for the API tests: a database for the server (SQLite file, or a fresh PostgreSQL
database when ``ORCHESTRATOR_TEST_DATABASE_URL`` is set), polling until something is true,
and the few calls every API test makes (submit a run, wait for it to end, run the CLI)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis

from orchestrator.config.settings import reset_settings
from orchestrator.devstack.databases import fresh_postgres_database
from orchestrator.devstack.localstack import ApiProcess
from orchestrator.runstate import keys
from orchestrator.transport.celery_app import client_app

T = TypeVar("T")
FINAL = {"Completed", "Failed", "TimedOut", "Crashed", "UpstreamFailed", "Skipped", "Cancelled"}


@contextlib.contextmanager
def api_database(folder: Path, admin_url: str | None) -> Iterator[str]:
    """The URL the API under test uses: PostgreSQL when asked for, else an SQLite file."""
    if admin_url:
        with fresh_postgres_database(admin_url) as url:
            yield url
    else:
        yield f"sqlite:///{folder / 'api.db'}"


def eventually(check: Callable[[], T | None], timeout: float = 30.0, interval: float = 0.2, what: str = "") -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"not true after {timeout}s: {what} (last: {last!r})")


def heartbeat_renewed(redis_url: str, flow_run_id: str, timeout: float = 30.0) -> None:
    """Wait until a worker heartbeat has renewed a running task run of ``flow_run_id``.

    The start script gives a task run its first time in the heartbeat set; only the worker's beat
    moves it on. A test that kills a worker "once it has heartbeated" waits for that (about one
    heartbeat interval) instead of sleeping a fixed 2.5 intervals."""
    client: Any = redis.Redis.from_url(redis_url, decode_responses=True)

    def beats() -> dict[str, float]:
        ids = client.smembers(keys.flow_tasks(flow_run_id))
        return {t: float(s) for t in ids if (s := client.zscore(keys.HEARTBEATS, t)) is not None}

    try:
        first = eventually(beats, timeout, 0.05, what=f"a task run of {flow_run_id} in the heartbeat set")
        eventually(
            lambda: any(beats().get(t, 0.0) > at for t, at in first.items()),
            timeout,
            0.05,
            what=f"a worker heartbeat renewing a task run of {flow_run_id}",
        )
    finally:
        client.close()


def wait_final(http: httpx.Client, run_id: str, timeout: float = 60) -> dict[str, Any]:
    """The run once the database shows it final."""

    def final() -> dict[str, Any] | None:
        response = http.get(f"/flow-runs/{run_id}")
        if response.status_code == 200 and response.json()["state"] in FINAL:
            return dict(response.json())
        return None

    return eventually(final, timeout, what=f"flow run {run_id} final in the database")


class HeldEvents:
    """The events appended to the run-state stream from now on, kept for the test to read.

    The API's recorder trims what it has recorded up to the oldest entry any consumer group
    still needs; a group of our own that reads nothing keeps every later entry in the stream
    until :meth:`close` (a ``with`` block) removes the group. A probe that says "no event was
    sent" would otherwise see nothing because the recorder was quick, not because nothing was sent.
    """

    def __init__(self, redis_url: str) -> None:
        self.client: Any = redis.Redis.from_url(redis_url, decode_responses=True)
        self.group = f"test-held-{uuid.uuid4().hex[:8]}"
        self.client.xgroup_create(keys.EVENTS_STREAM, self.group, id="$", mkstream=True)
        self.since = self.client.xinfo_stream(keys.EVENTS_STREAM)["last-generated-id"]

    def events(self) -> list[dict[str, Any]]:
        """Every event appended since this object was made, oldest first (as JSON objects)."""
        entries = self.client.xrange(keys.EVENTS_STREAM, f"({self.since}", "+")
        return [json.loads(fields["event"]) for _, fields in entries]

    def close(self) -> None:
        self.client.xgroup_destroy(keys.EVENTS_STREAM, self.group)
        self.client.close()

    def __enter__(self) -> HeldEvents:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def submit(http: httpx.Client, flow: str, **body: Any) -> dict[str, Any]:
    """Create a run over HTTP (asserting it was created)."""
    response = http.post(f"/flows/{flow}/runs", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def cli(api: ApiProcess, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """Run ``orchestrator ARGS`` against ``api`` as a user would, capturing its output."""
    env = os.environ.copy() | {"ORCHESTRATOR_API_URL": api.url, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@contextlib.contextmanager
def sdk_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Iterator[None]:
    """This process's SDK reads ``env`` (``ORCHESTRATOR_*`` variables) until the block ends.

    Settings and the client's Celery app are cached per process, so they are dropped on the
    way in and again on the way out (the next test reads the environment it restores)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    client_app.cache_clear()
    try:
        yield
    finally:
        monkeypatch.undo()
        reset_settings()
        client_app.cache_clear()
