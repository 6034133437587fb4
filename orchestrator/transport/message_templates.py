"""A plain task message written from a template Celery's own sends taught, not rebuilt by Celery each time.

A one-task ``.delay()`` captures its message (``messaging.captured_sends``) on the critical path
of W0: Celery's ``Signature.apply_async``, ``Task.apply_async``, ``send_task`` (exec options,
the router), ``as_task_v2``, ``send_task_message`` and the task-sent event's dispatcher, then the
capture's own producer handling. That is about 600 Python calls and 0.15-0.5 ms of CPU (slow
VM to quiet one, ``python -m benchmarks.capture_cpu``) for a message whose every byte but a few
ids, the arguments and a clock is the same from one send to the next.

:class:`MessageTemplates` keeps, per *shape* (the task's name, the signature's options but its
task id, the broker's Redis, the process), what Celery wrote, and writes the next message of that
shape itself: the same JSON texts, byte for byte, with the per-message fields put in their
places. It trusts a shape only after checking itself against Celery: the first message of a
shape is Celery's (the template is taken from it), the second is Celery's too and is compared,
byte for byte, with what the template makes of the same signature (same task id, arguments,
delivery tags, clock and time). Anything that differs (a task default that moves per message,
an option that routes elsewhere) leaves that shape to Celery for good.

Celery keeps every message whose send it must see: a signal receiver (``before_task_publish``,
``after_task_publish``, the old ``task_sent``), ``task_always_eager``, a send from inside a task
(the parent's ids), a signature with links, a chain, a chord or any option but its queue and
``ignore_result``. ``tests/test_message_templates.py`` holds the texts against Celery's.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery, signals
from celery.canvas import Signature
from celery.events.dispatcher import utcoffset
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.uuid import uuid as delivery_tag

log = logging.getLogger(__name__)

PLAIN_OPTIONS = frozenset({"queue", "ignore_result", "task_id", "time_limit", "soft_time_limit"})
"""The signature options a templated message may carry (what the compiler and start messages set)."""

Write = tuple[str, str, Any]  # messaging.BrokerWrite: ('lpush', queue, text) or ('publish', topic, text)


@dataclass(frozen=True)
class _Varying:
    """What one message has of its own: everything else in its texts is its shape's."""

    task_id: str
    args: Any
    kwargs: Any
    argsrepr: str
    kwargsrepr: str
    reply_to: str
    tag: str
    event_tag: str
    clock: int | None
    timestamp: float | None
    utcoffset: Any


@dataclass
class _Template:
    """One shape's texts as Celery wrote them, parsed: the message and (when Celery sends one) its
    task-sent event, with the keys they were written to."""

    queue_key: str
    message: dict[str, Any]
    body: list[Any]  # [args, kwargs, embed]: the embed (callbacks, errbacks, chain, chord) is the shape's
    event_topic: str | None
    event: dict[str, Any] | None
    event_fields: dict[str, Any] | None
    trusted: bool = False

    def writes(self, v: _Varying) -> list[Write]:
        """The commands for a message of this shape with ``v``'s fields, in Celery's order."""
        body = base64.b64encode(kombu_dumps([v.args, v.kwargs, self.body[2]]).encode()).decode()
        headers = dict(self.message["headers"])
        headers.update(id=v.task_id, root_id=v.task_id, argsrepr=v.argsrepr, kwargsrepr=v.kwargsrepr)
        properties = dict(self.message["properties"])
        properties.update(correlation_id=v.task_id, reply_to=v.reply_to, delivery_tag=v.tag)
        message = dict(self.message)
        message.update(body=body, headers=headers, properties=properties)
        writes: list[Write] = [("lpush", self.queue_key, kombu_dumps(message))]
        if self.event is not None and self.event_fields is not None and self.event_topic is not None:
            fields = dict(self.event_fields)
            fields.update(
                utcoffset=v.utcoffset,
                clock=v.clock,
                uuid=v.task_id,
                root_id=v.task_id,
                args=v.argsrepr,
                kwargs=v.kwargsrepr,
                timestamp=v.timestamp,
            )
            event = dict(self.event)
            event_properties = dict(event["properties"])
            event_properties["delivery_tag"] = v.event_tag
            event.update(body=base64.b64encode(kombu_dumps(fields).encode()).decode(), properties=event_properties)
            writes.append(("publish", self.event_topic, kombu_dumps(event)))
        return writes


def _parsed(writes: list[Write]) -> tuple[str, dict[str, Any], str | None, dict[str, Any] | None] | None:
    """Celery's capture of one plain message: its LPUSH and, if any, its task-sent PUBLISH; None for
    anything else."""
    if not writes or writes[0][0] != "lpush" or len(writes) > 2:
        return None
    message = json.loads(writes[0][2])
    if len(writes) == 1:
        return writes[0][1], message, None, None
    if writes[1][0] != "publish":
        return None
    return writes[0][1], message, writes[1][1], json.loads(writes[1][2])


def _decoded(text: str) -> Any:
    return json.loads(base64.b64decode(text))


