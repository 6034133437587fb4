"""The type and range of every ``@task`` and ``@flow`` option, checked when the function is decorated.

A wrong option used to pass silently and bite later, far from the line that set it:
``tags="db"`` became the tags ``['d', 'b']`` (Python iterates a string: the trap of
Prefect's FAQ, where ``labels="prod"`` became four labels), ``queue=["a", "b"]`` was taken,
``retries=True`` meant one retry, ``log_prints="false"`` was true and
``retry_delay_seconds="10"`` gave delays of 1 and 0 seconds. Each check here raises a
DefinitionError naming the option, what was given and the fix. ``with_options`` copies
are built by the same constructors, so they get the same checks.

One string is one tag (``tags="db"`` is ``tags=["db"]``); everything else that is not
what the option takes is refused, never converted: a bool is not a number, a string is
not a bool, a number of seconds is a finite int or float.
"""

from __future__ import annotations

import math
import numbers
import reprlib
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

from orchestrator.errors import DefinitionError


def refuse(where: str, option: str, value: Any, expected: str, fix: str) -> NoReturn:
    """Raise the one message shape: ``<where>: <option> takes <expected>; got <value> (<type>). <fix>``."""
    raise DefinitionError(
        f"{where}: {option} takes {expected}; got {reprlib.repr(value)} ({type(value).__name__}). {fix}"
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def count(where: str, option: str, value: Any) -> int:
    """A whole number >= 0 (``retries``); a bool is refused (``retries=True`` is not one retry)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        refuse(where, option, value, "a whole number >= 0", f"e.g. {option}=3.")
    return int(value)


def seconds(where: str, option: str, value: Any, *, zero: bool = False) -> Any:
    """A number of seconds (> 0, or >= 0 with ``zero``), or None; returned as given."""
    if value is None:
        return None
    if not _is_number(value) or value < 0 or (value == 0 and not zero):
        bound = ">= 0" if zero else "> 0"
        fix = f"e.g. {option}=60; for a timedelta pass its .total_seconds()."
        if not zero:
            fix += " Leave it out (or None) for no limit."
        refuse(where, option, value, f"a number of seconds {bound}", fix)
    return value


def retry_delays(where: str, value: Any) -> Any:
    """``retry_delay_seconds``: seconds >= 0, a non-empty list of them (one per retry), or a function
    ``retries -> list`` (``exponential_backoff(10)``); returned as given."""
    if callable(value):
        return value
    expected = "seconds >= 0, a list of them (one per retry, the last repeats) or exponential_backoff(...)"
    fix = "e.g. retry_delay_seconds=10 or retry_delay_seconds=[1, 10, 60]."
    if _is_number(value):
        if value < 0:
            refuse(where, "retry_delay_seconds", value, expected, fix)
        return value
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        refuse(where, "retry_delay_seconds", value, expected, fix)
    delays = list(value)
    if not delays or not all(_is_number(d) and d >= 0 for d in delays):
        refuse(where, "retry_delay_seconds", value, expected, fix)
    return delays


def factor(where: str, option: str, value: Any) -> Any:
    """A number >= 0, or None (``retry_jitter_factor``)."""
    if value is not None and (not _is_number(value) or value < 0):
        refuse(where, option, value, "a number >= 0 (or None)", f"e.g. {option}=0.5.")
    return value


def flag(where: str, option: str, value: Any, *, optional: bool = False) -> Any:
    """True or False (or None where the option allows it: "as the flow says"); a string is refused
    (``"false"`` would be true)."""
    if not isinstance(value, bool) and not (optional and value is None):
        refuse(where, option, value, "True or False" + (" (or None)" if optional else ""), f"e.g. {option}=True.")
    return value


def text(where: str, option: str, value: Any, *, example: str, empty: bool = False) -> str | None:
    """A non-empty string (or any string with ``empty``), or None."""
    if value is not None and (not isinstance(value, str) or not (value or empty)):
        kind = "a string" if empty else "one non-empty string"
        refuse(where, option, value, f"{kind} (or None)", f"e.g. {option}={example!r}.")
    return value


def queue_name(where: str, value: Any) -> str | None:
    """One queue name: runs go to one queue, so a list is refused (a worker can serve many: -Q a,b)."""
    if value is not None and (not isinstance(value, str) or not value):
        refuse(
            where,
            "queue",
            value,
            "one queue name as a string (or None for the default queue)",
            "e.g. queue='db'; a run goes to one queue, and a worker serves several with -Q a,b.",
        )
    return value


def tag_list(where: str, value: Any) -> list[str]:
    """``tags``: one string is one tag; else an iterable of non-empty strings (a set is sorted, so every
    process sees the same order). Duplicates are dropped, keeping the first."""
    fix = "e.g. tags='db' or tags=['db', 'nightly']."
    if isinstance(value, str):
        items: list[Any] = [value]
    elif isinstance(value, (set, frozenset)) and all(isinstance(t, str) for t in value):
        items = sorted(value)
    elif isinstance(value, (bytes, dict)) or not isinstance(value, Iterable):
        refuse(where, "tags", value, "a tag name or a list of tag names", fix)
    else:
        items = list(value)
    for tag in items:
        if not isinstance(tag, str) or not tag:
            refuse(where, "tags", value, "non-empty strings only", fix)
    return list(dict.fromkeys(items))


def exception_classes(where: str, value: Any) -> tuple[type[BaseException], ...] | None:
    """``retry_on``: an exception class or a tuple (or list) of them, or None."""
    if value is None:
        return None
    items = list(value) if isinstance(value, (tuple, list)) else [value]
    if not items or not all(isinstance(e, type) and issubclass(e, BaseException) for e in items):
        refuse(
            where,
            "retry_on",
            value,
            "an exception class or a tuple of them",
            "e.g. retry_on=ConnectionError or retry_on=(ConnectionError, TimeoutError).",
        )
    return tuple(items)


def function(where: str, option: str, value: Any, shape: str) -> Callable[..., Any] | None:
    """A callable, or None."""
    if value is not None and not callable(value):
        refuse(where, option, value, f"a function {shape} (or None)", f"pass the function itself, not {value!r}.")
    return value
