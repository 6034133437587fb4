"""A plain task message written from a template Celery's own sends taught, not rebuilt by Celery each time.

Two sends sit on the critical path of issue 18's latency figures: a one-task ``.delay()`` captures
its message (W0), and a worker finishing a chain link captures the next one (W2, W1's source);
start messages are on the API's. Each went through Celery's ``Signature.apply_async``,
``Task.apply_async``, ``send_task`` (exec options, the router), ``as_task_v2``,
``send_task_message`` and the task-sent event's dispatcher, then the capture's own producer
handling: about 600 Python calls and 0.15-0.7 ms of CPU (quiet VM to slow one, ``python -m
benchmarks.capture_cpu``) for a message whose every byte but a few ids, the arguments, the
chain's rest and a clock is the same from one send to the next.

:class:`MessageTemplates` keeps, per *shape* (the task's name, its queue and other options by
value, which ids and chain it is given by presence, its arguments' names, the broker's Redis, the
process), what Celery wrote, and writes the next message of that shape itself: the same JSON
texts, byte for byte, with the message's own fields put in their places. It trusts a shape only
after checking itself against Celery: the first message of a shape is Celery's (the template is
taken from it), the second is Celery's too and is compared, byte for byte, with what the template
makes of the same send (same ids, arguments, delivery tags, clock and time). Anything that differs
(a task default that moves per message, an option that routes elsewhere) leaves that shape to
Celery for good. Sent from inside a task, the message joins that task's trail, as Celery's does.

Celery keeps every message whose send it must see: a signal receiver (``before_task_publish``,
``after_task_publish``, the old ``task_sent``), ``task_always_eager``, a send from inside a task
that does not give both ids (Celery would take them from the running task), a signature with links,
a mutable one given arguments, any option outside :data:`PLAIN_OPTIONS`. A chord's header members
are plain sends of this kind once Celery has frozen them (``collected_sends.py``).
``tests/test_message_templates.py`` holds the texts against Celery's.
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
from celery.utils.saferepr import saferepr
from kombu.utils.json import dumps as kombu_dumps
from kombu.utils.uuid import uuid as delivery_tag

log = logging.getLogger(__name__)

PLAIN_OPTIONS = frozenset(
    {
        *("queue", "ignore_result", "task_id", "time_limit", "soft_time_limit"),
        *("root_id", "parent_id", "reply_to", "chain"),
        *("group_id", "group_index", "add_to_parent", "chord"),
    }
)
"""The options a templated send may carry: what the compiler and start messages set, what a
chain's next link is sent with (its ids, the chain's rest, the client's reply_to Celery froze in)
and what a group's or a chord header's member is (its group's id, its place, no trail, the chord's
body)."""

OWN_OPTIONS = ("root_id", "parent_id", "reply_to", "chain", "group_id", "group_index", "chord")
"""Options whose values are a message's own (a shape has them or not)."""

Write = tuple[str, str, Any]  # messaging.BrokerWrite: ('lpush', queue, text) or ('publish', topic, text)


@dataclass(frozen=True)
class _Varying:
    """What one message has of its own: everything else in its texts is its shape's."""

    task_id: str
    root_id: str
    parent_id: str | None
    chain: Any
    chord: Any
    group_id: str | None
    group_index: int | None
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
        embed = self.body[2]
        if v.chain is not None or v.chord is not None:  # a copy: the keys keep Celery's order
            embed = dict(embed)
            if v.chain is not None:
                embed["chain"] = v.chain
            if v.chord is not None:
                embed["chord"] = v.chord
        body = base64.b64encode(kombu_dumps([v.args, v.kwargs, embed]).encode()).decode()
        headers = dict(self.message["headers"])
        headers.update(id=v.task_id, group=v.group_id, group_index=v.group_index, root_id=v.root_id)
        headers.update(parent_id=v.parent_id, argsrepr=v.argsrepr, kwargsrepr=v.kwargsrepr)
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
                root_id=v.root_id,
                parent_id=v.parent_id,
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


@dataclass(frozen=True)
class _Send:
    """One ``signature.apply_async(*args, **extra)``: its shape, and the options Celery would merge."""

    shape: tuple[Any, ...]
    options: dict[str, Any]


_REPR_AS_IS = (int, bool, float, type(None))
_CONTAINERS = (dict, list, tuple)


def _repr_is_saferepr(value: Any, levels: int, level: int = 0) -> bool:
    """Whether Celery's ``saferepr`` of ``value`` is the builtin ``repr`` (given a text shorter than
    its limit): exact dicts, lists and tuples nested at most ``levels`` deep (deeper ones it writes
    as ``{...}``), of numbers, None and strings that ``repr`` leaves unescaped and ``saferepr``
    quotes the same way (printable, no quote, no backslash)."""
    kind = type(value)
    if kind in _REPR_AS_IS:
        return True
    if kind is str:
        return value.isprintable() and "'" not in value and "\\" not in value
    if kind not in _CONTAINERS or level >= levels:
        return False
    items = [*value.keys(), *value.values()] if kind is dict else value
    return all(_repr_is_saferepr(item, levels, level + 1) for item in items)


