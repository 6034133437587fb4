"""The task-runs repository: a task run's record, its start and end, and its place in a run tree.

The hot paths (a task run starting, a task run ending) are one Lua script each
(``lua/start_task_run.lua``, ``lua/finish_task_run.lua``): one round trip, atomic,
and idempotent when Celery redelivers a message. A task run becomes final exactly
once (the ``finals`` hash of its run tree); the end that brings the tree's count of
task runs not yet final to zero decides the root flow run's end.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.runstate import keys
from orchestrator.runstate.connection import now, queued_hset, read_hashes
from orchestrator.runstate.event_stream import EventStream
from orchestrator.runstate.events import StreamEvent, encode, flow_run_event, task_run_event
from orchestrator.runstate.records import (
    NewTaskRun,
    describe_record,
    full_task_record,
    slim_task_fields,
    task_fields_to_redis,
)
from orchestrator.runstate.scripts import Scripts
from orchestrator.runstate.sent_scripts import SentScript
from orchestrator.states import FINAL_STATES, StateType

CRASH_RECORD_JSON = json.JSONEncoder(default=str)  # json.dumps(..., default=str) without a new encoder per start
DOWNSTREAM_PREFIX = keys.downstream("")  # + a task run id: its downstream set (the scripts build the keys)


@dataclass(frozen=True)
class Finished:
    """What making a task run final reports."""

    left: int | None  # task runs of the tree not final yet; None: it already was final
    flow_completed: bool  # this call ended the root flow run Completed and forgot the tree's edges (same script)
    flow_was_final: bool  # the tree is done but the root run had already ended (timed out, ...)
    ready: list[dict[str, Any]]  # join signatures that became ready to send
    sent: bool = False  # the messages given to send with this end were sent (by this call or its lost-reply twin)

    @property
    def needs_decision(self) -> bool:
        """The tree is done but the root run did not complete: Python records why."""
        return self.left == 0 and not self.flow_completed and not self.flow_was_final


@dataclass(frozen=True)
class Started:
    """What recording a start fetched on the way."""

    stored_inputs: dict[str, Any] | None  # inputs kept in Redis instead of the message
    results: dict[str, str | None]  # prefetched results of upstream task runs
    stale: bool = False  # a newer attempt was sent: this message must do nothing
    running_elsewhere: bool = False  # a redelivered message whose first execution still heartbeats
    start: int = 0  # how many executions of this task run have begun, this one included


STALE = Started(None, {}, stale=True)
RUNNING_ELSEWHERE = Started(None, {}, running_elsewhere=True)


class PendingStart:
    """A start sent to Redis (:meth:`TaskRuns.start`) whose answer is read by :meth:`result`, once.

    Whoever holds one must read it: until then it holds a connection of its own.
    """

    __slots__ = ("_prefetch", "_sent")

    def __init__(self, sent: SentScript, prefetch: tuple[str, ...]) -> None:
        self._sent = sent
        self._prefetch = prefetch

    def result(self) -> Started | None:
        """What the start found (see :meth:`TaskRuns.start`)."""
        out = self._sent.reply()
        if out == -1:
            return STALE
        if out == -2:
            return RUNNING_ELSEWHERE
        if not out:
            return None
        stored = json.loads(out[1]) if out[1] else None
        return Started(stored, dict(zip(self._prefetch, out[2:], strict=True)), start=int(out[0]))


class TaskRuns:
    """Task run records, their starts and ends, and the run tree's joins."""

    def __init__(self, redis: Any, scripts: Scripts, ttl: int, events: EventStream, grace: int) -> None:
        self._redis = redis
        self._scripts = scripts
        self._ttl = ttl
        self._grace = grace  # what a completed tree keeps its finals and count for (Settings.finished_grace_seconds)
        self._events = events

    # -- creating ----------------------------------------------------------------------------
    def add(
        self,
        pipe: Any,
        run: NewTaskRun,
        *,
        in_flows: Iterable[str] = (),
        downstream: Iterable[str] = (),
        stored_input: str | None = None,
    ) -> None:
        """Queue a new task run in ``pipe``: its record (Pending), the flow runs whose sets list it,
        the task runs that wait for it, and its inputs kept in the run store (if any)."""
        ttl = self._ttl
        pipe.hset(keys.task_run(run.id), mapping=run.to_redis())
        pipe.expire(keys.task_run(run.id), ttl)
        for waiting in downstream:
            pipe.sadd(keys.downstream(run.id), waiting)
            pipe.expire(keys.downstream(run.id), ttl)
        for flow_run_id in dict.fromkeys(in_flows):
            pipe.sadd(keys.flow_tasks(flow_run_id), run.id)
            pipe.expire(keys.flow_tasks(flow_run_id), ttl)
        if stored_input is not None:
            self.keep_input(pipe, run.root, run.id, stored_input)

    def keep_input(self, pipe: Any, root: str, trid: str, text: str) -> None:
        """Queue a task run's inputs kept in the run store (not its message) in ``pipe``."""
        pipe.hset(keys.inputs(root), trid, text)
        pipe.expire(keys.inputs(root), self._ttl)

    def write_tree(
        self,
        pipe: Any,
        root: str,
        runs: Sequence[tuple[NewTaskRun, Sequence[str]]],
        *,
        whole_tree_in_root: bool,
        join_pending: dict[str, int],
        join_signatures: dict[str, Any],
        tolerant: Iterable[str],
        stored_inputs: dict[str, str],
    ) -> None:
        """Queue a static run tree's task runs in ``pipe``: each record (Pending) with the task runs
        it waits for, the tree's count, each flow run's set of task runs (the root's holds the whole
        tree when there are subflows), the join tables, the tolerant set and the kept inputs."""
        ttl = self._ttl
        queue = pipe.execute_command  # the commands as redis-py's methods queue them (see queued_hset)
        queue("SET", keys.remaining(root), len(runs), "EX", ttl)
        by_flow: dict[str, list[str]] = {}
        for run, upstream in runs:
            by_flow.setdefault(run.flow_run_id, []).append(run.id)
            queued_hset(pipe, keys.task_run(run.id), run.to_redis())
            queue("EXPIRE", keys.task_run(run.id), ttl)
            for up in upstream:
                queue("SADD", keys.downstream(up), run.id)
                queue("EXPIRE", keys.downstream(up), ttl)
        if whole_tree_in_root:
            by_flow[root] = [run.id for run, _ in runs]
        for flow_run_id, ids in by_flow.items():
            queue("SADD", keys.flow_tasks(flow_run_id), *ids)
            queue("EXPIRE", keys.flow_tasks(flow_run_id), ttl)
        if join_pending:
            pipe.hset(keys.join_pending(root), mapping=join_pending)
            pipe.hset(keys.join_signature(root), mapping={k: json.dumps(v) for k, v in join_signatures.items()})
            pipe.expire(keys.join_pending(root), ttl)
            pipe.expire(keys.join_signature(root), ttl)
        tolerant = list(tolerant)
        if tolerant:
            pipe.sadd(keys.tolerant(root), *tolerant)
            pipe.expire(keys.tolerant(root), ttl)
        if stored_inputs:
            pipe.hset(keys.inputs(root), mapping=stored_inputs)
            pipe.expire(keys.inputs(root), ttl)

    def make_not_final(self, pipe: Any, root: str, trids: set[str], maps: set[str]) -> None:
        """Queue in ``pipe`` what lets task runs run again (a flow retry): they, and the children
        the ``maps`` among them expanded into, are no longer final, and the maps expand anew."""
        for trid in maps:
            expanded = self._redis.get(keys.expanded(trid))
            if expanded:
                pipe.delete(keys.expanded(trid))
                pipe.hdel(keys.finals(root), *[f"{trid}-{i}" for i in range(int(expanded))])
        if trids:
            pipe.hdel(keys.finals(root), *trids)

    def add_to_dynamic_tree(
        self, run: NewTaskRun, stored_input: str | None, journal: Callable[[Any], None] | None = None
    ) -> None:
        """A dynamic body submitted a task: one more task run its tree waits for, in one round trip
        (with the body's journal entry for the call, ``journal`` queueing it in the pipeline)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.incr(keys.remaining(run.root))
        self.add(pipe, run, in_flows=(run.flow_run_id, run.root), stored_input=stored_input)
        if journal is not None:
            journal(pipe)
        pipe.execute()

    # -- starting and ending -------------------------------------------------------------------
    def started(
        self,
        root: str,
        trid: str,
        fields: dict[str, Any],
        *,
        stored_inputs: bool = False,
        prefetch: Sequence[str] = (),
        crash_record: dict[str, Any] | None = None,
        alive_since: float | None = None,
    ) -> Started | None:
        """Record a start and wait for its answer: :meth:`start` and :meth:`PendingStart.result` in one."""
        return self.start(
            root,
            trid,
            fields,
            stored_inputs=stored_inputs,
            prefetch=prefetch,
            crash_record=crash_record,
            alive_since=alive_since,
        ).result()

    def start(
        self,
        root: str,
        trid: str,
        fields: dict[str, Any],
        *,
        stored_inputs: bool = False,
        prefetch: Sequence[str] = (),
        crash_record: dict[str, Any] | None = None,
        alive_since: float | None = None,
    ) -> PendingStart:
        """Send a start to Redis; its :meth:`PendingStart.result` is None when the task run is already
        final (a redelivery), :data:`STALE` when the crash detector has sent a newer attempt than this
        message's, :data:`RUNNING_ELSEWHERE` when ``alive_since`` is given and the task run has
        heartbeaten since then. The caller may prepare meanwhile, but nothing of the task may run
        before that answer is read.

        In the same round trip it fetches the run's stored inputs (if asked) and the
        results of the ``prefetch`` task runs, and, given a ``crash_record``, puts the
        execution under the crash detector (a heartbeat now; the worker's beats renew it).

        ``alive_since`` is for a message the broker delivered again (now minus the crash window):
        RabbitMQ gives back every unacknowledged message of a connection it lost, also those whose
        tasks still run on a worker that reconnects. A heartbeat that recent means that execution
        is alive, and this one must not run beside it; if it dies, the crash detector takes over as
        for any crash. A first delivery passes None and the script reads no heartbeat.
        """
        event = encode(task_run_event(trid, fields["state"], record=describe_record(fields)))
        sent = SentScript(
            self._redis,
            self._scripts["start_task_run"],
            [
                keys.task_run(trid),
                keys.finals(root),
                keys.EVENTS_STREAM,
                keys.inputs(root),
                keys.HEARTBEATS,
                keys.HEARTBEAT_RECORDS,
            ],
            [
                trid,
                self._ttl,
                json.dumps(slim_task_fields(fields)),
                event,
                "1" if stored_inputs else "0",
                CRASH_RECORD_JSON.encode(crash_record) if crash_record else "",
                repr(now()),
                "" if alive_since is None else repr(alive_since),
                *[keys.result(t) for t in prefetch],
            ],
        )
        return PendingStart(sent, tuple(prefetch))

    def first_poke(self, trid: str) -> float:
        """When a sensor first asked to be poked again (recorded on its first RETRY)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hsetnx(keys.task_run(trid), "first_poke", repr(now()))
        pipe.hget(keys.task_run(trid), "first_poke")
        return float(pipe.execute()[1])

    def supersede(self, trid: str, attempt: int, pipe: Any = None) -> None:
        """Make the messages of attempts before ``attempt`` stale: the next attempt of the task run is
        kept (in the delayed set or the broker) and carries it on.

        The message of an attempt that is over is acknowledged only as its execution returns; a
        worker lost in between has the broker deliver it again: RabbitMQ at once, Redis after the
        visibility timeout. Without this, it would start the task run again as that old attempt,
        beside (or before) the kept one. ``start_task_run.lua`` refuses it as stale instead.
        """
        target = pipe if pipe is not None else self._redis
        target.hset(keys.task_run(trid), "min_attempt", attempt)

    def progress(self, trid: str, fields: dict[str, Any], pipe: Any = None) -> None:
        """Record a non-final state change (AwaitingRetry) without the final guard."""
        target = pipe if pipe is not None else self._redis.pipeline(transaction=False)
        target.hset(keys.task_run(trid), mapping=task_fields_to_redis(fields))
        target.expire(keys.task_run(trid), self._ttl)
        event = task_run_event(trid, fields["state"], message=fields.get("message", ""), record=describe_record(fields))
        self._events.append(target, event)
        if pipe is None:
            target.execute()

    def set_fields(self, trid: str, fields: dict[str, Any], events: Iterable[StreamEvent]) -> None:
        """Write fields of a task run and send events about it, in one round trip (no final guard)."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hset(keys.task_run(trid), mapping=task_fields_to_redis(fields))
        self._events.append_all(pipe, events)
        pipe.execute()

    def finished(
        self,
        root: str,
        trid: str,
        state: StateType,
        fields: dict[str, Any],
        result_text: str | None = None,
        sends: Sequence[tuple[str, str, Any]] = (),
    ) -> Finished:
        """Make a task run final exactly once (see :class:`Finished` for what comes back).

        ``sends``: Redis commands (LPUSH, PUBLISH) that send messages, run in the same script only if
        this call makes the task run final: what follows it in a chain goes out with its end, in
        the round trip the end makes anyway, and never before its result is stored. They may end
        with the ZREM and HDEL that acknowledge the message that ran it (kombu's Redis transport):
        acknowledged in the same step as its end, never one without the other.
        """
        fields = fields | {"state": state.value}
        event = encode(
            task_run_event(trid, state.value, message=fields.get("message", ""), record=describe_record(fields))
        )
        at = now()
        completed = encode(flow_run_event(root, StateType.COMPLETED.value, ts=at))
        out = SentScript(
            self._redis,
            self._scripts["finish_task_run"],
            [
                keys.task_run(trid),
                keys.finals(root),
                keys.EVENTS_STREAM,
                keys.remaining(root),
                keys.result(trid),
                keys.join_pending(root),
                keys.join_signature(root),
                keys.flow_run(root),
                keys.flow_done(root),
                keys.tolerant(root),
                keys.waiters(root),
                keys.DELAYED,
                keys.wakeups(root),
                keys.flow_tasks(root),
                keys.inputs(root),
            ],
            [
                trid,
                self._ttl,
                json.dumps(task_fields_to_redis(fields)),
                event,
                state.value,
                result_text or "",
                keys.downstream(trid),
                repr(at),
                root,
                completed,
                self._grace,
                DOWNSTREAM_PREFIX,
                *[part for write in sends for part in write],
            ],
        ).reply()  # the lean path of SentScript, read at once
        left = int(out[0])
        if left == -1:
            return Finished(None, False, False, [], sent=out[1] == "sent")
        ready = [json.loads(sig) for sig in out[2:]]
        return Finished(left, out[1] == "completed", out[1] == "final", ready, sent=bool(sends))

    def forget_edges(self, root: str) -> int:
        """A run tree whose task runs are all final: drop what only routes ends to waiting task runs
        (each task run's downstream set, the join tables, the tolerant set, inputs kept for a start),
        about 350 bytes per task run of a fan-in. Call it before the tree's end is decided: a flow
        retry that the decision schedules writes those of the task runs it runs again anew.
        A finish that completes the root flow run (:attr:`Finished.flow_completed`) did this already,
        in its own script: a completed tree is never retried. Returns how many keys it removed."""
        return int(
            self._scripts["forget_tree_edges"](
                keys=[
                    keys.flow_tasks(root),
                    keys.join_pending(root),
                    keys.join_signature(root),
                    keys.tolerant(root),
                    keys.inputs(root),
                ],
                args=[DOWNSTREAM_PREFIX],
            )
        )

    # -- reading ---------------------------------------------------------------------------
    def read(self, trid: str) -> dict[str, str]:
        """The raw task run record, with its id and root (empty if unknown)."""
        return full_task_record(trid, self._redis.hgetall(keys.task_run(trid)))

    def read_many(self, trids: Sequence[str]) -> list[dict[str, str]]:
        """Raw records of several task runs in one round trip, with their ids and roots (empty where unknown)."""
        raws = read_hashes(self._redis, [keys.task_run(trid) for trid in trids])
        return [full_task_record(trid, raw) for trid, raw in zip(trids, raws, strict=True)]

    def fields_of(self, trids: Sequence[str], *names: str) -> list[list[str | None]]:
        """Some fields of several task runs in one round trip, as stored (``id`` and ``root``: read_many)."""
        if not trids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for trid in trids:
            pipe.hmget(keys.task_run(trid), *names)
        return list(pipe.execute())

    def of_flow(self, run_id: str) -> list[dict[str, str]]:
        """Every task run of a flow run (a root's: of its whole tree), sorted by id."""
        ids = sorted(self._redis.smembers(keys.flow_tasks(run_id)))
        return [record for record in self.read_many(ids) if record]

    def labels(self, trids: list[str]) -> dict[str, str]:
        """Human labels of task runs (their ids where unknown), in one round trip."""
        labels = [row[0] for row in self.fields_of(trids, "label")]
        return {trid: label or trid for trid, label in zip(trids, labels, strict=True)}

    def await_a_finish(self, root: str, timeout: float) -> None:
        """Block until a task run of a dynamic run tree ends or ``timeout`` passes. The finishing script
        keeps one wake-up in the tree's list (however many ended since): the caller reads the states it
        waits for after this, so an end it needs is never missed."""
        self._redis.blpop([keys.wakeups(root)], timeout=max(timeout, 0.001))

    def final_states(self, root: str, trids: list[str]) -> dict[str, StateType | None]:
        """Final state of each task run, None where it is not final yet."""
        if not trids:
            return {}
        values = self._redis.hmget(keys.finals(root), trids)
        return {t: StateType(v) if v else None for t, v in zip(trids, values, strict=True)}

    def ended(self, root: str, trid: str) -> bool:
        """Whether a task run is final: in its tree's finals or, once a completed tree's finals are gone
        (after ``Settings.finished_grace_seconds``), by its own record's state. One round trip."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hexists(keys.finals(root), trid)
        pipe.hget(keys.task_run(trid), "state")
        in_finals, state = pipe.execute()
        return bool(in_finals) or state in FINAL_STATES  # StrEnum members: a state's text is found

    def final_end(self, root: str, trid: str) -> tuple[StateType, str] | None:
        """A task run's final state and its message in one round trip; None while it is not final."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.hget(keys.finals(root), trid)
        pipe.hget(keys.task_run(trid), "message")
        state, message = pipe.execute()
        return (StateType(state), message or "") if state else None

    def all_final(self, root: str) -> dict[str, str]:
        """Every final task run of a run tree and its state."""
        return self._redis.hgetall(keys.finals(root))  # type: ignore[no-any-return]

    def results(self, trids: list[str]) -> dict[str, str | None]:
        """Serialized results of task runs (None where missing)."""
        if not trids:
            return {}
        values = self._redis.mget([keys.result(t) for t in trids])
        return dict(zip(trids, values, strict=True))

    def is_tolerant(self, root: str, trid: str) -> bool:
        """Whether a task run decides for itself after an upstream failure (trigger rules)."""
        return bool(self._redis.sismember(keys.tolerant(root), trid))

    def downstream_of(self, trid: str) -> set[str]:
        """Task runs registered as depending on ``trid``."""
        return self._redis.smembers(keys.downstream(trid))  # type: ignore[no-any-return]

    # -- joins and maps ---------------------------------------------------------------------
    def claim_expansion(self, root: str, trid: str, children: int) -> bool:
        """Add a map's children to the run tree's count, once; False on a redelivery."""
        return bool(
            self._scripts["claim_expansion"](
                keys=[keys.expanded(trid), keys.remaining(root)], args=[children, self._ttl]
            )
        )

    def register_waiting(
        self, root: str, trid: str, upstream: list[str], signature: str, tolerant: bool = False
    ) -> tuple[str, str | None, str | None]:
        """Register a task to be sent when its upstreams are done.

        Returns ("ok", count, None): count upstreams still running (0: send it now);
        or ("blocked", upstream id, its state) when an upstream already failed and
        the task is not ``tolerant`` (a trigger rule or tolerated upstreams decide later).
        """
        out = self._scripts["register_waiting"](
            keys=[keys.finals(root), keys.join_pending(root), keys.join_signature(root), keys.tolerant(root)],
            args=[trid, signature, keys.downstream(""), "1" if tolerant else "0", *upstream],
        )
        if out[0] == "blocked":
            return "blocked", out[1], out[2]
        return "ok", out[1], None
