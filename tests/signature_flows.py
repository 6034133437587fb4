"""Flows and tasks with every kind of Python signature (``tests/test_signatures.py``)."""

from __future__ import annotations

from orchestrator import flow, task

QUEUE = "signatures"


@task
def gather(*parts: int) -> int:
    return sum(parts)


@task
def scaled(x: int, /, *, scale: int = 2, **extra: int) -> int:
    return x * scale + sum(extra.values())


@flow(name="signatures-wired", queue=QUEUE)
def wired(a: int, b: int) -> int:
    """Only wires tasks: compiled to canvas."""
    total = gather.submit(a, b, 10)
    return scaled.submit(total, scale=3, bonus=1)  # type: ignore[return-value]


@flow(name="signatures-computing", queue=QUEUE)
def computing(a: int, b: int) -> int:
    """Reads a task's value: runs as a dynamic body."""
    total = gather(a, b)
    return scaled(total + 1, bonus=2)


@flow(name="signatures-variadic", queue=QUEUE)
def variadic(*numbers: int, **named: int) -> int:
    """A flow that takes any positionals and keywords."""
    return gather.submit(*numbers, *named.values())  # type: ignore[return-value]
