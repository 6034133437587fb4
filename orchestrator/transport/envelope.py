"""A captured send's Redis commands, written here instead of by kombu's producer: the plain case.

A one-task or group ``.delay()`` and a worker's next chain link capture the ``LPUSH`` (and the
task-sent event's ``PUBLISH``) kombu's Redis transport would run (``messaging.captured_sends``),
on the critical path of both. Celery still builds every message: options, routing, headers
(``send_task``, ``as_task_v2``), the ``before_task_publish``/``after_task_publish`` signals and
the task-sent event are its own, and it hands each one to ``producer.publish`` as ever. Only that
last step is done here: :class:`EnvelopeProducer` stands in for kombu's ``Producer`` and turns the
call into the JSON kombu's Redis ``Channel._put`` would ``LPUSH`` (``_put_fanout``'s ``PUBLISH``
for the event), byte for byte but for the random ``delivery_tag``. What that skips is kombu's
work that a capture does not need: a retry wrapper (``Connection.ensure``) and a
``maybe_declare`` (an entity copy and another wrapper) around each of the two publishes, although
a capture touches no connection and its entities were declared by an earlier send: about 75 of
the ~250 µs of CPU a W0 message's capture took (``python -m benchmarks.capture_cpu``).

The plain case is the one this reproduces exactly; any publish outside it goes to kombu's own
``publish``, which hands its commands to the same capture (so the order of the writes holds):
a priority or a default one (kombu picks a priority-suffixed list), compression, a serializer
or content type other than JSON, a named exchange that is not a fanout (a task's queue routed
through a direct or topic exchange, where kombu looks its bindings up), an entity not declared
on this connection yet (kombu declares it: a Redis write of its own), a queue with an expiry
(kombu adds ``PEXPIRE``), a producer with an exchange of its own, a ``reply_to``
that is a queue, a body encoding other than base64. Signal receivers are never skipped: Celery
sends its signals around ``publish`` whichever producer it has.

kombu's own parts are used where they decide the bytes: its JSON ``dumps`` (the body's
serializer and the envelope's), its channel's ``encode_body``, delivery tag and fanout topics.
``tests/test_envelope.py`` holds this against kombu's capture for real Celery messages.

This is the path of a message Celery builds. A plain message whose shape Celery has shown twice
skips Celery too: it is written from its template (``message_templates.py``).
"""

from __future__ import annotations

from typing import Any, Protocol

from kombu.entity import maybe_delivery_mode
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps as json_dumps


class Writes(Protocol):
    """Where a captured command goes (``messaging._Capture``): ``add('lpush', key, message)``."""

    def add(self, name: str, *args: Any) -> None: ...


def declared(channel: Any, entities: Any) -> bool:
    """Whether every entity of ``entities`` is in this connection's declaration cache, as kombu's
    ``maybe_declare`` asks before it declares (then it declares nothing)."""
    if not entities:
        return True
    connection = channel.connection
    if connection is None:
        return False
    cache = connection.client.declared_entities
    return all(entity.can_cache_declaration and hash(entity) in cache for entity in entities)


class EnvelopeProducer:
    """Stands in for kombu's ``Producer`` while a send is captured (see the module's docstring).

    Every attribute but :meth:`publish` is the real producer's (Celery reads its connection);
    ``built`` and ``passed`` count the messages written here and those handed to kombu.
    """

    def __init__(self, producer: Any, writes: Writes) -> None:
        self._producer = producer
        self._writes = writes
        self.built = 0
        self.passed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    def publish(
        self,
        body: Any,
        routing_key: Any = None,
        delivery_mode: Any = None,
        mandatory: bool = False,
        immediate: bool = False,
        priority: Any = 0,
        content_type: Any = None,
        content_encoding: Any = None,
        serializer: Any = None,
        headers: Any = None,
        compression: Any = None,
        exchange: Any = None,
        retry: bool = False,
        retry_policy: Any = None,
        declare: Any = None,
        expiration: Any = None,
        timeout: Any = None,
        confirm_timeout: Any = None,
        **properties: Any,
    ) -> None:
        """``Producer.publish``'s signature; written here in the plain case, else kombu's own."""
        producer = self._producer
        channel = producer.channel
        key = producer.routing_key if routing_key is None else routing_key
        name = exchange or ""  # the producer's own exchange is the anonymous one (else _targets says None)
        targets = self._targets(channel, name, key, priority, declare)
        plain = (
            content_type is None
            and (serializer or producer.serializer) == "json"
            and not (compression or producer.compression)
            and isinstance(properties.get("reply_to", ""), str)
            and channel.body_encoding == "base64"
        )
        if targets is None or not plain:
            self.passed += 1
            producer.publish(
                body,
                routing_key=routing_key,
                delivery_mode=delivery_mode,
                mandatory=mandatory,
                immediate=immediate,
                priority=priority,
                content_type=content_type,
                content_encoding=content_encoding,
                serializer=serializer,
                headers=headers,
                compression=compression,
                exchange=exchange,
                retry=retry,
                retry_policy=retry_policy,
                declare=declare,
                expiration=expiration,
                timeout=timeout,
                confirm_timeout=confirm_timeout,
                **properties,
            )
            return
        if retry:  # kombu's publish leaves the policy on the connection: so does this one
            producer.connection.transport_options.update(retry_policy or {})
        # Producer.publish and _prepare, Channel.prepare_message and _inplace_augment_message, in their order
        properties["delivery_mode"] = maybe_delivery_mode(delivery_mode or producer.exchange.delivery_mode)
        if expiration is not None:
            properties["expiration"] = str(int(expiration * 1000))
        content_type, content_encoding, payload = serialize(body, serializer="json")
        properties.setdefault("delivery_info", {})
        properties.setdefault("priority", priority or channel.default_priority)
        encoded, body_encoding = channel.encode_body(payload, channel.body_encoding)
        properties.update(body_encoding=body_encoding, delivery_tag=channel._next_delivery_tag())
        properties["delivery_info"].update(exchange=name, routing_key=key)
        message = {
            "body": encoded,
            "content-encoding": content_encoding,
            "content-type": content_type,
            "headers": headers or {},
            "properties": properties,
        }
        command, destinations = targets
        text = json_dumps(message)
        for destination in destinations:
            self._writes.add(command, destination, text)
        self.built += 1

    def _targets(
        self, channel: Any, exchange: Any, routing_key: Any, priority: Any, declare: Any
    ) -> tuple[str, list[str]] | None:
        """The command and keys kombu's Redis channel would write the message to, when that is the
        plain case: ``LPUSH`` to the queue the anonymous exchange names, ``PUBLISH`` to a fanout's
        topics. None for anything else (kombu's own publish then runs)."""
        if priority or channel.default_priority or not isinstance(exchange, str):
            return None
        if self._producer.exchange.name:
            return None  # a producer with an exchange of its own (kombu would route and declare through it)
        if not declared(channel, declare):
            return None
        if not exchange:
            if not routing_key or not isinstance(routing_key, str):
                return None
            expires = channel._expires
            if expires and routing_key in expires:
                return None
            return "lpush", [routing_key]
        if channel.typeof(exchange).type != "fanout" or not channel.supports_fanout:
            return None
        return "publish", list(channel._get_publish_topics(exchange, routing_key))
