"""Shared route dependencies: the database session, the run store, a Celery client app."""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends
from sqlmodel import Session

from api.db import get_session
from orchestrator.runstate.store import RunStore, get_store
from orchestrator.transport.celery_app import client_app

SessionDep = Annotated[Session, Depends(get_session)]


def store_dep() -> RunStore:
    """The process's run store (Redis)."""
    return get_store()


def app_dep() -> Celery:
    """A Celery app that only sends (revokes, retries)."""
    return client_app()


StoreDep = Annotated[RunStore, Depends(store_dep)]
CeleryDep = Annotated[Celery, Depends(app_dep)]
