"""The journal of a dynamic flow body: which call it made at each position, so a resumed body replays.

A dynamic body's calls into the orchestrator (a task submitted, a subflow called or started, the
order in which ``as_completed`` gave futures back) are numbered in the order the body makes them.
Each is recorded here before it takes effect, with what it was (its kind, task or flow name and
label) and the id of the run it made. A body started again after its worker died
(:mod:`orchestrator.supervision.crashes`) reads the journal once, and each call it makes again at a
recorded position gets the recorded run back instead of a new one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator.runstate import keys
from orchestrator.runstate.scripts import Scripts


@dataclass(frozen=True)
class JournalEntry:
    """One recorded call: ``kind`` is task, subflow (in-process), run (a run of its own) or order
    (the futures an ``as_completed``/``wait`` gave back, in order). A completed in-process subflow
    also records the run tree's label counts after it: its body is not replayed, and the labels of
    the calls after it must come out the same."""

    kind: str
    name: str
    label: str = ""
    id: str = ""
    ids: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)  # a completed subflow: the tree's label counts after it

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v})

    @classmethod
    def from_json(cls, text: str) -> JournalEntry:
        return cls(**json.loads(text))

    def describe(self) -> str:
        """How a non-determinism message names this call."""
        if self.kind == "order":
            return f"a wait on {self.name}"
        what = {"task": "task", "subflow": "subflow", "run": "flow run of"}.get(self.kind, self.kind)
        return f"{what} {self.name!r}" + (f" (label {self.label})" if self.label else "")


class Journal:
    """Dynamic bodies' journals (one hash per flow run, expiring with the run's other keys)."""

    def __init__(self, redis: Any, scripts: Scripts, ttl: int) -> None:
        self._redis = redis
        self._scripts = scripts
        self._ttl = ttl

    def read(self, flow_run_id: str) -> dict[int, JournalEntry]:
        """Every recorded call of a flow run's body, by position (empty on a first attempt)."""
        raw = self._redis.hgetall(keys.journal(flow_run_id))
        entries = {int(field): JournalEntry.from_json(text) for field, text in raw.items() if "/" not in field}
        given = sorted((tuple(map(int, field.split("/"))), trid) for field, trid in raw.items() if "/" in field)
        for (position, _index), trid in given:  # an order entry's futures, in the order they were given
            entries[position].ids.append(trid)
        return entries

    def record(self, flow_run_id: str, position: int, entry: JournalEntry, pipe: Any = None) -> None:
        """Record a call (in ``pipe`` when given, so it costs no round trip of its own)."""
        target = pipe if pipe is not None else self._redis.pipeline(transaction=False)
        target.hset(keys.journal(flow_run_id), str(position), entry.to_json())
        target.expire(keys.journal(flow_run_id), self._ttl)
        if pipe is None:
            target.execute()

    def record_given(self, flow_run_id: str, position: int, index: int, trid: str) -> None:
        """An order entry (``as_completed``, ``wait`` with a timeout) gave its ``index``-th future back."""
        self._redis.hset(keys.journal(flow_run_id), f"{position}/{index}", trid)

    def clear(self, flow_run_id: str) -> None:
        """Forget a body's calls: a flow retry runs the body from the start, with new runs."""
        self._redis.delete(keys.journal(flow_run_id))

    def claim_resend(self, root: str, trid: str) -> int:
        """The attempt to send a recorded, never-begun task run again with; 0: leave it
        (``lua/claim_resend.lua``)."""
        return int(
            self._scripts["claim_resend"](
                keys=[keys.task_run(trid), keys.finals(root), keys.join_pending(root)], args=[trid]
            )
        )
