"""Run state in Redis: flow runs, task runs, results, joins and the event stream.

Workers, clients and (later) the API read and write runs only through this module,
so the key layout and the "final exactly once" rule live in one place. The hot
paths (a task starting, a task ending) are one Lua script each: one round trip,
atomic, and idempotent when Celery redelivers a message.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from orchestrator.config.settings import get_settings
from orchestrator.config.tls import tls_options_for
from orchestrator.errors import ConnectionProblem
from orchestrator.guards.redaction import mask_urls_in, masked_url
from orchestrator.runstate import keys
from orchestrator.states import FAILED_STATES, FINAL_STATES, StateType

JSON_FIELDS = frozenset({"returns", "deciders", "parameters", "result_refs"})  # always stored as JSON text

# KEYS: task hash, finals, events ; ARGV: trid, ttl, maxlen, fields json, event json
# KEYS: task hash, finals, events, stored inputs ; ARGV: trid, ttl, maxlen, fields json, event json,
#       '1' to fetch stored inputs, result keys to prefetch...
# Returns 0 when the task run is already final, -1 when a newer attempt was sent (this message is
# stale: the crash detector ran the task again), else {start number, stored inputs or nil, results...}
# (the start number counts every execution that began, redeliveries too; the crash detector compares it).
_START = """
if redis.call('HEXISTS', KEYS[2], ARGV[1]) == 1 then return 0 end
local fields = cjson.decode(ARGV[4])
local newest = redis.call('HGET', KEYS[1], 'min_attempt')
if newest and tonumber(fields['attempts']) < tonumber(newest) then return -1 end
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'event', ARGV[5])
local out = {redis.call('HINCRBY', KEYS[1], 'starts', 1), false}
if ARGV[6] == '1' then out[2] = redis.call('HGET', KEYS[4], ARGV[1]) end
for i = 7, #ARGV do table.insert(out, redis.call('GET', ARGV[i])) end
return out
"""

# KEYS: task hash, finals, events, remaining, result, join pending, join sigs, root flow run, root latch,
#       tolerant set
# ARGV: trid, ttl, maxlen, fields json, event json, state, result text ('' = none), downstream key,
#       now, root run id
# Returns {left, flow, ready signatures...}: left = task runs of the tree not final (-1: this one
# already was), flow = 'completed' when this call ended the root flow run Completed, 'decide'
# when the tree is done but the run did not complete (Python writes the detailed message).
_FINISH = """
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[6]) == 0 then return {-1, ''} end
redis.call('EXPIRE', KEYS[2], ARGV[2])
if ARGV[7] ~= '' then redis.call('SET', KEYS[5], ARGV[7], 'EX', ARGV[2]) end
local fields = cjson.decode(ARGV[4])
for k, v in pairs(fields) do redis.call('HSET', KEYS[1], k, v) end
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'event', ARGV[5])
local left = redis.call('DECR', KEYS[4])
local out = {left, ''}
for _, d in ipairs(redis.call('SMEMBERS', ARGV[8])) do
  if redis.call('HEXISTS', KEYS[6], d) == 1 then
    if redis.call('HINCRBY', KEYS[6], d, -1) == 0 then
      -- after a failure only tolerant tasks are sent (they decide); the rest are marked
      if redis.call('HEXISTS', KEYS[2], d) == 0 and
         (ARGV[6] == 'Completed' or redis.call('SISMEMBER', KEYS[10], d) == 1) then
        table.insert(out, redis.call('HGET', KEYS[7], d))
      end
    end
  end
end
local current = redis.call('HGET', KEYS[8], 'state')
if left == 0 and FINAL[current] then
  out[2] = 'final'  -- ended already (timed out, cancelled): never overwritten
elseif left == 0 then
  out[2] = 'decide'
  local body_error = redis.call('HGET', KEYS[8], 'body_error')
  if (not body_error) or body_error == '' then
    local ok = true
    local raw = redis.call('HGET', KEYS[8], 'deciders')
    if raw then
      for _, d in ipairs(cjson.decode(raw)) do
        local st = redis.call('HGET', KEYS[2], d)
        if (not st) or FAILED[st] then ok = false break end
      end
    end
    if ok then
      redis.call('HSET', KEYS[8], 'state', 'Completed', 'ended', ARGV[9], 'message', '')
      redis.call('EXPIRE', KEYS[8], ARGV[2])
      local event = cjson.encode({kind='flow_run', id=ARGV[10], state='Completed', ts=tonumber(ARGV[9]), message=''})
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'event', event)
      redis.call('LPUSH', KEYS[9], 'Completed')
      redis.call('EXPIRE', KEYS[9], ARGV[2])
      out[2] = 'completed'
    end
  end
