"""Worker events published without waiting for Redis's reply.

Celery's worker main process publishes each batch of task events (received, started,
succeeded) with a ``PUBLISH`` and then waits for the reply: the number of subscribers, which
nothing reads. The main process is the worker's one serial part (it takes every message,
hands it to the pool and acknowledges it), and each of those waits is a round trip to a
Redis that the pool's tasks keep busy: two or three per task, in every task's path.

Here the event publishes go over a connection of their own that has told Redis not to reply
(``CLIENT REPLY OFF``): the same command with the same payload, to the same topics, in the
same order, sent at once and never waited for. A connection Redis closed (a restart, a
``CLIENT KILL``, an idle timeout) is seen before each write, since such a socket is readable
and a working one never is; that and any error on it drop the connection and publish the
ordinary way, which then succeeds or fails as it always did. What it cannot see is a Redis
that dies between that check and the write, as a Redis that dies right after taking a
command loses it. A Redis that refuses ``CLIENT REPLY OFF`` (an ACL without it) answers the
next publish, which is seen the same way: that channel then publishes the ordinary way only.
Events are what they were (Celery treats them as best effort); only the wait is gone. Other
fanout messages, a prefixed keyspace and kombu's batched publishes keep the ordinary path.
"""

from __future__ import annotations

import os
from typing import Any

from kombu.utils.json import dumps

# The exchange the worker's events go to (the app's ``event_exchange``); None leaves every
# publish the ordinary way (a process that never called :func:`publish_events_quietly`).
_EVENT_EXCHANGE: str | None = None


def publish_events_quietly(event_exchange: str) -> None:
    """Send this process's event publishes on a no-reply connection (a worker calls it at start)."""
    global _EVENT_EXCHANGE
    _EVENT_EXCHANGE = event_exchange


class QuietEvents:
    """What kombu's Redis channels gain: :meth:`_put_fanout` for events without a reply to wait for."""

    _quiet: Any = None  # the no-reply connection, made on the first event and kept
    _quiet_pid: int = 0  # the process that made it: a forked pool child makes its own
    _quiet_refused = False  # Redis answered on it: CLIENT REPLY OFF was refused (an ACL, an old Redis)
    global_keyprefix: str
    pool: Any

    def _put_fanout(self, exchange: str, message: Any, routing_key: str, **kwargs: Any) -> None:
        if (
            exchange == _EVENT_EXCHANGE
            and kwargs.get("_publish_batch") is None  # as kombu reads it: not a batched publish
            and not self.global_keyprefix
            and not self._quiet_refused
        ):
            topics = self._get_publish_topics(exchange, routing_key)  # type: ignore[attr-defined]
            payload = dumps(message)
            try:
                connection = self._quiet_connection()
                if connection.can_read(timeout=0):  # raises if Redis closed it; never true while it works
                    self._quiet_refused = True  # it replies after all: the ordinary way from now on
                    raise ConnectionError("a no-reply connection had something to read")
                connection.send_packed_command(
                    connection.pack_commands([("PUBLISH", topic, payload) for topic in topics]), check_health=False
                )
                return
            except Exception:  # Redis away or the socket broken: the ordinary publish decides
                self._drop_quiet()
        super()._put_fanout(exchange, message, routing_key, **kwargs)  # type: ignore[misc]

    def _quiet_connection(self) -> Any:
        if self._quiet is None or self._quiet_pid != os.getpid():
            connection = self.pool.make_connection()  # the channel's own settings: TLS, auth, sentinel
            connection.connect()
            connection.send_command("CLIENT", "REPLY", "OFF", check_health=False)  # no reply to this either
            self._quiet, self._quiet_pid = connection, os.getpid()
        return self._quiet

    def _drop_quiet(self) -> None:
        quiet, self._quiet = self._quiet, None
        if quiet is not None and self._quiet_pid == os.getpid():
            try:
                quiet.disconnect()
            except Exception:  # already broken: nothing more to close
                pass

    def close(self) -> None:
        self._drop_quiet()
        super().close()  # type: ignore[misc]