def celery_repr(value: Any, limit: int, levels: int) -> str:
    """Celery's ``saferepr(value, limit, maxlevels=levels)``, the text ``as_task_v2`` writes for a
    message's arguments; through the builtin ``repr`` where that is the same text (a compiled
    task's arguments: plain JSON data), at a fiftieth of the CPU."""
    if _repr_is_saferepr(value, levels):
        text = repr(value)
        if len(text) < limit:  # shorter than the limit: saferepr cuts nothing
            return text
    return saferepr(value, limit, maxlevels=levels)


def _celery_reprs(app: Celery) -> Callable[[Any, Any], tuple[str, str]]:
    """The argsrepr and kwargsrepr Celery's own ``as_task_v2`` writes (``saferepr``, its limits)."""
    amqp, levels = app.amqp, app.conf.task_repr_maxlevels

    def reprs(args: Any, kwargs: Any) -> tuple[str, str]:
        return (
            celery_repr(args, amqp.argsrepr_maxsize, levels),
            celery_repr(kwargs, amqp.kwargsrepr_maxsize, levels),
        )

    return reprs


class MessageTemplates:
    """The templates of one Celery app's plain messages (see the module's docstring).

    ``direct`` counts the messages written here.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._repr_of: Callable[[Any, Any], tuple[str, str]] = getattr(app.amqp, "reprs", None) or _celery_reprs(app)
        self._shapes: dict[tuple[Any, ...], _Template | None] = {}  # None: Celery's for good
        self._lock = threading.Lock()
        self.direct = 0

    def _send(self, signature: Any, args: tuple[Any, ...], extra: dict[str, Any], server: Any) -> _Send | None:
        """``signature.apply_async(*args, **extra)`` if it is a plain send (else None: Celery sends it).

        The arguments' count and names are in its shape: Celery checks them against the task's
        signature (``typing``), so a shape Celery took once takes every message of it. So are the
        ids and the chain Celery is given, by presence (their values are the message's own)."""
        if type(signature) is not Signature or signature.get("subtask_type"):
            return None
        if args and not signature.get("immutable"):
            return None  # Celery would put them before the signature's own
        options = {**signature.get("options", {}), **{k: v for k, v in extra.items() if v is not None}}
        if not options.keys() <= PLAIN_OPTIONS or not isinstance(options.get("task_id"), str):
            return None
        queue, ignore = options.get("queue"), options.get("ignore_result")
        limits = (options.get("time_limit"), options.get("soft_time_limit"))
        if not isinstance(queue, str | None) or not isinstance(ignore, bool | None):
            return None
        if not all(limit is None or type(limit) in (int, float) for limit in limits):
            return None
        if not all(
            isinstance(options.get(key), str | None) for key in ("root_id", "parent_id", "reply_to", "group_id")
        ):
            return None
        if type(options.get("group_index", 0)) is not int or type(options.get("add_to_parent", True)) is not bool:
            return None
        if not isinstance(options.get("chain"), list | None) or not isinstance(options.get("chord"), dict | None):
            return None
        own, kwargs = signature.get("args") or (), signature.get("kwargs") or {}
        if not isinstance(own, list | tuple) or not isinstance(kwargs, dict):
            return None
        given = tuple(key for key in OWN_OPTIONS if options.get(key) is not None)
        trail = options.get("add_to_parent", True)
        shape = (signature["task"], queue, ignore, limits, given, trail, len(own), tuple(kwargs), server, os.getpid())
        return _Send(shape, options)

    def quiet(self, options: dict[str, Any]) -> bool:
        """Whether Celery would make this send without anybody watching it being built. From inside a
        task only with both ids given: Celery then asks the running task for nothing but its trail."""
        return not (
            signals.before_task_publish.receivers
            or signals.after_task_publish.receivers
            or signals.task_sent.receivers
            or self.app.conf.task_always_eager
            or (not (options.get("root_id") and options.get("parent_id")) and self.app.current_worker_task is not None)
        )

    def _varying(
        self,
        signature: Any,
        options: dict[str, Any],
        tags: tuple[str, str],
        clock: int | None,
        timestamp: float | None,
        offset: Any,
    ) -> _Varying:
        args, kwargs = tuple(signature.get("args") or ()), signature.get("kwargs") or {}
        argsrepr, kwargsrepr = self._repr_of(args, kwargs)
        task_id = options["task_id"]
        return _Varying(
            task_id=task_id,
            root_id=options.get("root_id") or task_id,
            parent_id=options.get("parent_id"),
            chain=options.get("chain"),
            chord=options.get("chord"),
            group_id=options.get("group_id"),
            group_index=options.get("group_index"),
            args=list(args),
            kwargs=kwargs,
            argsrepr=argsrepr,
            kwargsrepr=kwargsrepr,
            reply_to=options.get("reply_to") or self.app.thread_oid,
            tag=tags[0],
            event_tag=tags[1],
            clock=clock,
            timestamp=timestamp,
            utcoffset=offset,
        )

    def writes(
        self, signature: Any, extra: dict[str, Any], server: Any, args: tuple[Any, ...] = ()
    ) -> list[Write] | None:
        """The commands ``signature.apply_async(args, **extra)`` would run, from its shape's template;
        None when its shape is not trusted yet or not plain (the caller has Celery capture it, then
        :meth:`learn`). ``server``: the run store's Redis the commands are for.

        Sent from inside a task, the message joins that task's trail as Celery's own send does."""
        send = self._send(signature, args, extra, server)
        template = self._shapes.get(send.shape) if send is not None else None
        if send is None or template is None or not template.trusted or not self.quiet(send.options):
            return None
        clock = self.app.amqp._event_dispatcher.clock.forward() if template.event is not None else None
        tags = (delivery_tag(), delivery_tag())
        varying = self._varying(signature, send.options, tags, clock, time.time(), utcoffset())
        writes = template.writes(varying)
        parent = self.app.current_worker_task if send.options.get("add_to_parent", True) else None
        if parent is not None:
            result = parent.AsyncResult(varying.task_id)  # Celery's send_task: result_cls, then add_to_parent
            result.ignored = send.options.get("ignore_result")
            parent.add_trail(result)
        self.direct += 1
        return writes

    def all_writes(self, signatures: list[Any], extra: dict[str, Any], server: Any) -> list[Write] | None:
        """:meth:`writes` for each of ``signatures`` (a group's members, say), in order; None unless
        every one has a trusted template (the caller then has Celery send them all)."""
        commands: list[Write] = []
        for signature in signatures:
            written = self.writes(signature, extra, server)
            if written is None:
                return None
            commands.extend(written)
        return commands

    def learn(
        self, signature: Any, extra: dict[str, Any], writes: list[Write], server: Any, args: tuple[Any, ...] = ()
    ) -> None:
        """Look at Celery's capture of ``signature.apply_async(args, **extra)``: the first of a shape
        becomes its template, the second is compared with what the template makes of it (equal:
        trusted; else Celery's for good)."""
        send = self._send(signature, args, extra, server)
        if send is None or not self.quiet(send.options):
            return
        with self._lock:
            known = self._shapes.get(send.shape)
            if send.shape in self._shapes and (known is None or known.trusted):
                return
            parsed = _parsed(writes)
            if parsed is None:
                self._shapes[send.shape] = None
                return
            queue_key, message, topic, event = parsed
            fields = _decoded(event["body"]) if event is not None else None
            if known is None:  # the first of its shape
                body = _decoded(message["body"])
                self._shapes[send.shape] = _Template(queue_key, message, body, topic, event, fields)
                return
            tags = (message["properties"]["delivery_tag"], event["properties"]["delivery_tag"] if event else "")
            clock, timestamp, offset = (
                (fields.get("clock"), fields.get("timestamp"), fields.get("utcoffset"))
                if fields
                else (None, None, None)
            )
            varying = self._varying(signature, send.options, tags, clock, timestamp, offset)
            same_offset = fields is None or offset == utcoffset()
            if same_offset and [tuple(write) for write in writes] == known.writes(varying):
                known.trusted = True
            else:
                log.debug("messages of task %s differ beyond their own fields: Celery sends them", signature["task"])
                self._shapes[send.shape] = None


_TEMPLATES: weakref.WeakKeyDictionary[Celery, MessageTemplates] = weakref.WeakKeyDictionary()
_TEMPLATES_LOCK = threading.Lock()


def templates_of(app: Celery) -> MessageTemplates:
    """The one :class:`MessageTemplates` of ``app`` (what it learned lives as long as the app)."""
    found = _TEMPLATES.get(app)
    if found is None:
        with _TEMPLATES_LOCK:
            found = _TEMPLATES.setdefault(app, MessageTemplates(app))
    return found


def group_members(canvas: Any, options: dict[str, Any]) -> tuple[list[Any], dict[str, Any]] | None:
    """The members of ``canvas`` (a group) as Celery's ``group.apply_async(**options)`` sends them:
    cloned and frozen as it freezes them (``_freeze_gid``, ``_prepared``: its group id, root id,
    places), and the options each one is sent with (no trail: Celery adds the group's result to a
    parent's, not each member's). The group's id is fixed first (its ``task_id``), so a later
    ``canvas.apply_async`` sends these very members. None from a Celery without those steps."""
    freeze_gid, prepared = getattr(canvas, "_freeze_gid", None), getattr(canvas, "_prepared", None)
    if freeze_gid is None or prepared is None:
        return None
    canvas.options.setdefault("task_id", delivery_tag())  # any fresh uuid: the group's id
    merged, group_id, root_id = freeze_gid(dict(options))
    members = [member for member, _result, _group in prepared(canvas.tasks, [], group_id, root_id, canvas.app)]
    return members, {**merged, "add_to_parent": False}


def per_message(writes: list[Write]) -> list[list[Write]]:
    """A capture of many messages cut into each one's commands (its LPUSH, then its event's
    PUBLISH if any); [] when it does not start with a message."""
    messages: list[list[Write]] = []
    for write in writes:
        if write[0] == "lpush":
            messages.append([write])
        elif messages:
            messages[-1].append(write)
        else:
            return []
    return messages