end
return out
""".replace("FAILED[st]", "(" + " or ".join(f"st == '{s.value}'" for s in sorted(FAILED_STATES)) + ")").replace(
    "FINAL[current]", "(" + " or ".join(f"current == '{s.value}'" for s in sorted(FINAL_STATES)) + ")"
)

# KEYS: finals, join pending, join sigs, tolerant set
# ARGV: trid, signature, downstream-key prefix, '1' if tolerant, ups...
# Registers a task that waits for upstreams (dynamic flows): atomically with _FINISH,
# so an upstream that ends meanwhile is either seen final here or decrements the join.
_REGISTER = """
local tolerant = ARGV[4] == '1'
if tolerant then redis.call('SADD', KEYS[4], ARGV[1]) end
local count = 0
for i = 5, #ARGV do
  local up = ARGV[i]
  redis.call('SADD', ARGV[3] .. up, ARGV[1])
  local st = redis.call('HGET', KEYS[1], up)
  if st then
    if st ~= 'Completed' and not tolerant then return {'blocked', up, st} end
  else
    count = count + 1
  end
end
if count > 0 then
  redis.call('HSET', KEYS[2], ARGV[1], count)
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
end
return {'ok', tostring(count)}
"""


# KEYS: expanded flag, remaining ; ARGV: children, ttl. Counts a map's children exactly once.
_EXPAND = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('INCRBY', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


# KEYS: flow run hash ; ARGV: result key prefix. The record and its referenced results at once.
_OUTCOME = """
local out = {redis.call('HGETALL', KEYS[1])}
local refs = redis.call('HGET', KEYS[1], 'result_refs')
if refs then
  for _, id in ipairs(cjson.decode(refs)) do table.insert(out, redis.call('GET', ARGV[1] .. id) or false) end
end
return out
"""


# KEYS: delayed zset ; ARGV: now, limit, lease seconds. Claims due messages by pushing their
# score a lease ahead: a dispatcher that dies before sending lets them come due again.
_CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, item in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[1] + ARGV[3], item) end
return due
"""

