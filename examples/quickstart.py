"""The example flow the README's first command runs end to end: a fan-out, a retry, a sensor."""

from __future__ import annotations

import datetime as dt
import time

from orchestrator import flow, get_run_logger, task
from orchestrator.runtime.context import current_run
from orchestrator.runtime.signals import RETRY


@task(retries=2, retry_delay_seconds=1)
def extract(day: dt.date) -> list[int]:
    """Pretend to read a day's rows; the first attempt fails, as flaky sources do."""
    run = current_run()
    if run is not None and run.attempt == 1:
        raise ConnectionError("source not reachable (simulated); retrying in 1 s")
    get_run_logger().info("extracting %s", day)
    return [day.day * i for i in range(1, 6)]


@task(poke_timeout_seconds=60)
def export_ready(day: dt.date, not_before: float) -> str:
    """A sensor: asks to be poked again (without holding a worker slot) until the export is there."""
    if time.time() < not_before:
        raise RETRY(f"export of {day} not there yet", delay=1)
    return f"export-{day}"


@task
def transform(row: int) -> int:
    """One row at a time, in parallel."""
    time.sleep(0.05)
    return row * 10


@task
def load(rows: list[int], export: str) -> int:
    """Sum what the map produced, once the export is ready."""
    get_run_logger().info("loading %d rows next to %s", len(rows), export)
    return sum(rows)


@flow(name="etl", flow_run_name="etl-{day}")
def etl(day: dt.date = dt.date.today, wait_seconds: float = 2.0) -> int:  # type: ignore[assignment]
    """Extract (retried), fan out per row, and load once the sensor sees the export."""
    rows = extract.submit(day)
    parts = transform.map(rows)
    export = export_ready.submit(day, time.time() + wait_seconds)
    return load.submit(parts, export)  # type: ignore[no-any-return]
