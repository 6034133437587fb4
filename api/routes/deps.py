"""Shared route dependencies: the database session, the run store, the messaging that sends to the fleet,
and a flow run's or a task run's id from the path (whole or any unique prefix)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Path, status
from sqlmodel import Session

from api.db import get_session
from api.id_prefix import MIN_PREFIX, SHOWN, Keyed, resolve
from api.models import FlowRun, TaskRun
from orchestrator.runstate.store import RunStore, get_store
from orchestrator.transport.messaging import Messaging, client_messaging

SessionDep = Annotated[Session, Depends(get_session)]


async def store_dep() -> RunStore:
    """The process's run store (Redis).

    ``async`` although it never waits (the store is built once and connects lazily): FastAPI runs
    a plain ``def`` dependency in its thread pool, a thread hand-off per request for a cached lookup.
    """
    return get_store()


def messaging_dep() -> Messaging:
    """The client's messaging (revokes, retries)."""
    return client_messaging()


StoreDep = Annotated[RunStore, Depends(store_dep)]
MessagingDep = Annotated[Messaging, Depends(messaging_dep)]


def no_run(run_id: str) -> HTTPException:
    """The 404 for a run id the database does not hold, saying where to look."""
    short = f" (a prefix names a run from {MIN_PREFIX} characters on)" if len(run_id) < MIN_PREFIX else ""
    return HTTPException(
        status_code=status.HTTP_404_NOT_FOUND,
        detail=f"no flow run {run_id!r} is recorded{short}; GET /api/flow-runs lists them (a run sent moments ago "
        "appears once the recorder has read its first event).",
    )


def flow_run_id(
    session: SessionDep,
    run_id: Annotated[
        str,
        Path(
            min_length=1,
            max_length=64,
            description=f"The flow run's id, or any unique prefix of it (at least {MIN_PREFIX} characters).",
        ),
    ],
) -> str:
    """The whole id of the flow run the path names: 404 if none, 409 naming a few if several start so.

    Every route that takes a flow run's id takes it through this, so ``inspect d9d8e642``
    works wherever the whole id does.
    """
    found = whole_run_id(session, run_id)
    if found is None:
        raise no_run(run_id)
    return found


def whole_run_id(session: Session, given: str) -> str | None:
    """The flow run id ``given`` is or starts (None if none); a 409 naming a few if several start so."""
    return whole_id(session, FlowRun, given)


KINDS: dict[Keyed, str] = {FlowRun: "flow run", TaskRun: "task run"}  # what an error calls a table's ids


def whole_id(session: Session, table: Keyed, given: str) -> str | None:
    """The id of ``table`` that ``given`` is or starts (None if none); a 409 naming a few if several start so:
    the one lookup behind flow-run and task-run ids alike."""
    found = resolve(session, table, given)
    if len(found) > 1:
        shown = ", ".join(found[:SHOWN]) + (", ..." if len(found) > SHOWN else "")
        raise HTTPException(
            status_code=status.HTTP_409_CONFLICT,
            detail=f"{KINDS[table]} id prefix {given!r} is ambiguous: {shown} start with it; give more of the id.",
        )
    return found[0] if found else None


def no_task_run(task_run_id: str) -> HTTPException:
    """The 404 for a task run id the database does not hold, saying where to look."""
    short = f" (a prefix names a task run from {MIN_PREFIX} characters on)" if len(task_run_id) < MIN_PREFIX else ""
    return HTTPException(
        status_code=status.HTTP_404_NOT_FOUND,
        detail=f"no task run {task_run_id!r} is recorded{short}; GET /api/flow-runs/{{id}}/task-runs lists a run's "
        "task runs (one appears once the recorder has read its first event).",
    )


def task_run_id(
    session: SessionDep,
    task_run_id: Annotated[
        str,
        Path(
            min_length=1,
            max_length=100,
            description=f"The task run's id, or any unique prefix of it (at least {MIN_PREFIX} characters).",
        ),
    ],
) -> str:
    """The whole id of the task run the path names: 404 if none, 409 naming a few if several start so."""
    found = whole_id(session, TaskRun, task_run_id)
    if found is None:
        raise no_task_run(task_run_id)
    return found


TaskRunId = Annotated[str, Depends(task_run_id)]
FlowRunId = Annotated[str, Depends(flow_run_id)]
