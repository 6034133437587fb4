"""Flows of tests/test_sentinel.py (its worker imports this module with --flows).

Each execution of :func:`mark` is counted in a file, not in Redis: the Redis under test fails
over in the middle, and a count kept there could be lost with the very writes it checks.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from orchestrator import flow, task


@task
def mark(folder: str, key: str, seconds: float) -> str:
    """Append this execution (its process id and start time) to ``folder/key``, then sleep ``seconds``."""
    with (Path(folder) / key).open("a") as out:
        out.write(f"{os.getpid()} {time.time()}\n")
    time.sleep(seconds)
    return key


@flow(name="sentinel-diamond")
def sentinel_diamond(folder: str, marker: str, seconds: float = 1.0) -> str:
    """Two parallel tasks, then one that waits for both (a chord counted across the failover)."""
    left = mark.submit(folder, f"{marker}-left", seconds)
    right = mark.submit(folder, f"{marker}-right", seconds)
    return mark.submit(folder, f"{marker}-last", seconds / 2, wait_for=[left, right])  # type: ignore[no-any-return]


def executions(folder: str | Path, key: str) -> int:
    """How many times the task marking ``key`` really ran."""
    return len(starts(folder, key))


def starts(folder: str | Path, key: str) -> list[float]:
    """When each execution of the task marking ``key`` started."""
    path = Path(folder) / key
    return [float(line.split()[1]) for line in path.read_text().splitlines()] if path.exists() else []
