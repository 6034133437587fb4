"""The flow-runs repository: a flow run's record, its end latch, its plan and its counts in Redis.

A flow run's record is a hash (:mod:`orchestrator.runstate.records` says how it is
encoded); every state written also goes out as an event for the API, and a final
state pushes one item on the run's latch list, which ``FlowRun.wait`` blocks on.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Sequence
from typing import Any, NamedTuple

from redis.client import NEVER_DECODE

from orchestrator.runstate import keys
from orchestrator.runstate.connection import now, queued_hset, read_hashes
from orchestrator.runstate.event_stream import EventStream
from orchestrator.runstate.events import Renamed, flow_run_event
from orchestrator.runstate.records import (
    RESTORED_FLOW_FIELDS,
    FlowOutcome,
    FlowRunRecord,
    body_task_run_id,
    describe_record,
    flow_fields_to_redis,
    full_flow_record,
)
from orchestrator.runstate.scripts import Scripts
from orchestrator.states import StateType

RAW: dict[str, list[str]] = {NEVER_DECODE: []}  # a command option of redis-py: this reply is bytes, not decoded as text
END_HOOKS_FIELD = "end_hooks"  # set in a run's hash by whoever runs the hooks of its end
BODY_ATTEMPT_FIELD = "body_attempt"  # the live attempt of a dynamic body (see state_and_body_attempt)
LAUNCH_WRITES = frozenset({"HSET", "EXPIRE", "SET", "SADD", "XADD", "ZADD"})  # what lua/launch_run.lua may write
PLAIN_PLAN_UNDER = 1024  # bytes of a plan's JSON text under which it is kept uncompressed (pack_plan)
LAUNCH_MAX_ARGS = 4000  # arguments of writes and sends one launch script runs at most (Lua unpacks about 8,000)

# ``json.dumps`` with options builds an encoder per call (2-3 µs); these are built once (same text)
_LAUNCH_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_COMPACT = json.JSONEncoder(separators=(",", ":"))


class LaunchWrites(NamedTuple):
    """Record writes as ``lua/launch_run.lua`` takes them (:meth:`FlowRuns.launch_writes`)."""

    text: str  # JSON: a list of commands, each a list of its arguments (text; a number n: binary[n - 1])
    binary: list[bytes]
    arguments: int  # of all the commands together


class FlowRuns:
    """Flow run records and what hangs off them."""

    def __init__(self, redis: Any, scripts: Scripts, ttl: int, events: EventStream, grace: int) -> None:
        self._redis = redis
        self._scripts = scripts
        self._ttl = ttl
        self._grace = grace  # what a completed run keeps its plan for once recorded (Settings.finished_grace_seconds)
        self._events = events

    def write(self, run_id: str, fields: dict[str, Any], pipe: Any = None, *, reopen: bool = False) -> None:
        """Create or update a flow run record; a state field also emits an event.

        The event carries the record's descriptive fields, so the API can record a
        run it has never seen (one sent with ``.delay()``). ``reopen`` marks an
        explicit retry of a final run (the only way the state machine leaves a final state).
        """
        target = pipe if pipe is not None else self._redis.pipeline(transaction=False)
        queued_hset(target, keys.flow_run(run_id), flow_fields_to_redis(run_id, fields))
        target.execute_command("EXPIRE", keys.flow_run(run_id), self._ttl)
        if "state" in fields:
            event = flow_run_event(
                run_id,
                fields["state"],
                message=fields.get("message", ""),
                record=describe_record(fields),
                reopen=reopen,
            )
            self._events.append(target, event)
            if StateType(fields["state"]).is_final:
                target.lpush(keys.flow_done(run_id), fields["state"])
                target.expire(keys.flow_done(run_id), self._ttl)
                self.release_waiters(run_id, target)
        if pipe is None:
            target.execute()

    def release_waiters(self, run_id: str, pipe: Any = None) -> None:
        """Make the messages waiting for this run's end due now (the delayed sender sends them).

        A plan node that started a run of its own (:mod:`orchestrator.runstate.linked_runs`) waits
        for it this way, holding no worker slot. Every final state a record is written with comes
        here; a run the finishing script completes moves them in that script.
        """
        self._scripts["release_waiters"](
            keys=[keys.waiters(run_id), keys.DELAYED],
            args=[repr(now())],
            client=pipe if pipe is not None else self._redis,
        )

    def emit_state(self, run_id: str, state: StateType, pipe: Any, record: dict[str, Any] | None = None) -> None:
        """Only the event of a state the record passes through at once (Pending before Running)."""
        event = flow_run_event(run_id, state.value, record=describe_record(record or {}))
        self._events.append(pipe, event)

    def rename(self, run_id: str, name: str, cause: str = "") -> None:
        """Rename a run: its record (``name_given`` so a retry keeps it) and a rename event for the API."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(keys.flow_run(run_id), mapping={"name": name, "name_given": "1"})
        self._events.append(pipe, Renamed(run_id, name, cause))
        pipe.execute()

    def read_outcome(self, run_id: str) -> FlowOutcome:
        """What a flow run's end says (its state, name, message, return template) and the results
        that template refers to, in one round trip (:class:`~.records.FlowOutcome`)."""
        return FlowOutcome.from_reply(
            self._scripts["read_outcome"](keys=[keys.flow_run(run_id)], args=[keys.result("")])
        )

    def wait_outcome(self, run_id: str, timeout: float | None) -> tuple[StateType | None, FlowOutcome]:
        """:meth:`wait_final` then :meth:`read_outcome`, in one round trip per wake-up.

        Redis runs a connection's commands in order, so the read queued behind the blocking
        BLMOVE runs the moment the run ends (the end and its latch are one atomic step): a
        one-task run's result is in hand one round trip sooner.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        latch, record_key, results = keys.flow_done(run_id), keys.flow_run(run_id), keys.result("")
        script = self._scripts["read_outcome"]
        while True:
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if left <= 0:
                outcome = self.read_outcome(run_id)
                return outcome.state_type, outcome
            pipe = self._redis.pipeline(transaction=False)
            pipe.blmove(latch, latch, max(left, 0.01), "RIGHT", "LEFT")
            pipe.evalsha(script.sha, 1, record_key, results)
            item, out = pipe.execute(raise_on_error=False)
            if isinstance(item, Exception):
                raise item
            # NOSCRIPT (Redis restarted since the script was loaded): read it the usual way, which loads it
            outcome = self.read_outcome(run_id) if isinstance(out, Exception) else FlowOutcome.from_reply(out)
            state = StateType(item) if item else outcome.state_type
            if (
                item
                or (state is not None and state.is_final)
                or (deadline is not None and time.monotonic() >= deadline)
            ):
                return state, outcome

    def read(self, run_id: str) -> dict[str, str]:
        """The raw flow run record (empty if unknown; deciders as written: :func:`~.records.deciders_of`)."""
        return full_flow_record(run_id, self._redis.hgetall(keys.flow_run(run_id)))

    def record(self, run_id: str) -> FlowRunRecord | None:
        """The typed flow run record (None if unknown)."""
        return FlowRunRecord.from_redis(run_id, self.read(run_id))

    def read_many(self, run_ids: Sequence[str]) -> list[dict[str, str]]:
        """Raw records of several flow runs in one round trip (empty where unknown)."""
        raws = read_hashes(self._redis, [keys.flow_run(r) for r in run_ids])
        return [full_flow_record(run_id, raw) for run_id, raw in zip(run_ids, raws, strict=True)]

    def field(self, run_id: str, name: str) -> str | None:
        """One field of a flow run record."""
        value = self._redis.hget(keys.flow_run(run_id), name)
        if value is None and name in RESTORED_FLOW_FIELDS:  # left out as the run's own id (flow_fields_to_redis)
            return run_id if self._redis.exists(keys.flow_run(run_id)) else None
        return full_flow_record(run_id, {name: value}).get(name) if value is not None else None

    def state(self, run_id: str) -> StateType | None:
        """A flow run's state, or None if Redis has no such run."""
        state = self._redis.hget(keys.flow_run(run_id), "state")
        return StateType(state) if state else None

    def set_state_only(self, run_id: str, state: StateType) -> None:
        """Write a state into the record without an event (the event goes out with its cause elsewhere)."""
        self._redis.hset(keys.flow_run(run_id), "state", state.value)

    def wait_final(self, run_id: str, timeout: float | None) -> StateType | None:
        """Block until the flow run is final or ``timeout`` passes; return its state.

        The run's latch list gets one item when it ends; BLMOVE onto itself waits for it
        and leaves it in place for other waiters, in one round trip.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        latch = keys.flow_done(run_id)
        while True:
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            item = self._redis.blmove(latch, latch, max(left, 0.01), "RIGHT", "LEFT") if left > 0 else None
            if item:
                return StateType(item)
            state = self.state(run_id)
            if (state is not None and state.is_final) or (deadline is not None and time.monotonic() >= deadline):
                return state

    def reopen_latch(self, run_id: str) -> None:
        """Forget that a run ended (it is about to run again), and that its end's hooks ran."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.delete(keys.flow_done(run_id))
        pipe.hdel(keys.flow_run(run_id), END_HOOKS_FIELD)
        pipe.execute()

    def claim_end_hooks(self, run_id: str) -> bool:
        """True for the one caller that may run the hooks of this run's end (a run stopped from
        outside is ended where it is stopped and seen ended by its driver: hooks run once)."""
        return bool(self._redis.hsetnx(keys.flow_run(run_id), END_HOOKS_FIELD, "1"))

    # -- a dynamic body's attempts ----------------------------------------------------------------
    def state_and_body_attempt(self, run_id: str) -> tuple[StateType | None, int]:
        """A flow run's state and which attempt of its dynamic body is the live one, in one round trip
        (a body that is no longer the live attempt was handed over or declared crashed: it stops)."""
        state, attempt = self._redis.hmget(keys.flow_run(run_id), "state", BODY_ATTEMPT_FIELD)
        return (StateType(state) if state else None), int(attempt or 1)

    def next_body_attempt(self, run_id: str) -> int:
        """Make the next attempt of a dynamic body the live one; returns its number."""
        pipe = self._redis.pipeline(transaction=True)
        pipe.hsetnx(keys.flow_run(run_id), BODY_ATTEMPT_FIELD, 1)  # a first attempt never writes its number
        pipe.hincrby(keys.flow_run(run_id), BODY_ATTEMPT_FIELD, 1)
        return int(pipe.execute()[1])

    def count_body_crash(self, run_id: str) -> int:
        """One more time a dynamic body's worker died under it; returns how many times so far."""
        return int(self._redis.hincrby(keys.flow_run(run_id), "body_crashes", 1))

    # -- a run tree's counts and plan ----------------------------------------------------
    def remaining(self, root: str) -> int | None:
        """Task runs of a run tree not final yet (None: Redis has no count for it)."""
        left = self._redis.get(keys.remaining(root))
        return int(left) if left is not None else None

    def progress(self, run_ids: Sequence[str]) -> list[tuple[str | None, str | None, int | None]]:
        """(state, mode, task runs not final) of several run trees, in one round trip."""
        if not run_ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for run_id in run_ids:
            pipe.hmget(keys.flow_run(run_id), "state", "mode")
            pipe.get(keys.remaining(run_id))
        replies = pipe.execute()
        out = []
        for i in range(len(run_ids)):
            state, mode = replies[2 * i]
            left = replies[2 * i + 1]
            out.append((state, mode, int(left) if left is not None else None))
        return out

    def plan_text(self, root: str) -> str | None:
        """A static run tree's plan as JSON text, None if gone."""
        return unpack_plan(self._redis.execute_command("GET", keys.plan(root), **RAW))

    def plan_texts(self, roots: Sequence[str]) -> list[str | None]:
        """Several plans in one round trip."""
        if not roots:
            return []
        return [unpack_plan(v) for v in self._redis.execute_command("MGET", *[keys.plan(r) for r in roots], **RAW)]

    def plans_recorded(self, roots: Sequence[str]) -> None:
        """Completed run trees whose plan the API's database now holds (its graph): in Redis, the plan
        served only a retry, and a completed run is never retried. It goes after the grace, in one round trip."""
        if not roots:
            return
        pipe = self._redis.pipeline(transaction=False)
        for root in roots:
            pipe.expire(keys.plan(root), self._grace)
        pipe.execute()

    def keep_plan(self, pipe: Any, root: str, plan: dict[str, Any], subflow_ends: dict[str, str]) -> None:
        """Queue a static run tree's plan (for retries and the graph) and which end node finishes
        which subflow run, in ``pipe``.

        Called once per tree, at its first launch: with no subflows the ends' hash does not
        exist, so there is nothing to give a TTL (one command fewer before ``.delay()`` sends)."""
        pipe.execute_command("SET", keys.plan(root), pack_plan(plan), "EX", self._ttl)  # pipe.set(..., ex=ttl)
        for end_node, run_id in subflow_ends.items():
            pipe.hset(keys.subflow_ends(root), end_node, run_id)
        if subflow_ends:
            pipe.expire(keys.subflow_ends(root), self._ttl)

    def launch_writes(self, pipe: Any) -> LaunchWrites | None:
        """The record writes queued in ``pipe``, as :meth:`launch` hands them to ``lua/launch_run.lua``;
        None when one is not a plain record write (:data:`LAUNCH_WRITES`) or they are too many for one
        script: the caller then executes ``pipe`` as usual.

        They go as one JSON argument (each command a list of its arguments as text) rather than as
        separate arguments: redis-py packs a command's arguments one by one in Python, into a
        buffer it copies at each one, about 1.5 µs an argument (a one-task run has 80), where
        ``json.dumps`` takes about 20 µs for them all. Binary arguments (the packed plan) cannot
        travel in JSON text: each goes as an argument of its own, its place holding its number."""
        rows: list[list[str | int]] = []
        binary: list[bytes] = []
        count = 0
        for args, _options in pipe.command_stack:
            if str(args[0]).upper() not in LAUNCH_WRITES:
                return None
            count += len(args)
            if count > LAUNCH_MAX_ARGS:
                return None
            row: list[str | int] = []
            for arg in args:
                kind = type(arg)
                if kind is str:
                    row.append(arg)
                elif kind is bytes:
                    binary.append(arg)
                    row.append(len(binary))
                elif kind is int or kind is float:
                    row.append(repr(arg))  # as redis-py writes a number
                else:
                    return None
            rows.append(row)
        return LaunchWrites(_LAUNCH_JSON.encode(rows), binary, count)

    def launch(self, root: str, writes: LaunchWrites, sends: Sequence[tuple[str, str, Any]]) -> bool:
        """Write a new run tree's records (:meth:`launch_writes`) and run ``sends`` (the LPUSH and PUBLISH
        that send its first messages, ``messaging.captured_sends``) in one round trip and one atomic step.

        Once only: a call redis-py repeats after its connection broke on the way back finds the root's
        record written and sends nothing again (a pipeline could push the messages twice). False when
        the records and messages are too many for one script (nothing was done)."""
        if writes.arguments + 3 * len(sends) > LAUNCH_MAX_ARGS:
            return False
        args = [writes.text, len(writes.binary), *writes.binary, *[part for send in sends for part in send]]
        self._scripts["launch_run"](keys=[keys.flow_run(root)], args=args)
        return True

    def start_dynamic_body(self, run_id: str) -> None:
        """A dynamic body (re)starts: it is the one task run its tree waits for, not final yet."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(keys.remaining(run_id), 1, ex=self._ttl)
        pipe.hdel(keys.finals(run_id), body_task_run_id(run_id))
        pipe.execute()

    def subflow_of_end(self, root: str, end_node: str) -> str | None:
        """The subflow run a static tree's end node finishes."""
        return self._redis.hget(keys.subflow_ends(root), end_node)  # type: ignore[no-any-return]

    def subflows(self, root: str) -> set[str]:
        """The subflow runs of a static run tree."""
        return set(self._redis.hvals(keys.subflow_ends(root)))


