"""Delays longer than the broker's visibility timeout never run a task twice."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import StateType
from orchestrator.localstack import worker
from orchestrator.store import get_store


@pytest.fixture(scope="module")
def short_visibility_worker(redis_url: str, worker_logs: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A worker whose Redis visibility timeout (2 s) is shorter than the delays (6 s)."""
    with worker(
        redis_url,
        ["tests.flows", "tests.short_visibility"],
        queues="vis",
        concurrency=2,
        name="vis@%h",
        log_path=worker_logs / "vis.log",
        extra_env={"ORCHESTRATOR_VISIBILITY_TIMEOUT_SECONDS": "2"},
    ) as proc:
        yield proc


def test_retry_and_sensor_delays_longer_than_the_visibility_timeout_run_once(
    short_visibility_worker: subprocess.Popen[bytes], worker_logs: Path
) -> None:
    from tests import short_visibility

    run = short_visibility.long_delays.delay()
    assert run.result(timeout=60) == {"retry": "second attempt", "sensor": "found"}
    redis = get_store().redis
    assert redis.get(f"test:executions:fails_once:{run.id}") == "2"
    assert redis.get(f"test:executions:pokes_twice:{run.id}") == "2"
    rows = {r["label"]: r for r in run.task_runs()}
    assert rows["fails_once-0"]["attempts"] == "2"
    assert {r["state"] for r in rows.values()} == {StateType.COMPLETED.value}
    log = (worker_logs / "vis.log").read_text()
    assert "retry: Retry in 6s" in log or "next attempt in 6s" in log  # Celery saw RETRY
