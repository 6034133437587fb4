"""Why a flow run failed, root cause first.

When a task raises, every task downstream of it ends UpstreamFailed, and those are often
the leaves that decide the flow run's state. Naming them first ("inc-0: UpstreamFailed")
sends a reader to the wrong task. The root cause is the task run that failed on its own
(Failed, TimedOut, Crashed, Cancelled: anything failed but UpstreamFailed) and ended
first; the flow run's message names it with its error, then how many it took down.

The same order serves the flow run's final message (from the run store, here) and the
API's ``/failures`` (from the database): :func:`cause_order` is the one rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from orchestrator.runstate.records import body_task_run_id, parse_float
from orchestrator.runstate.store import RunStore
from orchestrator.states import FAILED_STATES, StateType

OWN_FAILURES = frozenset(FAILED_STATES - {StateType.UPSTREAM_FAILED})  # the task itself did not succeed
BODY = body_task_run_id("")  # a dynamic flow's body stands in its tree as a pseudo task run: not a task
SHOWN = 3  # other failed task runs named in a flow run's message; the rest are counted


def failed_on_its_own(state: str | None) -> bool:
    """Whether a task run in ``state`` failed by itself (not because an upstream did)."""
    try:
        return state is not None and StateType(state) in OWN_FAILURES
    except ValueError:
        return False


def cause_order(state: str | None, ended: float | None, label: str) -> tuple[bool, float, str]:
    """Sort key that puts a run tree's root cause first: own failures before UpstreamFailed,
    then the earliest to end (a task that failed first is what the rest followed), then by label."""
    return (not failed_on_its_own(state), ended if ended is not None else float("inf"), label)


@dataclass(frozen=True)
class Failure:
    """One failed task run, as the flow run's message names it."""

    label: str
    state: str
    message: str
    ended: float | None
    flow_run_id: str

    def words(self) -> str:
        """``explode-0 ended Failed: ValueError: boom``."""
        return f"{self.label} ended {self.state}" + (f": {self.message}" if self.message else "")


def failure_message(failures: Sequence[Failure], upstream_failed: int) -> str:
    """The flow run's message: the root cause (``failures[0]``), the other own failures, then how
    many task runs did not run because of them."""
    parts = [failures[0].words()]
    others = failures[1:]
    if others:
        named = ", ".join(f.label for f in others[:SHOWN]) + (
            f" and {len(others) - SHOWN} more" if len(others) > SHOWN else ""
        )
        parts.append(f"{len(others)} more task run{'s' if len(others) > 1 else ''} failed ({named})")
    if upstream_failed:
        plural = "s" if upstream_failed > 1 else ""
        parts.append(f"{upstream_failed} downstream task run{plural} not run (UpstreamFailed)")
    return "; ".join(parts)


def tree_failures(store: RunStore, root: str, run_id: str) -> tuple[list[Failure], int]:
    """The task runs of ``run_id`` that failed on their own, root cause first, and how many ended
    UpstreamFailed. For a subflow of a tree: its own task runs when one of them failed on its own,
    else the whole tree's (the subflow's tasks did not run because something before it failed)."""
    finals = store.task_runs.all_final(root)
    own = [trid for trid, state in finals.items() if failed_on_its_own(state) and not trid.startswith(BODY)]
    downstream = [trid for trid, state in finals.items() if state == StateType.UPSTREAM_FAILED.value]
    records = dict(zip(own, store.task_runs.read_many(own), strict=True))
    failures = [
        Failure(
            label=rec.get("label") or trid,
            state=finals[trid],
            message=rec.get("message", ""),
            ended=parse_float(rec.get("ended")),
            flow_run_id=rec.get("flow_run_id", ""),
        )
        for trid, rec in records.items()
    ]
    if run_id != root:
        mine = [f for f in failures if f.flow_run_id == run_id]
        if mine:
            failures = mine
            flows = store.task_runs.fields_of(downstream, "flow_run_id")
            downstream = [trid for trid, (flow,) in zip(downstream, flows, strict=True) if flow == run_id]
    failures.sort(key=lambda f: cause_order(f.state, f.ended, f.label))
    return failures, len(downstream)
