"""The example flow the README's first command runs end to end."""

from __future__ import annotations

import datetime as dt
import time

from orchestrator import flow, get_run_logger, task


@task(retries=2, retry_delay_seconds=1)
def extract(day: dt.date) -> list[int]:
    """Pretend to read a day's rows."""
    get_run_logger().info("extracting %s", day)
    return [day.day * i for i in range(1, 6)]


@task
def transform(row: int) -> int:
    """One row at a time, in parallel."""
    time.sleep(0.05)
    return row * 10


@task
def audit() -> str:
    """Runs beside the pipeline; load waits for it without taking its result."""
    return "audited"


@task
def load(rows: list[int]) -> int:
    """Sum what the map produced."""
    return sum(rows)


@flow(name="etl", flow_run_name="etl-{day}")
def etl(day: dt.date = dt.date.today) -> int:  # type: ignore[assignment]
    """Extract, fan out per row, load after the audit."""
    rows = extract.submit(day)
    parts = transform.map(rows)
    done = load.submit(parts, wait_for=[audit.submit()])
    return done  # type: ignore[no-any-return]
