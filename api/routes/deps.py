"""Shared route dependencies: the database session, the run store, a Celery client app."""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends
from sqlmodel import Session

from orchestrator.celery_app import client_app
from orchestrator.store import RunStore, get_store

from ..db import get_session

SessionDep = Annotated[Session, Depends(get_session)]


def store_dep() -> RunStore:
    """The process's run store (Redis)."""
    return get_store()


def app_dep() -> Celery:
    """A Celery app that only sends (revokes, retries)."""
    return client_app()


StoreDep = Annotated[RunStore, Depends(store_dep)]
CeleryDep = Annotated[Celery, Depends(app_dep)]
