"""Health: whether the database, Redis and the recorder are working.

Probes need no key, so the answer to anyone is state words only ("ok", "unavailable"): no
error text (a database error may quote a statement and its values) and no URL. A caller who
may use the rest of the API also gets ``details``, the errors with every URL masked.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response, status

from api.db import database_ok
from api.routes.deps import StoreDep
from api.schemas import Health, HealthDetails
from api.security import may_use_the_api
from orchestrator.errors import ConnectionProblem
from orchestrator.guards.redaction import mask_urls_in

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(request: Request, response: Response, store: StoreDep) -> Health:
    """200 when the database and Redis answer, 503 (with which one failed) otherwise."""
    db_ok, db_error = database_ok()
    try:
        store.ping()
        redis_error = ""
    except ConnectionProblem as exc:
        redis_error = str(exc)
    recorder = getattr(request.app.state, "recorder", None)
    recorder_state: Literal["ok", "failing", "not running"]
    if recorder is None:
        recorder_state, recorder_detail = "not running", "not running in this process"
    elif recorder.last_error:
        recorder_state, recorder_detail = "failing", f"error: {recorder.last_error}"
    else:
        recorder_state, recorder_detail = "ok", f"ok ({recorder.recorded} events)"
    healthy = db_ok and not redis_error
    if not healthy:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    details = None
    if may_use_the_api(request.headers.get("authorization")):
        details = HealthDetails(
            database=mask_urls_in(db_error or "ok"),
            redis=mask_urls_in(redis_error or "ok"),
            recorder=mask_urls_in(recorder_detail),
        )
    return Health(
        status="ok" if healthy else "unavailable",
        database="ok" if db_ok else "unavailable",
        redis="unavailable" if redis_error else "ok",
        recorder=recorder_state,
        details=details,
    )