# KEYS: delayed set; ARGV: message, the score it was claimed with. Removes it only if still claimed.
_SENT = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) == tonumber(ARGV[2]) then redis.call('ZREM', KEYS[1], ARGV[1]) end
"""


@dataclass(frozen=True)
class Finished:
    """What making a task run final reports."""

    left: int | None  # task runs of the tree not final yet; None: it already was final
    flow_completed: bool  # this call ended the root flow run Completed (in the same script)
    flow_was_final: bool  # the tree is done but the root run had already ended (timed out, ...)
    ready: list[dict[str, Any]]  # join signatures that became ready to send

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
    start: int = 0  # how many executions of this task run have begun, this one included


STALE = Started(None, {}, stale=True)


INTERNAL_FIELDS = frozenset({"state", "message", "returns", "deciders", "body_error"})


def describe_record(fields: dict[str, Any]) -> dict[str, Any]:
    """The descriptive part of a run record that rides along in its events (not its internals)."""
    return {k: v for k, v in fields.items() if k not in INTERNAL_FIELDS}


_outage_seconds = 0.0  # how long this process's Redis calls wait for a lost Redis (see ride_out_outages)


def outage_retry(seconds: float | None = None) -> dict[str, Any]:
    """redis-py connection options that retry a lost connection for about ``seconds``
    (by default what :func:`ride_out_outages` set).

    Empty (fail at once, redis-py's default) for 0. The backoff grows from 0.1 s to 1 s, so a
    quick restart costs little and a long one is polled once a second.
    """
    seconds = _outage_seconds if seconds is None else seconds
    if seconds <= 0:
        return {}
    retry = Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=int(seconds) + 3)
    return {"retry": retry, "retry_on_error": [redis.ConnectionError, redis.TimeoutError]}


def ride_out_outages(seconds: float) -> None:
    """Make this process's run-store calls wait up to about ``seconds`` for a lost Redis to come back.

    Workers call it (``workers/app.py``): a task that ends while Redis restarts must still
    record its end (and send what comes next) once Redis is back; failing at once loses the
    end, and its flow run would wait forever. Clients and the API keep failing at once, so a
    request answers 503 instead of hanging. Call it before the first :func:`get_store`.
    """
    global _outage_seconds
    _outage_seconds = seconds
    _client.cache_clear()
    _store_for.cache_clear()


@lru_cache(maxsize=32)
def _registered(client: Any, source: str) -> Any:
    """A Lua script registered once per client (registering hashes its source)."""
    return client.register_script(source)


@lru_cache(maxsize=8)
def _client(url: str) -> Any:
    """One client (and pool) per URL; ``Any`` because decode_responses=True makes every
    reply a ``str`` while redis-py's annotations say ``bytes | str``."""
    tls = tls_options_for(url, get_settings())  # verified like the broker's
    return redis.Redis.from_url(url, decode_responses=True, health_check_interval=30, **outage_retry(), **tls)


def now() -> float:
    """Wall-clock time stamp used in every record (seconds since the epoch)."""
    return time.time()


class RunStore:
    """Reads and writes run records for one Redis."""

    def __init__(self, url: str | None = None) -> None:
        settings = get_settings()
        self.url = url or settings.redis_url
        self.redis: Any = _client(self.url)
        self.ttl = settings.result_ttl_seconds
        self.maxlen = settings.events_maxlen
        self._start = self.redis.register_script(_START)
        self._finish = self.redis.register_script(_FINISH)
        self._register = self.redis.register_script(_REGISTER)
        self._expand = self.redis.register_script(_EXPAND)
        self._outcome = self.redis.register_script(_OUTCOME)
        self._claim_due = self.redis.register_script(_CLAIM_DUE)
        self._sent = self.redis.register_script(_SENT)

    def script(self, source: str) -> Any:
        """A Lua script kept by another module (slots, crash claims), registered once for this client."""
        return _registered(self.redis, source)

    def unreachable(self, exc: Exception) -> ConnectionProblem:
        """The error to raise when Redis does not answer: it names the URL (its password masked:
        this text reaches 503 bodies, health answers, CLI output and logs) and the fix."""
        return ConnectionProblem(
            f"cannot reach Redis at {masked_url(self.url)} ({mask_urls_in(str(exc))}); start redis-server or set "
            "ORCHESTRATOR_REDIS_URL to a Redis that is running."
        )

    def ping(self) -> None:
        """Raise ConnectionProblem with the URL if Redis does not answer."""
        try:
            self.redis.ping()
        except redis.RedisError as exc:
            raise self.unreachable(exc) from exc

    # -- events -----------------------------------------------------------------------
    @staticmethod
    def event(kind: str, run_id: str, state: str, **data: Any) -> str:
        """One state event as JSON (the API recorder's input)."""
        return json.dumps({"kind": kind, "id": run_id, "state": state, "ts": now(), **data})

    # -- flow runs --------------------------------------------------------------------
    def write_flow_run(self, run_id: str, fields: dict[str, Any], pipe: Any = None, *, reopen: bool = False) -> None:
        """Create or update a flow run record; a state field also emits an event.

        The event carries the record's descriptive fields, so the API can record a
        run it has never seen (one sent with ``.delay()``). ``reopen`` marks an
        explicit retry of a final run (the only way the state machine leaves a final state).
        """
        target = pipe if pipe is not None else self.redis.pipeline(transaction=False)
        encoded = {k: v if isinstance(v, str) and k not in JSON_FIELDS else json.dumps(v) for k, v in fields.items()}
        target.hset(keys.flow_run(run_id), mapping=encoded)
        target.expire(keys.flow_run(run_id), self.ttl)
        if "state" in fields:
            extra: dict[str, Any] = {"record": describe_record(fields)}
            if reopen:
                extra["reopen"] = True
            event = self.event("flow_run", run_id, fields["state"], message=fields.get("message", ""), **extra)
            target.xadd(keys.EVENTS_STREAM, {"event": event}, maxlen=self.maxlen, approximate=True)
            if StateType(fields["state"]).is_final:
                target.lpush(keys.flow_done(run_id), fields["state"])
                target.expire(keys.flow_done(run_id), self.ttl)
        if pipe is None:
            target.execute()

    def emit_flow_event(self, run_id: str, state: StateType, pipe: Any, record: dict[str, Any] | None = None) -> None:
        """Only the event of a state the record passes through at once (Pending before Running)."""
        event = self.event("flow_run", run_id, state.value, message="", record=describe_record(record or {}))
        pipe.xadd(keys.EVENTS_STREAM, {"event": event}, maxlen=self.maxlen, approximate=True)

    def rename_flow_run(self, run_id: str, name: str, cause: str = "") -> None:
        """Rename a run: its record (``name_given`` so a retry keeps it) and a rename event for the API."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.flow_run(run_id), mapping={"name": name, "name_given": "1"})
        event = self.event("flow_run_rename", run_id, "", name=name, cause=cause)
        pipe.xadd(keys.EVENTS_STREAM, {"event": event}, maxlen=self.maxlen, approximate=True)
        pipe.execute()

    def emit_task_events(self, events: list[str], pipe: Any) -> None:
        """Append prepared task run events (see :meth:`event`) in ``pipe``."""
        for event in events:
            pipe.xadd(keys.EVENTS_STREAM, {"event": event}, maxlen=self.maxlen, approximate=True)

    def read_outcome(self, run_id: str) -> tuple[dict[str, str], dict[str, str | None]]:
        """A flow run's record and the results its return value refers to, in one round trip."""
        out = self._outcome(keys=[keys.flow_run(run_id)], args=[keys.result("")])
        flat = out[0]
        record = dict(zip(flat[::2], flat[1::2], strict=True))
        refs = json.loads(record.get("result_refs", "[]"))
        return record, dict(zip(refs, out[1:], strict=False))

    def read_flow_run(self, run_id: str) -> dict[str, str]:
        """The raw flow run record (empty if unknown)."""
        return self.redis.hgetall(keys.flow_run(run_id))  # type: ignore[return-value]

    def flow_state(self, run_id: str) -> StateType | None:
        """A flow run's state, or None if Redis has no such run."""
        state = self.redis.hget(keys.flow_run(run_id), "state")
        return StateType(state) if state else None

    def wait_flow_final(self, run_id: str, timeout: float | None) -> StateType | None:
        """Block until the flow run is final or ``timeout`` passes; return its state.

        The run's latch list gets one item when it ends; BLMOVE onto itself waits for it
        and leaves it in place for other waiters, in one round trip.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        latch = keys.flow_done(run_id)
        while True:
            left = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            item = self.redis.blmove(latch, latch, max(left, 0.01), "RIGHT", "LEFT") if left > 0 else None
            if item:
                return StateType(item)
            state = self.flow_state(run_id)
            if (state is not None and state.is_final) or (deadline is not None and time.monotonic() >= deadline):
                return state

    # -- task runs --------------------------------------------------------------------
    def task_started(
        self,
        root: str,
        trid: str,
        fields: dict[str, Any],
        *,
        stored_inputs: bool = False,
        prefetch: Sequence[str] = (),
    ) -> Started | None:
        """Record a start; None when the task run is already final (a redelivery), :data:`STALE`
        when the crash detector has sent a newer attempt than this message's.

        In the same round trip it fetches the run's stored inputs (if asked) and the
        results of the ``prefetch`` task runs.
        """
        event = self.event("task_run", trid, fields["state"], record=describe_record(fields))
        out = self._start(
            keys=[keys.task_run(trid), keys.finals(root), keys.EVENTS_STREAM, keys.inputs(root)],
            args=[
                trid,
                self.ttl,
                self.maxlen,
                json.dumps(fields),
                event,
                "1" if stored_inputs else "0",
                *[keys.result(t) for t in prefetch],
            ],
        )
        if out == -1:
            return STALE
        if not out:
            return None
        stored = json.loads(out[1]) if out[1] else None
        return Started(stored, dict(zip(prefetch, out[2:], strict=True)), start=int(out[0]))

    def first_poke(self, trid: str) -> float:
        """When a sensor first asked to be poked again (recorded on its first RETRY)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hsetnx(keys.task_run(trid), "first_poke", repr(now()))
        pipe.hget(keys.task_run(trid), "first_poke")
        return float(pipe.execute()[1])

    def task_progress(self, trid: str, fields: dict[str, Any]) -> None:
        """Record a non-final state change (AwaitingRetry) without the final guard."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(keys.task_run(trid), mapping={k: str(v) for k, v in fields.items()})
        pipe.expire(keys.task_run(trid), self.ttl)
        event = self.event(
            "task_run", trid, fields["state"], message=fields.get("message", ""), record=describe_record(fields)
        )
        pipe.xadd(keys.EVENTS_STREAM, {"event": event}, maxlen=self.maxlen, approximate=True)
        pipe.execute()

    def task_finished(
        self,
        root: str,
        trid: str,
        state: StateType,
        fields: dict[str, Any],
        result_text: str | None = None,
    ) -> Finished:
        """Make a task run final exactly once (see :class:`Finished` for what comes back)."""
        fields = fields | {"state": state.value}
        event = self.event(
            "task_run", trid, state.value, message=fields.get("message", ""), record=describe_record(fields)
        )
        out = self._finish(
            keys=[
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
            ],
            args=[
                trid,
                self.ttl,
                self.maxlen,
                json.dumps({k: str(v) for k, v in fields.items()}),
                event,
                state.value,
                result_text or "",
                keys.downstream(trid),
                repr(now()),
                root,
            ],
        )
        left = int(out[0])
        if left == -1:
            return Finished(None, False, False, [])
        return Finished(left, out[1] == "completed", out[1] == "final", [json.loads(sig) for sig in out[2:]])

    def read_task_run(self, trid: str) -> dict[str, str]:
        """The raw task run record (empty if unknown)."""
        return self.redis.hgetall(keys.task_run(trid))  # type: ignore[return-value]

    def labels(self, trids: list[str]) -> dict[str, str]:
        """Human labels of task runs (their ids where unknown), in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for trid in trids:
            pipe.hget(keys.task_run(trid), "label")
        return {trid: label or trid for trid, label in zip(trids, pipe.execute(), strict=True)}

    def final_states(self, root: str, trids: list[str]) -> dict[str, StateType | None]:
        """Final state of each task run, None where it is not final yet."""
        if not trids:
            return {}
        values = self.redis.hmget(keys.finals(root), trids)
        return {t: StateType(v) if v else None for t, v in zip(trids, values, strict=True)}

    def results(self, trids: list[str]) -> dict[str, str | None]:
        """Serialized results of task runs (None where missing)."""
        if not trids:
            return {}
        values = self.redis.mget([keys.result(t) for t in trids])
        return dict(zip(trids, values, strict=True))

    def is_tolerant(self, root: str, trid: str) -> bool:
        """Whether a task run decides for itself after an upstream failure (trigger rules)."""
        return bool(self.redis.sismember(keys.tolerant(root), trid))

    def downstream_of(self, trid: str) -> set[str]:
        """Task runs registered as depending on ``trid``."""
        return self.redis.smembers(keys.downstream(trid))  # type: ignore[return-value]

    # -- delayed messages (retries and sensor pokes) -----------------------------------
    def schedule(self, message: str, due: float, pipe: Any = None) -> None:
        """Keep a message (a signature as JSON) in Redis until ``due``, instead of a broker ETA."""
        (pipe if pipe is not None else self.redis).zadd(keys.DELAYED, {message: due})

    def claim_due(self, limit: int = 100, lease: float = 30.0) -> tuple[float, list[str]]:
        """Due messages, claimed until the time returned; call :meth:`sent` once each is sent."""
        at = now()
        return at + lease, list(self._claim_due(keys=[keys.DELAYED], args=[repr(at), limit, repr(lease)]))

    def sent(self, message: str, claimed_until: float) -> None:
        """Forget a delayed message that has been sent, unless it was scheduled again meanwhile.

        The task it sent may already have run and scheduled the very same message again (a
        task waiting for a concurrency slot asks again with the same message): that new entry
        has another due time and must stay.
        """
        self._sent(keys=[keys.DELAYED], args=[message, repr(claimed_until)])

    def claim_expansion(self, root: str, trid: str, children: int) -> bool:
        """Add a map's children to the run tree's count, once; False on a redelivery."""
        return bool(self._expand(keys=[keys.expanded(trid), keys.remaining(root)], args=[children, self.ttl]))

    def register_waiting(
        self, root: str, trid: str, upstream: list[str], signature: str, tolerant: bool = False
    ) -> tuple[str, str | None, str | None]:
        """Register a task to be sent when its upstreams are done.

        Returns ("ok", count, None): count upstreams still running (0: send it now);
        or ("blocked", upstream id, its state) when an upstream already failed and
        the task is not ``tolerant`` (a trigger rule or tolerated upstreams decide later).
        """
        out = self._register(
            keys=[keys.finals(root), keys.join_pending(root), keys.join_signature(root), keys.tolerant(root)],
            args=[trid, signature, keys.downstream(""), "1" if tolerant else "0", *upstream],
        )
        if out[0] == "blocked":
            return "blocked", out[1], out[2]
        return "ok", out[1], None


@lru_cache(maxsize=8)
def _store_for(url: str) -> RunStore:
    return RunStore(url)


def get_store() -> RunStore:
    """The process's store for the configured Redis (built once: scripts hashed once)."""
    return _store_for(get_settings().redis_url)
