"""Per-deployment flow-run limits, applied by the dispatcher.

A deployment with ``concurrency_limit`` N has at most N runs under way: sent and not
yet final. Its due runs beyond that are held back in the database as
AwaitingConcurrencySlot (recorded once, naming the runs that hold the slots), and the
dispatcher sends them oldest first as runs end. The dispatcher works under a Redis
lock, so two API processes never count at once and overrun a limit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import func, update
from sqlmodel import Session, col, select

from api.models import Deployment, FlowRun
from api.submit import api_event
from orchestrator.states import FINAL_STATES, StateType

FINAL = [s.value for s in FINAL_STATES]
CAUSE = "services: deployment concurrency limit"


class DeploymentLimits:
    """The limited deployments and their runs under way, counted once per dispatch pass."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.limits: dict[str, tuple[str, int]] = {
            d.id: (d.name, d.concurrency_limit)
            for d in session.exec(select(Deployment).where(col(Deployment.concurrency_limit).is_not(None))).all()
            if d.concurrency_limit is not None
        }
        self.under_way: dict[str, int] = dict.fromkeys(self.limits, 0)
        if self.limits:
            counted = session.exec(
                select(FlowRun.deployment_id, func.count())
                .where(col(FlowRun.deployment_id).in_(list(self.limits)))
                .where(col(FlowRun.dispatched).is_(True), col(FlowRun.state).not_in(FINAL))
                .group_by(col(FlowRun.deployment_id))
            ).all()
            self.under_way |= {dep: int(n) for dep, n in counted if dep is not None}

    def full(self) -> list[str]:
        """Deployments whose every slot is taken right now."""
        return [dep for dep, (_, limit) in self.limits.items() if self.under_way[dep] >= limit]

    def has_slot(self, deployment_id: str | None) -> bool:
        if deployment_id is None or deployment_id not in self.limits:
            return True
        return self.under_way[deployment_id] < self.limits[deployment_id][1]

    def took_slot(self, deployment_id: str | None) -> None:
        if deployment_id in self.under_way:
            self.under_way[deployment_id] += 1

    def hold(self, runs: Sequence[tuple[str, str | None]]) -> int:
        """Make these due runs AwaitingConcurrencySlot, each once, saying who holds the slots."""
        held = 0
        why_by_deployment: dict[str, str] = {}
        now = time.time()
        for run_id, deployment_id in runs:
            if deployment_id is None or deployment_id not in self.limits:
                continue
            if deployment_id not in why_by_deployment:
                why_by_deployment[deployment_id] = self._why(deployment_id)
            why = why_by_deployment[deployment_id]
            done = self.session.execute(
                update(FlowRun)
                .where(col(FlowRun.id) == run_id, col(FlowRun.dispatched).is_(False))
                .where(col(FlowRun.state).in_([StateType.SCHEDULED.value, StateType.LATE.value]))
                .values(state=StateType.AWAITING_CONCURRENCY_SLOT.value, state_message=why, updated=now)
            )
            if done.rowcount == 1:  # type: ignore[attr-defined]
                self.session.add(api_event(run_id, StateType.AWAITING_CONCURRENCY_SLOT, why, now, cause=CAUSE))
                held += 1
        self.session.commit()
        return held

    def _why(self, deployment_id: str) -> str:
        name, limit = self.limits[deployment_id]
        holders = self.session.exec(
            select(FlowRun.id)
            .where(FlowRun.deployment_id == deployment_id)
            .where(col(FlowRun.dispatched).is_(True), col(FlowRun.state).not_in(FINAL))
            .order_by(col(FlowRun.scheduled_start))
            .limit(6)
        ).all()
        shown = ", ".join(holders[:5]) + (" and more" if len(holders) > 5 else "")
        return (
            f"deployment {name!r} allows {limit} flow runs under way at once and all are taken "
            f"(by {shown or 'runs being sent'}); it is sent when one ends."
        )

    def sent(self, row: FlowRun) -> None:
        """A held-back run was sent: it is Pending, like any sent run (unless a worker already moved it on)."""
        if row.state != StateType.AWAITING_CONCURRENCY_SLOT.value:
            return
        now = time.time()
        message = "sent: a slot of its deployment's concurrency limit is free"
        done = self.session.execute(
            update(FlowRun)
            .where(col(FlowRun.id) == row.id, col(FlowRun.state) == StateType.AWAITING_CONCURRENCY_SLOT.value)
            .values(state=StateType.PENDING.value, state_message=message, updated=now)
        )
        if done.rowcount == 1:  # type: ignore[attr-defined]
            self.session.add(api_event(row.id, StateType.PENDING, message, now, cause=CAUSE))
        self.session.commit()
