"""A task for tests/test_flower_doors.py: the worker and Flower import it with
ORCHESTRATOR_FLOW_MODULES=tests.flower_flows.

:func:`leave_marker` is what an attacker reaching Flower's task API would run: it writes a
file. A test that finds no marker file after a refused request knows no task ran; the same
task sent through an opened door (or straight to the broker) writes it, which proves the
test would have seen a task that ran.
"""

from __future__ import annotations

from pathlib import Path

from celery import shared_task

MARKER_TASK = "tests.flower_flows.leave_marker"


@shared_task(name=MARKER_TASK, ignore_result=True)
def leave_marker(path: str) -> str:
    """Write ``path`` (the evidence that a task sent through Flower ran on a worker)."""
    Path(path).write_text("ran\n")
    return path