def pack_plan(plan: dict[str, Any]) -> bytes:
    """A plan as stored: zlib-compressed JSON, or the JSON text itself under :data:`PLAIN_PLAN_UNDER` bytes.

    A plan stays in Redis as long as its run (a retry re-reads it), and its nodes repeat the
    same keys, task names, options and flow run id: compressed, a node of a plain task takes
    about 55 bytes instead of about 750 (mostly its id, which does not compress).

    A plan of one task node (about 780 bytes) compresses to about 400, and compressing it cost
    ``.delay()`` about 30 µs of CPU on its path, half as much as tracing the flow: kept as text,
    it takes those 400 bytes more for as long as it is kept (a completed run's until the API
    has recorded it: :meth:`FlowRuns.plans_recorded`).
    Every reader takes both (:func:`unpack_plan`: JSON text starts with ``{``, zlib never does).
    """
    text = _COMPACT.encode(plan).encode()
    return text if len(text) < PLAIN_PLAN_UNDER else zlib.compress(text, 6)


def unpack_plan(stored: bytes | None) -> str | None:
    """The JSON text of a stored plan (one stored as plain JSON, before plans were compressed, too)."""
    if stored is None:
        return None
    return (stored if stored.startswith(b"{") else zlib.decompress(stored)).decode()
