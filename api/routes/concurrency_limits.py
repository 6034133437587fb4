"""Tag concurrency limits: create or change, list with their holders, delete."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response, status
from sqlmodel import Session, col, select

from api.db import get_engine
from api.models import ConcurrencyLimit
from api.routes.deps import SessionDep, StoreDep
from api.schemas import ConcurrencyLimitCreate, ConcurrencyLimitPublic, SlotHolder, when
from api.services.loop import publish_limits
from orchestrator.runstate import slots as concurrency
from orchestrator.runstate.store import RunStore

router = APIRouter(prefix="/concurrency-limits", tags=["concurrency limits"])

Tag = Annotated[str, Path(min_length=1, max_length=200, description="The tag the limit applies to.")]


def public(store: RunStore, row: ConcurrencyLimit) -> ConcurrencyLimitPublic:
    holders = concurrency.describe(store, concurrency.live_holders(store, row.tag))
    return ConcurrencyLimitPublic(
        tag=row.tag,
        limit=row.slots,
        active=len(holders),
        holders=[SlotHolder(**h) for h in holders],
        created=when(row.created),
    )


def get_limit(session: Session, tag: str) -> ConcurrencyLimit:
    row = session.get(ConcurrencyLimit, tag)
    if row is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"no concurrency limit for tag {tag!r}; GET /api/concurrency-limits lists them."
        )
    return row


@router.post("", response_model=ConcurrencyLimitPublic)
def set_limit(body: ConcurrencyLimitCreate, session: SessionDep, store: StoreDep) -> ConcurrencyLimitPublic:
    """At most ``limit`` task runs tagged ``tag`` run at once, on all workers together.

    Task runs already holding slots keep them; a lower limit applies as they end.
    """
    now = time.time()
    row = session.get(ConcurrencyLimit, body.tag)
    if row is None:
        row = ConcurrencyLimit(tag=body.tag, slots=body.limit, created=now, updated=now)
    else:
        row.slots, row.updated = body.limit, now
    session.add(row)
    session.commit()
    session.refresh(row)
    publish_limits(get_engine(), store)  # where workers take slots
    return public(store, row)


@router.get("", response_model=list[ConcurrencyLimitPublic])
def list_limits(session: SessionDep, store: StoreDep) -> list[ConcurrencyLimitPublic]:
    """Every limit with the task runs holding its slots."""
    rows = session.exec(select(ConcurrencyLimit).order_by(col(ConcurrencyLimit.tag))).all()
    return [public(store, row) for row in rows]


@router.get("/{tag}", response_model=ConcurrencyLimitPublic)
def read_limit(tag: Tag, session: SessionDep, store: StoreDep) -> ConcurrencyLimitPublic:
    return public(store, get_limit(session, tag))


@router.delete("/{tag}", status_code=status.HTTP_204_NO_CONTENT)
def delete_limit(tag: Tag, session: SessionDep, store: StoreDep) -> Response:
    """Remove the limit: tasks with the tag run without waiting from now on."""
    session.delete(get_limit(session, tag))
    session.commit()
    publish_limits(get_engine(), store)  # where workers take slots
    concurrency.drop_tag(store, tag)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
