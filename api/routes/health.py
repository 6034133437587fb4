"""Health: whether the database, Redis and the recorder are working, and the event backlog.

Probes need no key, so the answer to anyone is state words ("ok", "unavailable"), the backlog's
count and warnings in words: no error text (a database error may quote a statement and its
values) and no URL. A caller who may use the rest of the API also gets ``details``, the errors
with every URL masked.

The event backlog (events waiting in Redis for a recorder) is a warning, not a failure: the
answer stays 200, because a probe that restarted the API for it would only make it longer.
"""

from __future__ import annotations

import time
from typing import Literal

from fastapi import APIRouter, Request, Response, status

from api.db import database_ok
from api.routes.deps import StoreDep
from api.schemas import Health, HealthDetails
from api.security import may_use_the_api
from orchestrator.config.settings import get_settings
from orchestrator.errors import ConnectionProblem
from orchestrator.guards.redaction import mask_urls_in
from orchestrator.runstate.connection import RedisError
from orchestrator.runstate.event_stream import Backlog

router = APIRouter(tags=["health"])


@router.get("/health", response_model=Health, responses={503: {"model": Health}})
def health(request: Request, response: Response, store: StoreDep) -> Health:
    """200 when the database and Redis answer, 503 (with which one failed) otherwise."""
    db_ok, db_error = database_ok()
    backlog: Backlog | None = None
    try:
        store.ping()
        redis_error = ""
        backlog = store.events.backlog()
    except ConnectionProblem as exc:
        redis_error = str(exc)
    except RedisError as exc:  # Redis went away between the two calls
        redis_error = str(store.unreachable(exc))
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
        events_backlog=backlog.entries if backlog is not None else None,
        warnings=backlog_warnings(backlog, recorder_state),
        details=details,
    )


def backlog_warnings(backlog: Backlog | None, recorder: str) -> list[str]:
    """A warning when more events wait for the recorder than ORCHESTRATOR_EVENTS_BACKLOG_WARN allows."""
    limit = get_settings().events_backlog_warn
    if backlog is None or backlog.entries <= limit:
        return []
    age = time.time() - backlog.oldest if backlog.oldest is not None else 0.0
    return [
        f"{backlog.entries} events wait in Redis for the recorder (more than ORCHESTRATOR_EVENTS_BACKLOG_WARN="
        f"{limit}), the oldest appended {age:.0f} s ago; the recorder of this process is {recorder}. None is "
        "dropped: they are recorded once a recorder runs and keeps up (see /metrics orchestrator_events_backlog)."
    ]
