""" "Why is my run not running?": the facts about a run and its fleet, said in plain words.

Used by ``GET /api/flow-runs/{id}/diagnosis``, ``orchestrator flow-run why`` and the
late-runs service (which records the reason when it marks a run Late).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from api.models import FlowRun
from orchestrator.runstate import slots as concurrency
from orchestrator.runstate.store import RunStore
from orchestrator.states import StateType
from orchestrator.transport.broker import queue_lengths


@dataclass
class Fleet:
    """What the fleet looks like right now (read once per diagnosis pass)."""

    workers: list[dict[str, Any]]
    queue_lengths: dict[str, int] = field(default_factory=dict)

    @classmethod
    def read(cls, store: RunStore, queues: set[str]) -> Fleet:
        names = sorted(queues)
        return cls(store.fleet.live_workers(), queue_lengths(store, names))

    def consumers(self, queue: str) -> list[dict[str, Any]]:
        return [w for w in self.workers if queue in w.get("queues", [])]


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def waiting_reasons(row: FlowRun, fleet: Fleet, now: float, paused_deployment: str | None = None) -> list[str]:
    """Why a run that has not started is not running, most decisive reason first."""
    reasons: list[str] = []
    if paused_deployment:
        reasons.append(
            f"its deployment {paused_deployment!r} is paused; resume it (orchestrator deployment resume "
            f"{paused_deployment}) and its due runs are sent."
        )
        return reasons
    if row.state == StateType.SCHEDULED.value and row.scheduled_start and row.scheduled_start > now:
        reasons.append(
            f"it is scheduled for {_when(row.scheduled_start)} (in {row.scheduled_start - now:.0f}s); "
            "it is sent to its queue then."
        )
        return reasons
    queue = row.queue or "default"
    if not fleet.workers:
        reasons.append(
            f"no worker is live; start one: orchestrator worker start --flows <module of {row.flow_name!r}> -Q {queue}"
        )
        return reasons
    consumers = fleet.consumers(queue)
    if not consumers:
        consumed = sorted({q for w in fleet.workers for q in w.get("queues", [])})
        reasons.append(
            f"no live worker consumes queue {queue!r}; the live workers consume: {', '.join(consumed)}. "
            f"Start a worker with -Q {queue}, or send the run to one of those queues."
        )
        return reasons
    knowing = [w for w in consumers if row.flow_name in w.get("flows", [])]
    if not knowing:
        hosts = ", ".join(w.get("hostname", "?") for w in consumers)
        reasons.append(
            f"no live worker of queue {queue!r} has registered flow {row.flow_name!r} (workers there: {hosts}); "
            "restart them with --flows <the module defining it>."
        )
    waiting = fleet.queue_lengths.get(queue, 0)
    if waiting:
        hosts = ", ".join(w.get("hostname", "?") for w in consumers)
        reasons.append(f"{waiting} messages wait in queue {queue!r}; its workers ({hosts}) are busy with earlier work.")
    if not reasons:
        reasons.append(f"a worker of queue {queue!r} should pick it up shortly (the queue is empty).")
    return reasons


def slot_waits(store: RunStore, task_run_ids: list[str]) -> list[str]:
    """For task runs waiting for a concurrency slot: which limit, and who holds its slots now."""
    if not task_run_ids:
        return []
    waits: dict[str, list[str]] = {}
    for trid, (tag, label) in zip(
        task_run_ids, store.task_runs.fields_of(task_run_ids, "slot_tag", "label"), strict=True
    ):
        waits.setdefault(tag or "", []).append(label or trid)
    limits = concurrency.read_limits(store)
    out = []
    for tag, labels in sorted(waits.items()):
        holders = concurrency.describe(store, concurrency.live_holders(store, tag)) if tag else []
        held = "; ".join(
            f"{h['label'] or h['task_run_id']} of flow run {h['flow_run_id']} on {h['worker']}" for h in holders
        )
        limit = f"limit {limits[tag]}" if tag in limits else "since deleted"
        out.append(
            f"{len(labels)} task runs ({', '.join(labels[:5])}) wait for a slot of concurrency limit {tag!r} "
            f"({limit}), held by: {held or 'nobody right now'}."
        )
    return out


def diagnose(
    row: FlowRun,
    fleet: Fleet,
    task_states: dict[str, int],
    now: float | None = None,
    paused_deployment: str | None = None,
    waiting_for_slots: list[str] | None = None,
    not_final: int | None = None,
    body_status: str | None = None,
) -> dict[str, Any]:
    """The diagnosis of one run: a summary sentence, the reasons, and the facts behind them."""
    now = now or time.time()
    state = StateType(row.state)
    reasons: list[str]
    if state.is_final:
        reasons = [f"it ended {state.value}" + (f": {row.state_message}" if row.state_message else ".")]
    elif state is StateType.PENDING and body_status:  # a worker took its dynamic body: it waits for a thread
        reasons = [body_status + "."]
    elif state in (StateType.SCHEDULED, StateType.PENDING, StateType.LATE):
        reasons = waiting_reasons(row, fleet, now, paused_deployment)
    elif state is StateType.AWAITING_RETRY:
        reasons = [f"it failed an attempt and waits to retry: {row.state_message}"]
    elif state is StateType.AWAITING_CONCURRENCY_SLOT:
        reasons = [f"it waits for a slot: {row.state_message or 'its deployment concurrency limit is full.'}"]
    else:
        done = sum(n for s, n in task_states.items() if StateType(s).is_final)
        total = sum(task_states.values())
        detail = ", ".join(f"{n} {s}" for s, n in sorted(task_states.items()))
        reasons = [f"it is {state.value}: {done} of {total} task runs are final ({detail or 'none reported yet'})."]
        if body_status:  # a dynamic body resumed after its worker died
            reasons.append(body_status + ".")
        unreported = (not_final or 0) - (total - done)
        if unreported > 0:
            reasons.append(
                f"{unreported} more planned task {'run has' if unreported == 1 else 'runs have'} not reported yet: "
                "they wait for their upstreams, in "
                "their queue, or on a worker that stopped (their messages come back after the visibility timeout)."
            )
        reasons += waiting_for_slots or []
    queue = row.queue or "default"
    return {
        "flow_run_id": row.id,
        "flow_run_name": row.name,
        "state": row.state,
        "summary": reasons[0],
        "reasons": reasons,
        "facts": {
            "queue": queue,
            "queue_length": fleet.queue_lengths.get(queue, 0),
            "live_workers": [
                {
                    "hostname": w.get("hostname"),
                    "queues": w.get("queues", []),
                    "has_flow": row.flow_name in w.get("flows", []),
                }
                for w in fleet.workers
            ],
            "scheduled_start": _when(row.scheduled_start) if row.scheduled_start else None,
            "task_runs_by_state": task_states,
        },
    }