class MessageTemplates:
    """The templates of one Celery app's plain messages (see the module's docstring).

    ``direct`` counts the messages written here; ``learned`` the Celery captures looked at.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._repr_of: Callable[[Any, Any], tuple[str, str]] | None = getattr(app.amqp, "reprs", None)
        self._shapes: dict[tuple[Any, ...], _Template | None] = {}  # None: Celery's for good
        self._lock = threading.Lock()
        self.direct = 0
        self.learned = 0

    def _shape(self, signature: Any, extra: dict[str, Any], server: Any) -> tuple[Any, ...] | None:
        """The shape of ``signature`` sent with ``apply_async(**extra)``, or None when it is not a plain
        one (Celery sends it). The arguments' count and names are in it: Celery checks them against
        the task's signature (``typing``), so a shape Celery took once takes every message of it."""
        if self._repr_of is None or type(signature) is not Signature or signature.get("subtask_type"):
            return None
        options = {**signature.get("options", {}), **extra}
        if not options.keys() <= PLAIN_OPTIONS or not isinstance(options.get("task_id"), str):
            return None
        queue, ignore = options.get("queue"), options.get("ignore_result")
        limits = (options.get("time_limit"), options.get("soft_time_limit"))
        if not isinstance(queue, str | None) or not isinstance(ignore, bool | None):
            return None
        if not all(limit is None or type(limit) in (int, float) for limit in limits):
            return None
        args, kwargs = signature.get("args") or (), signature.get("kwargs") or {}
        if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
            return None
        return (signature["task"], queue, ignore, limits, len(args), tuple(kwargs), server, os.getpid())

    def _quiet(self) -> bool:
        """Whether a send now is one Celery would make without anybody watching it being built."""
        return not (
            signals.before_task_publish.receivers
            or signals.after_task_publish.receivers
            or signals.task_sent.receivers
            or self.app.conf.task_always_eager
            or self.app.current_worker_task is not None
        )

    def _varying(
        self, signature: Any, tag: str, event_tag: str, clock: int | None, timestamp: float | None, offset: Any
    ) -> _Varying:
        args, kwargs = tuple(signature.get("args") or ()), signature.get("kwargs") or {}
        argsrepr, kwargsrepr = self._repr_of(args, kwargs)  # type: ignore[misc]  # None: no shape
        return _Varying(
            task_id=signature["options"]["task_id"],
            args=list(args),
            kwargs=kwargs,
            argsrepr=argsrepr,
            kwargsrepr=kwargsrepr,
            reply_to=self.app.thread_oid,
            tag=tag,
            event_tag=event_tag,
            clock=clock,
            timestamp=timestamp,
            utcoffset=offset,
        )

    def writes(self, signature: Any, extra: dict[str, Any], server: Any) -> list[Write] | None:
        """The commands ``signature.apply_async(**extra)`` would run, from its shape's template; None
        when its shape is not trusted yet or not plain (the caller has Celery capture it, then
        :meth:`learn`). ``server``: the run store's Redis the commands are for."""
        shape = self._shape(signature, extra, server)
        template = self._shapes.get(shape) if shape is not None else None
        if template is None or not template.trusted or not self._quiet():
            return None
        clock = self.app.amqp._event_dispatcher.clock.forward() if template.event is not None else None
        varying = self._varying(signature, delivery_tag(), delivery_tag(), clock, time.time(), utcoffset())
        self.direct += 1
        return template.writes(varying)

    def learn(self, signature: Any, extra: dict[str, Any], writes: list[Write], server: Any) -> None:
        """Look at Celery's capture of ``signature.apply_async(**extra)``: the first of a shape becomes
        its template, the second is compared with what the template makes of it (equal: trusted; else
        Celery's for good)."""
        shape = self._shape(signature, extra, server)
        if shape is None or not self._quiet():
            return
        parsed = _parsed(writes)
        self.learned += 1
        with self._lock:
            if shape in self._shapes and (self._shapes[shape] is None or self._shapes[shape].trusted):  # type: ignore[union-attr]
                return
            if parsed is None:
                self._shapes[shape] = None
                return
            queue_key, message, topic, event = parsed
            fields = _decoded(event["body"]) if event is not None else None
            template = self._shapes.get(shape)
            if template is None:  # the first of its shape
                body = _decoded(message["body"])
                self._shapes[shape] = _Template(queue_key, message, body, topic, event, fields)
                return
            varying = self._varying(
                signature,
                message["properties"]["delivery_tag"],
                event["properties"]["delivery_tag"] if event is not None else "",
                fields.get("clock") if fields is not None else None,
                fields.get("timestamp") if fields is not None else None,
                fields.get("utcoffset") if fields is not None else None,
            )
            same_offset = fields is None or fields.get("utcoffset") == utcoffset()
            if same_offset and [tuple(write) for write in writes] == template.writes(varying):
                template.trusted = True
            else:
                log.debug("messages of task %s differ beyond their own fields: Celery sends them", signature["task"])
                self._shapes[shape] = None


_TEMPLATES: weakref.WeakKeyDictionary[Celery, MessageTemplates] = weakref.WeakKeyDictionary()
_TEMPLATES_LOCK = threading.Lock()


def templates_of(app: Celery) -> MessageTemplates:
    """The one :class:`MessageTemplates` of ``app`` (what it learned lives as long as the app)."""
    found = _TEMPLATES.get(app)
    if found is None:
        with _TEMPLATES_LOCK:
            found = _TEMPLATES.setdefault(app, MessageTemplates(app))
    return found
