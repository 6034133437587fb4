"""The event stream repository: where every state change and log line goes, and how the recorder reads it.

Producers append typed events (:mod:`orchestrator.runstate.events`) to one Redis
stream; the API's recorder reads it with a consumer group and acknowledges a
batch only after its database commit, so an API killed mid-batch loses nothing:
the next recorder reads the unacknowledged entries again (its own first, then those
a dead consumer left, after :data:`CLAIM_IDLE_MS`).

An entry the database holds has done its work: the acknowledgement also trims the
stream up to the oldest entry a consumer group still needs (``lua/ack_events.lua``),
in the same atomic step (about 750 bytes per task run leave Redis). That is the only
trimming: appending has no cap (no ``MAXLEN``), because a cap drops the oldest entries
whether or not they were recorded, and an API down long enough lost history that way.
With no API running nothing is acknowledged and nothing trimmed: the events wait, in
Redis memory, for a recorder to come; before the recorder's group exists (a recorder
that never ran) no trim runs at all, and the group, made at the stream's start, reads
them all. :meth:`EventStream.backlog` says how many wait (``/metrics``, ``/api/health``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis

from orchestrator.runstate import keys
from orchestrator.runstate.events import LogLine, StreamEvent, encode
from orchestrator.runstate.scripts import Scripts

RECORDER_GROUP = "recorder"
CLAIM_IDLE_MS = 30_000  # events a dead consumer read but never acknowledged are taken over after this
DEAD_LETTERS = f"{keys.PREFIX}:events:dead"  # events the database refused, kept for a person to look at

Entry = tuple[str, dict[str, str]]  # a stream id and the entry's fields


@dataclass(frozen=True)
class Backlog:
    """What waits in the stream for the recorder: every entry it has not acknowledged is kept
    (see the module's docstring), so the stream's length is the backlog."""

    entries: int
    oldest: float | None  # when the oldest entry was appended (epoch seconds, from its id); None: empty


class EventStream:
    """Appends events and hands them to the recorder."""

    def __init__(self, redis: Any, scripts: Scripts, ttl: int) -> None:
        self._redis = redis
        self._scripts = scripts
        self._ttl = ttl

    # -- producing ------------------------------------------------------------------------
    def append(self, pipe: Any, event: StreamEvent | str) -> None:
        """Queue one event (typed, or text made by :func:`~orchestrator.runstate.events.encode`) in ``pipe``.

        No ``MAXLEN``: only the recorder's acknowledgement trims the stream (the module's docstring says why).
        """
        text = event if isinstance(event, str) else encode(event)
        pipe.execute_command("XADD", keys.EVENTS_STREAM, "*", "event", text)  # pipe.xadd(stream, {"event": text})

    def append_all(self, pipe: Any, events: Iterable[StreamEvent | str]) -> None:
        """Queue several events in ``pipe``, in order."""
        for event in events:
            self.append(pipe, event)

    def ship_logs(self, lines: list[LogLine]) -> None:
        """Append log lines to the stream and to each flow run's log list, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for line in lines:
            text = encode(line)
            self.append(pipe, text)
            pipe.rpush(keys.flow_logs(line.flow_run_id), text)
            pipe.expire(keys.flow_logs(line.flow_run_id), self._ttl)
        pipe.execute()

    def logs_of(self, flow_run_id: str) -> list[dict[str, Any]]:
        """The log lines of a flow run still in Redis (as their JSON objects), oldest first."""
        return [json.loads(line) for line in self._redis.lrange(keys.flow_logs(flow_run_id), 0, -1)]

    # -- the recorder's side -------------------------------------------------------------
    def ensure_group(self) -> None:
        """Create the recorder's consumer group at the stream's start: events sent while no API ran are recorded too."""
        try:
            self._redis.xgroup_create(keys.EVENTS_STREAM, RECORDER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, consumer: str, count: int, block_ms: int) -> list[Entry]:
        """Our own unacknowledged entries first, then those a dead consumer left, then new ones."""
        own = self._redis.xreadgroup(RECORDER_GROUP, consumer, {keys.EVENTS_STREAM: "0"}, count=count)
        if own and own[0][1]:
            return list(own[0][1])
        claimed = self._redis.xautoclaim(
            keys.EVENTS_STREAM, RECORDER_GROUP, consumer, CLAIM_IDLE_MS, "0-0", count=count
        )
        if claimed and claimed[1]:
            return [entry for entry in claimed[1] if entry[1] is not None]
        fresh = self._redis.xreadgroup(RECORDER_GROUP, consumer, {keys.EVENTS_STREAM: ">"}, count=count, block=block_ms)
        return list(fresh[0][1]) if fresh else []

    def acknowledge(self, stream_ids: list[str]) -> int:
        """The entries are in the database: never hand them out again, and drop them from the stream
        with every older entry no consumer group still needs. Returns how many entries were dropped.

        One script, so a recorder that dies after its commit either acknowledged and trimmed, or did
        neither (the next recorder reads the batch again, and the database skips what it holds).
        """
        if not stream_ids:
            return 0
        return int(self._scripts["ack_events"](keys=[keys.EVENTS_STREAM], args=[RECORDER_GROUP, *stream_ids]))

    def backlog(self) -> Backlog:
        """How many events wait to be recorded, and since when (one round trip: ``XLEN`` and the first id)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.xlen(keys.EVENTS_STREAM)
        pipe.xrange(keys.EVENTS_STREAM, "-", "+", count=1)
        length, first = pipe.execute()
        oldest = int(str(first[0][0]).split("-", 1)[0]) / 1000 if first else None
        return Backlog(int(length), oldest)

    def keep_refused(self, stream_id: str, event: dict[str, Any], error: str) -> None:
        """Keep an event the database refused in the dead-letter list, for a person to look at."""
        self._redis.rpush(DEAD_LETTERS, json.dumps({"id": stream_id, "event": event, "error": error}, default=str))

    def dead_letter_count(self) -> int:
        """How many refused events wait in the dead-letter list (the metrics read it at each scrape)."""
        return int(self._redis.llen(DEAD_LETTERS))
