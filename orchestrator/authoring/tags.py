"""``with tags("db", "nightly"):``: tags added to every task run started inside the block (Prefect's ``tags``).

Tags are how tag concurrency limits find a task run (README, "Concurrency limits"), and
Prefect code sets them for a whole block instead of on each task. The block's tags live in
a context variable, so they follow the code that entered it (its thread, its coroutines,
a copied context) and nested blocks add up. Where a task hands itself to an engine
(``submit``, ``map``, a call in a flow body) it takes :func:`with_context_tags` instead of
itself: a ``with_options(tags=...)`` copy when the block adds tags it does not carry yet.
A copy's tags already travel to the workers in each message (docs/options.md), so the
tracer, the dynamic driver and the in-process runner need nothing of their own.

Blocks hold in the process that runs the body: a block inside a flow body holds on the
fleet too (the body runs on a worker, or is traced where ``.delay()`` is called); a block
around ``my_flow.delay()`` does not reach the run (a flow run carries no tags here).
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from orchestrator.errors import DefinitionError

if TYPE_CHECKING:
    from orchestrator.authoring.tasks import Task

_current: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("orchestrator_tags", default=())

# Copies made for a block's tags, per task: a loop of submits in a block builds one copy, not one per call.
_copies: weakref.WeakKeyDictionary[Task[Any, Any], dict[tuple[str, ...], Task[Any, Any]]] = weakref.WeakKeyDictionary()
_copies_lock = threading.Lock()


@contextlib.contextmanager
def tags(*new_tags: str) -> Iterator[set[str]]:
    """Add ``new_tags`` to every task run started inside the block (and inside nested blocks).

    Yields every tag in force inside the block, as Prefect does.
    """
    for tag in new_tags:
        if not isinstance(tag, str) or not tag:
            raise DefinitionError(
                f"tags() takes tag names as separate non-empty strings, e.g. tags('db', 'nightly'); got {tag!r}."
            )
    merged = tuple(dict.fromkeys((*_current.get(), *new_tags)))
    token = _current.set(merged)
    try:
        yield set(merged)
    finally:
        _current.reset(token)


@contextlib.contextmanager
def no_context_tags() -> Iterator[None]:
    """A block where no enclosing ``tags()`` holds: a run traced for the fleet where ``.delay()`` is
    called gets the same tags as one a worker starts (a flow run carries none from its caller)."""
    token = _current.set(())
    try:
        yield
    finally:
        _current.reset(token)


def current_tags() -> tuple[str, ...]:
    """The tags the enclosing ``tags()`` blocks add, outermost first (empty outside any)."""
    return _current.get()


def with_context_tags(task: Task[Any, Any]) -> Task[Any, Any]:
    """``task`` itself, or a copy carrying the enclosing blocks' tags after its own (kept in order)."""
    extra = _current.get()
    if not extra:
        return task
    merged = tuple(dict.fromkeys((*task.tags, *extra)))
    if len(merged) == len(task.tags):
        return task
    with _copies_lock:
        known = _copies.setdefault(task, {})
        copy = known.get(merged)
    if copy is None:
        copy = task.with_options(tags=list(merged))
        with _copies_lock:
            known[merged] = copy
    return copy
