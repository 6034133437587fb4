"""A chord sent by Celery's own code, its header's messages collected instead of published (W1).

A worker finishing the task before a chord (W1's source) left the chord to Celery's tracer, which
sends it after the task returns: ``chord.run`` freezes it, stores its size in the result backend,
then sends the header's members one by one, each through ``Task.apply_async`` (about 600 Python
calls, then its own round trip to Redis). For a 500-wide header that was a third of the pool
children's CPU in W1 (py-spy), on a box whose two cores the fleet shares.

Here Celery still runs the chord: its freezing, its ids, the size it stores. Only each member's
send is collected: the task class's ``apply_async`` (the workers' ``OrchestratorTask``) asks
:func:`collected_send` first, which has ``CeleryMessaging.captured_signatures`` write the member
from its template (``message_templates.py``: the same bytes as Celery's), or capture Celery's own
send of it and learn from it, into the collection, and sends nothing. The caller runs the collected commands in
the round trip that ends the task run, as it does a chain's next link: the header goes out in one
round trip, and only once the task before it has Completed.

A chord is collected only when every send it makes is one the collection sees (plain tasks whose
class collects, a plain body); anything else in it (a nested canvas, a member with links, a send
that cannot be captured) gives the whole chord back to Celery's tracer, and nothing is sent early.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from celery.canvas import Signature, chord, maybe_signature

from .message_templates import templates_of
from .messaging import BrokerWrite, CeleryMessaging

CHORD_LIMIT = 1000
"""The widest header collected: its commands travel as one script's arguments (about 3 KB a
member with its task-sent event); a wider one is Celery's, a round trip per member."""


@dataclass
class _Collection:
    app: Celery
    server: tuple[Any, ...] | None
    writes: list[BrokerWrite] = field(default_factory=list)
    failed: bool = False


_LOCAL = threading.local()


def collects(task: Any) -> bool:
    """Whether ``task``'s class asks :func:`collected_send` before it sends (``collects_sends``)."""
    return bool(getattr(task, "collects_sends", False))


def _plain(app: Celery, item: Any) -> bool:
    sig = maybe_signature(item, app=app)
    if type(sig) is not Signature or sig.options.get("link") or sig.options.get("link_error"):
        return False
    return collects(app.tasks.get(sig.task))


def collectable(app: Celery, canvas: Any) -> bool:
    """A chord of at most :data:`CHORD_LIMIT` plain members and a plain body, all of tasks that collect."""
    if type(canvas) is not chord:
        return False
    header, body = canvas.tasks, canvas.body
    if not isinstance(header, list | tuple) or not 0 < len(header) <= CHORD_LIMIT:
        return False
    return _plain(app, body) and all(_plain(app, item) for item in header)


def captured_chord(
    app: Celery, canvas: Any, args: tuple[Any, ...], options: dict[str, Any], server: tuple[Any, ...] | None
) -> list[BrokerWrite] | None:
    """The Redis commands that send ``canvas.apply_async(args, **options)``'s messages (a chord, as
    Celery's tracer sends a chain's next step), collected and not run; None when it cannot be
    collected whole (the caller leaves it to Celery). Celery's chord bookkeeping in the result
    backend (the header's size) is done here, before any member can run."""
    if getattr(_LOCAL, "current", None) is not None or not collectable(app, canvas):
        return None
    if not templates_of(app).quiet(options):
        return None
    collection = _Collection(app, server)
    _LOCAL.current = collection
    try:
        canvas.apply_async(args, **options)
    finally:
        _LOCAL.current = None
    return None if collection.failed or not collection.writes else collection.writes


def collected_send(
    task: Any, args: Any, kwargs: Any, task_id: str | None, links: tuple[Any, Any, Any], options: dict[str, Any]
) -> Any:
    """While :func:`captured_chord` runs on this thread: collect ``task.apply_async(args, kwargs,
    task_id=task_id, link=, link_error=, shadow= (links), **options)`` and return its result, sending
    nothing; else None (the task sends as usual). The producer it was given is not used."""
    collection: _Collection | None = getattr(_LOCAL, "current", None)
    if collection is None:
        return None
    result = task.AsyncResult(task_id)
    if collection.failed or args or any(links) or not isinstance(task_id, str):
        collection.failed = True  # Celery would send more than a plain member: the chord is its own
        return result
    sig = Signature(task.name, (), kwargs or {}, immutable=True, app=collection.app)
    messaging = CeleryMessaging(collection.app)
    _LOCAL.current = None  # from its template, or Celery's own send captured: not collected again
    try:
        written = messaging.captured_signatures(
            [sig], {"task_id": task_id, **options}, collection.server, connected_only=False
        )
    finally:
        _LOCAL.current = collection
    if written is None:
        collection.failed = True
        return result
    collection.writes.extend(written)
    return result
