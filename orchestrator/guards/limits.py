"""Limits on what comes in from outside: how deeply a value may nest, and what a queue may be called.

Checked at every door (the HTTP API, deployments, ``.delay()``, the CLI's ``-p``, the
decorators, the worker's ``-Q``), each check by one function here, so the doors cannot
disagree.

Nesting: pydantic's serializer gives up at 255 levels and Python's stack at about 1000,
and a run row the API cannot serialize made ``GET /api/flow-runs`` answer 500 for
everyone. Values are measured here with an explicit stack, never by recursion, so a
deep value is refused before anything recursive meets it.

Queues: a Celery queue on Redis *is* a Redis key (a list), so a queue named after one of
the product's keys (``orc:frdone:<run id>``, ``orc:events``) or Celery's and kombu's own
(``unacked``, ``_kombu.binding.*``, ``celery-task-meta-*``) would push start messages
onto them.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.runstate.keys import PREFIX

MAX_NESTING = 32  # levels of lists/objects inside one parameter value
MEASURE_UP_TO = 10_000  # deeper than this (or a cycle) is reported as "more than" this
MAX_QUEUE_LENGTH = 100
QUEUE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RESERVED_QUEUE_PREFIXES = ("celery", "unacked")  # Celery's result keys and queues; kombu's unacked set (and
# kombu's _kombu.binding.* keys start with '_', which no queue name may)
RESERVED_QUEUE_SUFFIXES = (".pidbox",)  # kombu's control and reply queues
QUEUE_RULE = (
    f"a queue name is 1-{MAX_QUEUE_LENGTH} letters, digits, '.', '_' or '-', starting with a letter or digit "
    f"(no ':' or spaces: a queue is a Redis key, and ':' reaches the product's own {PREFIX}:* keys), "
    "and not a name of Celery's or kombu's own (starting with 'celery' or 'unacked', or ending in '.pidbox')"
)


_SHORT = reprlib.Repr()
_SHORT.maxstring = 120  # a long name is shown cut, not in full


def _children(value: Any) -> Iterable[Any] | None:
    """The items of a container (a dict's values), or None for a scalar."""
    if isinstance(value, Mapping):
        return value.values()
    if isinstance(value, (list, tuple, set, frozenset)):
        return value
    return None


def nesting_depth(value: Any, up_to: int = MEASURE_UP_TO) -> int:
    """How many containers deep ``value`` goes (a scalar: 0, ``[1]``: 1, ``{"a": [1]}``: 2).

    Walked with an explicit stack, so any depth is measured without recursion; the walk
    stops once it passes ``up_to`` (which also ends it on a value that contains itself).
    """
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = _children(item)
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > up_to:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def depth_problem(name: str, value: Any, limit: int = MAX_NESTING) -> str | None:
    """Why parameter ``name`` nests too deeply, or None when it does not."""
    depth = nesting_depth(value)
    if depth <= limit:
        return None
    found = f"more than {MEASURE_UP_TO}" if depth > MEASURE_UP_TO else str(depth)
    return (
        f"parameter {name!r} is nested {found} levels deep; at most {limit} levels of lists and objects "
        "are accepted: flatten it, or pass a reference to the data (a path, a key) instead"
    )


def depth_problems(parameters: Mapping[str, Any], limit: int = MAX_NESTING) -> dict[str, str]:
    """The parameters that nest too deeply, each with why."""
    found = {name: depth_problem(name, value, limit) for name, value in parameters.items()}
    return {name: problem for name, problem in found.items() if problem}


def holds_key(value: Any, key: str, values: tuple[Any, ...] | None = None) -> bool:
    """Whether an object anywhere inside JSON data ``value`` has the key ``key`` (with one of ``values``
    under it, when given), walked without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping) and key in item and (values is None or item[key] in values):
            return True
        children = _children(item)
        if children is not None:
            stack.extend(children)
    return False


def shown_parameters(parameters: Mapping[str, Any] | None, limit: int = MAX_NESTING) -> dict[str, Any]:
    """Parameters as the API shows them: one nested too deeply to serialize is replaced by a note.

    Rows stored before the limit existed (or written past it by a process with Redis
    access) must not make a listing fail for everyone.
    """
    shown: dict[str, Any] = {}
    for name, value in (parameters or {}).items():
        depth = nesting_depth(value)
        shown[name] = value if depth <= limit else f"<not shown: nested {depth} levels deep, more than {limit}>"
    return shown


def queue_problem(name: str) -> str | None:
    """Why ``name`` cannot be a queue, or None when it can."""
    shown = _SHORT.repr(name)
    if not isinstance(name, str) or not name:
        return f"queue {shown} is not a name: {QUEUE_RULE}"
    if len(name) > MAX_QUEUE_LENGTH or not QUEUE_PATTERN.fullmatch(name):
        return f"queue {shown} is refused: {QUEUE_RULE}"
    if name.startswith(RESERVED_QUEUE_PREFIXES) or name.endswith(RESERVED_QUEUE_SUFFIXES):
        return f"queue {shown} is the name of a key Celery or kombu keep in Redis: {QUEUE_RULE}"
    return None


def queues_problem(names: Iterable[str]) -> str | None:
    """Why one of ``names`` cannot be a queue (the first such), or None when all can."""
    return next((problem for problem in map(queue_problem, names) if problem), None)
