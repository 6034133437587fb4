"""Shared route dependencies: the database session, the run store, the messaging that sends to the fleet."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from sqlmodel import Session

from api.db import get_session
from orchestrator.runstate.store import RunStore, get_store
from orchestrator.transport.messaging import Messaging, client_messaging

SessionDep = Annotated[Session, Depends(get_session)]


def store_dep() -> RunStore:
    """The process's run store (Redis)."""
    return get_store()


def messaging_dep() -> Messaging:
    """The client's messaging (revokes, retries)."""
    return client_messaging()


StoreDep = Annotated[RunStore, Depends(store_dep)]
MessagingDep = Annotated[Messaging, Depends(messaging_dep)]
