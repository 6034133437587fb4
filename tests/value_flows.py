"""Flow bodies that use a task's value in ways a tracer cannot plan (tests/test_planned_values.py).

Each must run in dynamic mode (or, for a subflow, as a run of its own) and give the value
Python gives, never fail at planning with an internal type's name.
"""

from __future__ import annotations

from typing import Any

from orchestrator import flow, task

QUEUE = "values"


@task
def number(x: int) -> int:
    return x


@task
def word(text: str) -> str:
    return text


@flow(queue=QUEUE)
def modulo(x: int) -> int:
    return number(x) % 2  # type: ignore[operator, no-any-return]


@flow(queue=QUEUE)
def checks_its_type(x: int) -> str:
    value = number(x)
    assert isinstance(value, int), "a task's value is an int"
    return "int"


@flow(queue=QUEUE)
def formats(x: int) -> str:
    return word(f"row-{number(x)}")  # type: ignore[return-value]


@flow(queue=QUEUE)
def uses_an_attribute(text: str) -> str:
    return word(text).upper()  # type: ignore[attr-defined, no-any-return]


@flow(queue=QUEUE)
def compares(x: int) -> str:
    return "five" if number(x) == 5 else "other"


@flow(queue=QUEUE)
def parity(x: int) -> int:
    return number(x % 2)  # type: ignore[return-value]


@flow(queue=QUEUE)
def parent_of_parity(x: int) -> dict[str, Any]:
    """A subflow computes % on its input: a run of its own; the parent stays compiled."""
    return {"parity": parity(number(x))}
