"""Health: whether the database, Redis and the recorder are working."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from orchestrator.errors import ConnectionProblem

from ..db import database_ok
from ..schemas import Health
from .deps import StoreDep

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(request: Request, response: Response, store: StoreDep) -> Health:
    """200 when the database and Redis answer, 503 (with which one failed) otherwise."""
    db_ok, db_error = database_ok()
    try:
        store.ping()
        redis_state = "ok"
    except ConnectionProblem as exc:
        redis_state = str(exc)
    recorder = getattr(request.app.state, "recorder", None)
    recorder_state = "not running in this process"
    if recorder is not None:
        recorder_state = f"error: {recorder.last_error}" if recorder.last_error else f"ok ({recorder.recorded} events)"
    healthy = db_ok and redis_state == "ok"
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Health(
        status="ok" if healthy else "unavailable",
        database="ok" if db_ok else db_error,
        redis=redis_state,
        recorder=recorder_state,
    )
