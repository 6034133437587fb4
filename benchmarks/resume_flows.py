"""The flow the resume benchmark kills mid-body (benchmarks/resume_bench.py)."""

from __future__ import annotations

import time

from orchestrator import flow, task
from orchestrator.runstate.store import get_store

BODIES = "resume-bodies"
STEPS = "resume-steps"


def begun_key(run_marker: str) -> str:
    """Hash: step index -> how many executions of it began (the benchmark checks: each once)."""
    return f"bench:resume:begun:{run_marker}"


@task(queue=STEPS)
def resume_step(run_marker: str, i: int, seconds: float) -> int:
    """One call of the body: counts itself, then works for ``seconds``."""
    get_store().redis.hincrby(begun_key(run_marker), str(i), 1)
    time.sleep(seconds)
    return i


@flow(name="bench-resume-calls", queue=BODIES)
def resume_calls(run_marker: str, n: int = 200, seconds: float = 0.02) -> int:
    """n calls one after another, each result read before the next is sent."""
    total = 0
    for i in range(n):
        total += resume_step.submit(run_marker, i, seconds).result()
    return total
